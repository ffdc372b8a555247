"""Limits, end to end: a handler printing past ``limits.max_output_bytes`` is killed and reported, and
the stdio transport handles very long message lines in bounded time (and drops, without dying, a
line over its cap).

Measured on the 2-core dev machine: a 5 MiB result against a 1 MiB cap is refused in ~0.3 s (cold
server, first call); a 20 MB stdio line is answered in ~0.2 s, a 40 MB one in ~0.3 s; a 65 MiB line
(over the 64 MiB cap) is dropped in ~0.5 s and the next request is answered.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from betty_mcp.mcp import stdio as stdio_module
from tests.conftest import server_args, stdio_client

MAX_LINE_BYTES: int = getattr(stdio_module, "MAX_LINE_BYTES", 64 * 1024 * 1024)


# -- output cap --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("fork_server", [False, True], ids=["fresh", "zygote"])
async def test_a_handler_printing_past_the_output_cap_is_killed_and_reported(
    workspace: Path, fork_server: bool
) -> None:
    (workspace / "betty.yaml").write_text(
        f"limits:\n  max_output_bytes: {1024 * 1024}\n  fork_server: {str(fork_server).lower()}\n"
    )
    async with stdio_client(workspace) as client:
        if fork_server:  # the first call starts the zygote; give it time to be ready for the next ones
            await client.call_tool("test_echo", {"message": "warm"})
            await anyio.sleep(3)
        started = time.monotonic()
        result = await client.call_tool("test_big", {"megabytes": 5})
        elapsed = time.monotonic() - started
        after = await client.call_tool("test_echo", {"message": "still serving"})
    content = result.structured_content
    assert result.is_error, result.content[0].text[:300]
    error = content["errors"][0]
    assert error["code"] == "output_too_large", error
    assert f"more than {1024 * 1024} bytes" in error["message"] and "killed" in error["message"]
    assert len(result.content[0].text) < 40_000  # the 5 MiB never reach the client
    assert elapsed < 10, f"took {elapsed:.1f}s to refuse 5 MiB of output"
    assert not after.is_error


# -- stdio message size ------------------------------------------------------------------------


class RawStdio:
    """The server over raw pipes: write whole lines, read response lines (stdout drained by a thread)."""

    def __init__(self, workspace: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *server_args(workspace)],
            cwd=workspace,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def answer(self, request_id: Any, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [m for m in self.lines if m.get("id") == request_id and "method" not in m]
            if found:
                return found[0]
            select.select([], [], [], 0.01)
        return None

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def raw_server(workspace: Path) -> Iterator[RawStdio]:
    server = RawStdio(workspace)
    try:
        server.send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "limits", "version": "1"},
                    },
                }
            ).encode()
        )
        assert server.answer(0, 30) is not None
        server.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        yield server
    finally:
        server.close()


def ping_line(request_id: int, pad_bytes: int) -> bytes:
    head = b'{"jsonrpc": "2.0", "id": %d, "method": "ping", "params": {"pad": "' % request_id
    return head + b"x" * (pad_bytes - len(head) - 3) + b'"}}'


def timed_send(server: RawStdio, line: bytes) -> float:
    """Send ``line`` from a thread (the pipe blocks while the server reads); seconds until it is written."""
    started = time.monotonic()
    writer = threading.Thread(target=server.send, args=(line,))
    writer.start()
    writer.join(timeout=120)
    assert not writer.is_alive(), "the server stopped reading its stdin"
    return time.monotonic() - started


@pytest.mark.parametrize("megabytes", [20, 40])
def test_a_long_stdio_line_is_answered_in_bounded_time(raw_server: RawStdio, megabytes: int) -> None:
    """The quadratic reader (before the line cap) took 0.65 s for 20 MB, 7.7 s for 40 MB, 30 s for 80."""
    line = ping_line(1, megabytes * 1000 * 1000)
    started = time.monotonic()
    timed_send(raw_server, line)
    answer = raw_server.answer(1, timeout=60)
    elapsed = time.monotonic() - started
    assert answer is not None and answer.get("result") == {}, answer
    assert elapsed < 3, f"a {megabytes} MB line took {elapsed:.2f}s (reading must stay linear in its length)"


def test_twenty_1_mb_lines_cost_about_what_one_20_mb_line_costs(raw_server: RawStdio) -> None:
    """Linearity, seen from outside: many medium lines back to back are read at the same rate."""
    started = time.monotonic()
    for i in range(20):
        timed_send(raw_server, ping_line(100 + i, 1000 * 1000))
    assert raw_server.answer(119, timeout=30) is not None
    elapsed = time.monotonic() - started
    assert all(raw_server.answer(100 + i, timeout=1) for i in range(20))
    assert elapsed < 5, f"20 lines of 1 MB took {elapsed:.2f}s"


def test_a_line_over_the_cap_is_dropped_and_the_server_goes_on(raw_server: RawStdio) -> None:
    started = time.monotonic()
    timed_send(raw_server, ping_line(2, MAX_LINE_BYTES + 1024 * 1024))
    raw_server.send(b'{"jsonrpc": "2.0", "id": 3, "method": "ping"}')
    answer = raw_server.answer(3, timeout=30)
    elapsed = time.monotonic() - started
    assert answer is not None and answer.get("result") == {}, "the server stopped answering"
    dropped = raw_server.answer(2, timeout=0)
    assert dropped is None or "error" in dropped, "an oversized line must not be served"
    assert raw_server.proc.poll() is None
    assert elapsed < 10, f"dropping a {MAX_LINE_BYTES // 2**20 + 1} MiB line took {elapsed:.2f}s"


# -- found by bench/soak.py --------------------------------------------------------------------


def _client_connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` whose remote end is ``port`` (on loopback)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in list(f)[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                    count += 1
    return count


def test_repeated_llm_queries_reuse_their_connections(workspace: Path) -> None:
    from tests.fakes.scripted_llm import ScriptedLLM

    with ScriptedLLM() as llm:
        (workspace / "betty.yaml").write_text(
            "llm_router:\n  default_model: scripted/main\n  embedded_fallback: false\n  providers:\n"
            f"    scripted:\n      type: openai_compatible\n      endpoint: {llm.base_url}\n"
            "      models: [main]\n"
        )
        server = RawStdio(workspace)
        try:
            server.send(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 0,
                        "method": "initialize",
                        "params": {
                            "protocolVersion": "2025-11-25",
                            "capabilities": {},
                            "clientInfo": {"name": "limits", "version": "1"},
                        },
                    }
                ).encode()
            )
            assert server.answer(0, 30) is not None
            server.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
            for i in range(1, 21):
                call = {"name": "llm_query", "arguments": {"prompt": f"hi {i}"}}
                server.send(
                    json.dumps({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": call}).encode()
                )
                answer = server.answer(i, timeout=60)
                assert answer is not None and not answer["result"].get("isError"), answer
            connections = _client_connections_to(server.proc.pid, llm.port)
        finally:
            server.close()
    assert connections <= 2, f"{connections} connections to the provider after 20 calls"


def test_a_forked_handler_status_can_be_read_from_two_threads() -> None:
    """On a timeout or a cancel the collector polls while the runner waits, on the same handler: one may
    close the status descriptor the other is about to read (it gave 'OSError: Bad file descriptor', an
    internal error, in 2 of 123 soak timeouts). Both must just get the status."""
    import socket
    import subprocess

    from betty_mcp.run.zygote import ForkedHandler

    for _ in range(150):
        child = subprocess.Popen(["sleep", "0.01"])
        ours, theirs = socket.socketpair()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        handler = ForkedHandler(child.pid, ours, out_r, err_r, status_r)
        results: list[Any] = []

        def keep_polling(handler: ForkedHandler = handler, results: list[Any] = results) -> None:
            try:
                while handler.poll() is None:
                    pass
                results.append(handler.returncode)
            except Exception as exc:
                results.append(exc)

        def wait(handler: ForkedHandler = handler, results: list[Any] = results) -> None:
            try:
                results.append(handler.wait())
            except Exception as exc:
                results.append(exc)

        threads = [threading.Thread(target=keep_polling), threading.Thread(target=wait)]
        for thread in threads:
            thread.start()
        os.write(status_w, b"0\n")
        child.wait()
        for fd in (status_w, out_w, err_w):
            os.close(fd)
        for thread in threads:
            thread.join(10)
        handler.close()
        theirs.close()
        assert results == [0, 0], results
