"""The early ``initialize`` answer (given before the SDK loads) is the SDK's own answer, and the session
the SDK then serves is the one that request set up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp.server.stdio import stdio_server
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS

from betty_mcp.core.config import load_settings
from betty_mcp.mcp.handshake import early_answer
from betty_mcp.mcp.stdio import Writer
from betty_mcp.mcp.transports import build_server
from betty_mcp.services import Services
from tests.conftest import server_args

VERSIONS = [*KNOWN_PROTOCOL_VERSIONS, "2099-01-01", "1", ""]


def initialize(version: str, request_id: str | int = 1, **params: object) -> bytes:
    body = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
    body.update(params)
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": body}).encode()


class OneLine:
    """stdin holding one line, then waiting (as a host does between messages)."""

    def __init__(self, line: bytes) -> None:
        self.lines = [line.decode() + "\n"]

    def __aiter__(self) -> OneLine:
        return self

    async def __anext__(self) -> str:
        if self.lines:
            return self.lines.pop()
        await anyio.sleep_forever()
        raise StopAsyncIteration


class Collect:
    """stdout that keeps what is written, and says when a line arrived."""

    def __init__(self) -> None:
        self.text = ""
        self.line = anyio.Event()

    async def write(self, text: str) -> None:
        self.text += text

    async def flush(self) -> None:
        if "\n" in self.text:
            self.line.set()


async def sdk_answer(workspace: Path, line: bytes) -> dict:
    """The SDK's own answer (wire form) from BettyServer, served in-process without the early path."""
    server = build_server(Services(load_settings(workspace=workspace)))
    stdout = Collect()
    async with anyio.create_task_group() as tg:

        async def serve() -> None:
            async with stdio_server(OneLine(line), stdout) as (read, write):  # type: ignore[arg-type]
                await server.run(read, write, server.create_initialization_options())

        tg.start_soon(serve)
        with anyio.fail_after(30):
            await stdout.line.wait()
        tg.cancel_scope.cancel()
    return json.loads(stdout.text.splitlines()[0])["result"]


@pytest.mark.anyio
@pytest.mark.parametrize("version", VERSIONS)
async def test_the_early_answer_is_the_sdks_answer(workspace: Path, version: str) -> None:
    line = initialize(version, request_id=7)
    answered = early_answer(line)
    assert answered is not None
    request_id, response = answered
    message = json.loads(response)
    assert request_id == 7 and message["id"] == 7 and response.endswith(b"\n")
    assert message["result"] == await sdk_answer(workspace, line)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[]",
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}',
        b'{"jsonrpc": "2.0", "method": "initialize", "params": {}}',  # a notification
        b'{"jsonrpc": "2.0", "id": true, "method": "initialize", "params": {}}',
        b'{"jsonrpc": "1.0", "id": 1, "method": "initialize", "params": {}}',
        initialize("2025-11-25", clientInfo={"name": "no version"}),
        initialize("2025-11-25", capabilities="none"),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}).encode(),
    ],
)
def test_anything_but_a_valid_initialize_is_left_to_the_sdk(line: bytes) -> None:
    assert early_answer(line) is None


@pytest.mark.anyio
async def test_the_writer_drops_only_the_sdks_answer_to_the_early_request(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with out.open("wb") as f:
        writer = Writer(f.fileno(), answered="a")
        notice = {"jsonrpc": "2.0", "method": "notifications/message", "id": "a"}
        await writer.write(json.dumps(notice) + "\n")
        await writer.write(json.dumps({"jsonrpc": "2.0", "id": "a", "result": {}}) + "\n")
        await writer.write(json.dumps({"jsonrpc": "2.0", "id": "a", "result": {"again": 1}}) + "\n")
        await writer.flush()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [m.get("result") for m in lines] == [None, {"again": 1}]


def converse(workspace: Path, stdin: bytes | Path) -> list[dict]:
    """Run the server on ``stdin`` (bytes through a pipe, or a regular file: no early answer then)."""
    command = [sys.executable, *server_args(workspace)]
    if isinstance(stdin, Path):
        with stdin.open("rb") as f:
            done = subprocess.run(command, stdin=f, capture_output=True, cwd=workspace, timeout=60)
    else:
        done = subprocess.run(command, input=stdin, capture_output=True, cwd=workspace, timeout=60)
    return [json.loads(x) for x in done.stdout.splitlines()]


def test_a_piped_session_answers_once_and_serves_the_version_it_agreed(workspace: Path) -> None:
    conversation = b"\n".join(
        [
            initialize("2025-06-18", request_id="init"),
            b'{"jsonrpc": "2.0", "method": "notifications/initialized"}',
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}',
        ]
    )
    piped = converse(workspace, conversation + b"\n")
    as_file = workspace / "conversation.jsonl"
    as_file.write_bytes(conversation.splitlines()[0] + b"\n")  # at end of file the SDK stops at once
    unpiped = converse(workspace, as_file)
    assert [m["id"] for m in piped] == ["init", 2]  # one answer to initialize, not two
    assert piped[0] == unpiped[0]  # early (pipe) and SDK (file) answers are the same
    assert piped[0]["result"]["protocolVersion"] == "2025-06-18"
    assert "skills_list" in {t["name"] for t in piped[1]["result"]["tools"]}


def test_an_invalid_initialize_gets_the_sdks_error_through_a_pipe(workspace: Path) -> None:
    replies = converse(workspace, initialize("2025-11-25", request_id=3, clientInfo={"name": "x"}) + b"\n")
    assert replies and replies[0]["id"] == 3 and "error" in replies[0] and "result" not in replies[0]
