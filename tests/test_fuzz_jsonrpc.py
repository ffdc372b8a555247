"""Property-based fuzz of the JSON-RPC entry, over stdio (raw lines on a server's stdin) and over
streamable HTTP (raw POST bodies to /mcp after a valid initialize).

Messages: real methods (tools/call, tools/list, resources/read, initialize, ping, ...) and random
ones; params of random shapes (nested JSON, huge strings, deep nesting, wrong types); ids of every
JSON type; batches; lines that are not JSON. One server process per test, many examples each.

Invariants:
- every well-formed request (an int or string id, a string method, object params) gets a response
  with its id (a result or an error); over HTTP, any other message carrying a string or integer id
  is answered or rejected (a 4xx with a JSON-RPC error, or 413 for a body over 4 MiB);
- stdout carries only JSON-RPC messages: every line a JSON object with ``"jsonrpc": "2.0"``;
- the server is alive after the whole run: a final ``tools/list`` succeeds.

What the fuzz found is pinned at the bottom: every message that carries an id gets an answer.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from tests.conftest import FIXTURE_SKILLS, http_server, server_args

# Hypothesis's caches (unicode tables, constants) go to the temp folder, not the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "betty-mcp-hypothesis")

PROTOCOL = "2025-11-25"
ANSWER_SECONDS = 30  # a response to a well-formed request must come within this
FUZZ = settings(
    database=None,  # no .hypothesis folder in the checkout
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
# Fixture skills that end quickly whatever their arguments (test.big would build gigabytes, test.hang
# and test.spawn sleep): the fuzz may call any of these with anything.
SAFE_SKILLS = [
    "test.echo",
    "test.crash",
    "test.env",
    "test.logs",
    "test.nonjson",
    "test.readfile",
    "test.sleep",
]
TOOLS = [
    "skills_list",
    "skill_run",
    "llm_query",
    "models_list",
    "agent_run",
    "run_status",
    "run_result",
    "run_cancel",
    "agents_list",
    *(s.replace(".", "_") for s in SAFE_SKILLS),
]
METHODS = [
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "initialize",
    "ping",
    "logging/setLevel",
    "completion/complete",
    "resources/subscribe",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
]
# Parameters kept out of every message: they would wait long by design.
LONG_WAITS = {"wait_seconds", "seconds"}

# -- the workspace -----------------------------------------------------------------------------


def fuzz_workspace(root: Path) -> tuple[Path, Path]:
    """A workspace whose llm_router points at a closed port (llm_query fails at once, never loads the
    embedded model) and whose skills time out after 2 s; and a skills folder of the safe fixtures."""
    workspace = root / "workspace"
    skills = root / "skills"
    workspace.mkdir()
    for name in SAFE_SKILLS:
        shutil.copytree(FIXTURE_SKILLS / name, skills / name)
    (workspace / "notes.txt").write_text("hello\n")
    (workspace / "betty.yaml").write_text(
        "limits:\n  skill_timeout_seconds: 2\n"
        "llm_router:\n  embedded_fallback: false\n  default_model: dead/m\n"
        "  providers:\n    dead:\n      type: openai_compatible\n      endpoint: http://127.0.0.1:9\n"
        "      models: [m]\n"
    )
    return workspace, skills


# -- strategies --------------------------------------------------------------------------------

MAX_DEPTH_ANSWERED = 150  # the SDK's JSON parser refuses deeper documents (about 200 levels)

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
huge_string = st.sampled_from([10_000, 300_000, 2_000_000]).map(lambda n: "x" * n)


def nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# Deeper than the SDK parses; under what json.dumps (the C encoder, ~1000 levels) can write here.
deep_value = st.integers(MAX_DEPTH_ANSWERED + 60, 900).map(nested)
param_value = st.one_of(json_value, json_value, huge_string, deep_value)


short_text = st.text(max_size=40).filter(lambda s: "\0" not in s)
# Arguments that pass each tool's schema (mostly): the calls that really run something.
VALID_ARGUMENTS: dict[str, Any] = {
    "test_echo": st.fixed_dictionaries(
        {"message": st.one_of(short_text, st.text(max_size=20_000).filter(lambda s: "\0" not in s))},
        optional={
            "times": st.integers(0, 3),
            "shout": st.booleans(),
            "tags": st.lists(json_scalar, max_size=3),
        },
    ),
    "test_logs": st.fixed_dictionaries({"name": short_text}),
    "test_readfile": st.fixed_dictionaries(
        {
            "file_path": st.one_of(
                st.sampled_from(["notes.txt", "../x", "/etc/hostname", "missing"]), short_text
            )
        }
    ),
    "test_sleep": st.fixed_dictionaries({"seconds": st.floats(0, 0.3)}),
    "test_crash": st.just({}),
    "test_env": st.just({}),
    "test_nonjson": st.just({}),
    "skills_list": st.fixed_dictionaries({}, optional={"query": short_text, "tag": short_text}),
    "skill_run": st.fixed_dictionaries(
        {"name": st.sampled_from(SAFE_SKILLS)},
        optional={"arguments": st.fixed_dictionaries({"message": short_text, "name": short_text})},
    ),
    "llm_query": st.fixed_dictionaries({"prompt": short_text.filter(bool)}),  # a dead endpoint: fails at once
    "models_list": st.just({}),
    "agents_list": st.just({}),
    "agent_run": st.fixed_dictionaries({"agent": short_text.filter(bool), "task": short_text.filter(bool)}),
    "run_status": st.fixed_dictionaries({"run_id": short_text.filter(bool)}),
    "run_cancel": st.fixed_dictionaries({"run_id": short_text.filter(bool)}),
    "run_result": st.fixed_dictionaries({"run_id": short_text.filter(bool)}),
}


@st.composite
def tool_call_params(draw: Any) -> Any:
    name = draw(st.one_of(st.sampled_from(TOOLS), st.sampled_from(TOOLS), st.text(max_size=20)))
    arguments: Any
    choice = draw(st.integers(0, 5))
    if choice == 0:
        arguments = draw(param_value)  # any shape at all
    elif choice <= 2 or name not in VALID_ARGUMENTS:
        keys = st.sampled_from(
            ["message", "times", "shout", "tags", "file_path", "query", "prompt", "run_id", "x"]
        )
        arguments = draw(st.dictionaries(keys, st.one_of(json_value, huge_string), max_size=4))
        if name == "test_sleep":
            arguments["seconds"] = draw(st.floats(0, 0.3))
    else:
        arguments = draw(VALID_ARGUMENTS[name])
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if draw(st.integers(0, 5)) == 0:
        params["_meta"] = draw(st.one_of(json_value, st.fixed_dictionaries({"progressToken": json_scalar})))
    return params


@st.composite
def params_for(draw: Any, method: str) -> Any:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.one_of(json_value, deep_value, huge_string))  # any shape at all
    if method == "tools/call":
        return draw(tool_call_params())
    if method == "resources/read":
        uri = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "betty://skills/test.echo",
                        "betty://skills/test.echo/SKILL.md",
                        "betty://outputs/0123456789ab",
                        "betty://outputs/../../etc/passwd",
                        "betty://runs/x",
                        "file:///etc/passwd",
                        "",
                    ]
                ),
                st.text(max_size=40),
                huge_string,
            )
        )
        return {"uri": uri}
    if method == "initialize":
        return draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "protocolVersion": st.one_of(
                        st.sampled_from([PROTOCOL, "2026-07-28", "1999-01-01"]), json_scalar
                    ),
                    "capabilities": json_value,
                    "clientInfo": st.one_of(
                        st.fixed_dictionaries({"name": st.text(max_size=10), "version": st.text(max_size=5)}),
                        json_value,
                    ),
                },
            )
        )
    if method == "notifications/cancelled":  # ids from their own space: never one of ours in flight
        return {"requestId": draw(st.text(max_size=5).map(lambda s: "cancel-" + s)), "reason": "fuzz"}
    return draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=10), param_value, max_size=3)))


def depth(value: Any) -> int:
    """Nesting depth of a JSON value (iterative: values can be thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node)
    return deepest


def has_long_wait(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if any(k in LONG_WAITS and not (isinstance(v, float) and v <= 0.5) for k, v in node.items()):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


@dataclass
class Message:
    """One line or body to send, and what the server owes for it."""

    raw: bytes
    expected_id: Any = None  # a well-formed request's id: a response with it must come
    identified: list[Any] = field(default_factory=list)  # ids of malformed messages (HTTP rejects them)

    def __repr__(self) -> str:  # failing examples stay readable (bodies can be megabytes)
        shown = (
            self.raw
            if len(self.raw) <= 600
            else self.raw[:300] + b"...(%d bytes)..." % len(self.raw) + self.raw[-200:]
        )
        return f"Message({shown!r}, expected_id={self.expected_id!r}, identified={self.identified!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints examples
        printer.text(repr(self))


_counter = itertools.count(1)


@st.composite
def messages(draw: Any) -> Message:
    kinds = ["request"] * 6 + ["call"] * 4 + ["notification", "bad_id", "batch", "not_json", "not_object"]
    kind = draw(st.sampled_from(kinds))
    serial = next(_counter)
    if kind == "call":  # a tool call that passes the schema, mostly: something really runs
        name = draw(st.sampled_from(sorted(VALID_ARGUMENTS)))
        call = {"name": name, "arguments": draw(VALID_ARGUMENTS[name])}
        body = {"jsonrpc": "2.0", "id": f"call#{serial}", "method": "tools/call", "params": call}
        return Message(json.dumps(body).encode(), expected_id=body["id"])
    if kind == "not_json":
        junk = draw(
            st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
        )
        junk = junk.replace("\n", " ").replace("\r", " ")
        return Message(junk.encode("utf-8", errors="surrogatepass"))
    if kind == "not_object":
        return Message(json.dumps(draw(json_scalar)).encode())
    method = draw(st.one_of(st.sampled_from(["tools/call"] * 8 + METHODS), st.text(max_size=30)))
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    params = draw(params_for(method))
    if has_long_wait(params):
        params = {"name": "test_echo", "arguments": {"message": "no long waits"}}
    if params is not None or draw(st.booleans()):
        body["params"] = params
    if draw(st.integers(0, 15)) == 0:  # a wrong or missing version
        body["jsonrpc"] = draw(st.sampled_from(["1.0", "2", 2.0, None]))
        if draw(st.booleans()):
            del body["jsonrpc"]
    if kind == "notification":
        return Message(json.dumps(body).encode())
    if kind == "bad_id":
        body["id"] = draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(-(10**9), 10**9).map(lambda i: i + 0.5),
                st.lists(json_scalar, max_size=2),
                st.dictionaries(st.text(max_size=3), json_scalar, max_size=2),
            )
        )
        return Message(json.dumps(body).encode())
    if draw(st.booleans()):
        request_id: Any = serial + 10**6 * draw(st.integers(-(10**12), 10**12))
    else:
        request_id = f"{draw(st.text(max_size=12))}#{serial}"
    body["id"] = request_id
    if kind == "batch":
        other = {"jsonrpc": "2.0", "id": f"batch#{serial}", "method": "ping"}
        return Message(json.dumps([body, other]).encode(), identified=[request_id, other["id"]])
    well_formed = (
        body.get("jsonrpc") == "2.0"
        and isinstance(method, str)
        and (params is None or isinstance(params, dict))
        and depth(body) <= MAX_DEPTH_ANSWERED
    )
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", errors="surrogatepass")
    if well_formed:
        return Message(raw, expected_id=request_id)
    return Message(raw, identified=[request_id])


# -- stdio -------------------------------------------------------------------------------------


class StdioServer:
    """``python -m betty_mcp serve`` with raw pipes; a thread reads and checks every stdout line."""

    def __init__(self, workspace: Path, skills: Path, stderr: Path) -> None:
        args = server_args(workspace, "--skills-dir", str(skills), "--no-bundled", fixtures=False)
        self.stderr = stderr.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=workspace,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env={k: v for k, v in os.environ.items() if k != "BETTY_CONFIG"},
        )
        self.responses: queue.Queue[dict[str, Any]] = queue.Queue()
        self.bad_lines: list[bytes] = []
        self.lines = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines += 1
            try:
                message = json.loads(line)
            except ValueError:
                self.bad_lines.append(line[:300])
                continue
            if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                self.bad_lines.append(line[:300])
                continue
            if "id" in message and "method" not in message:
                self.responses.put(message)

    def send(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()

    def await_ids(self, wanted: list[Any], seconds: float = ANSWER_SECONDS) -> dict[str, dict[str, Any]]:
        """The responses to ``wanted`` ids (JSON-encoded id -> message); fails on a missing one."""
        keys = {json.dumps(i) for i in wanted}
        got: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + seconds
        while keys - set(got):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                response = self.responses.get(timeout=left)
            except queue.Empty:
                break
            got[json.dumps(response.get("id"))] = response
        return got

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def initialize(server: StdioServer, request_id: Any = "init") -> None:
    server.send(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "fuzz", "version": "1"},
                },
            }
        ).encode()
    )
    assert "result" in server.await_ids([request_id])[json.dumps(request_id)]
    server.send(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}')
    # initialize is answered before the SDK is loaded: a ping's answer says the server is fully up.
    server.send(b'{"jsonrpc": "2.0", "id": "up", "method": "ping"}')
    assert "result" in server.await_ids(["up"])['"up"']


@pytest.fixture
def stdio_server(tmp_path: Path) -> Iterator[StdioServer]:
    workspace, skills = fuzz_workspace(tmp_path)
    server = StdioServer(workspace, skills, tmp_path / "stderr.txt")
    try:
        initialize(server)
        yield server
    finally:
        server.close()


def outcome(response: dict[str, Any]) -> str:
    """For --hypothesis-show-statistics: what kinds of answers the fuzz reached."""
    if "error" in response:
        return f"error {response['error'].get('code')}"
    result = response.get("result") or {}
    if "isError" in result:
        return "tool result, isError" if result["isError"] else "tool result, ok"
    return "result"


def assert_alive_and_clean(server: StdioServer) -> None:
    server.send(b'{"jsonrpc": "2.0", "id": "final", "method": "tools/list"}')
    final = server.await_ids(["final"]).get('"final"')
    assert final is not None and "result" in final, f"no answer to the final tools/list: {final}"
    assert any(t["name"] == "test_echo" for t in final["result"]["tools"])
    assert server.proc.poll() is None
    assert not server.bad_lines, f"non-JSON-RPC output on stdout: {server.bad_lines[:3]}"


@FUZZ
@given(batch=st.lists(messages(), min_size=1, max_size=4))
def test_stdio_answers_every_well_formed_request_and_writes_only_json_rpc(
    stdio_server: StdioServer, batch: list[Message]
) -> None:
    for message in batch:
        stdio_server.send(message.raw)
    wanted = [m.expected_id for m in batch if m.expected_id is not None]
    got = stdio_server.await_ids(wanted)
    for request_id in wanted:
        response = got.get(json.dumps(request_id))
        assert response is not None, f"no response to id {request_id!r} in {ANSWER_SECONDS}s"
        assert ("result" in response) != ("error" in response), response
        event(outcome(response))
        if "error" in response:
            assert isinstance(response["error"].get("code"), int) and isinstance(
                response["error"].get("message"), str
            )
    assert stdio_server.proc.poll() is None, "the server died"
    assert not stdio_server.bad_lines, f"non-JSON-RPC output on stdout: {stdio_server.bad_lines[:3]}"


def test_stdio_server_survives_a_fuzz_run_then_answers(stdio_server: StdioServer) -> None:
    """The fixture's server after the same kinds of messages, sent in one burst (no waiting between)."""
    burst = [
        b"not json at all",
        b"",
        b"[]",
        b"[1, 2, 3]",
        b'{"jsonrpc": "2.0"}',
        b'{"jsonrpc": "2.0", "id": 1}',
        b'{"jsonrpc": "2.0", "id": 2, "result": {}}',
        b'{"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "x"}}',
        json.dumps(
            {"jsonrpc": "2.0", "id": 4, "method": "ping", "params": {"pad": "x" * 3_000_000}}
        ).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": nested(900)}).encode(),
        b"\xff\xfe\xfd",
        b'{"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 999}}',
    ]
    for raw in burst:
        stdio_server.send(raw)
    assert_alive_and_clean(stdio_server)


# -- streamable HTTP ---------------------------------------------------------------------------


class HttpPeer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=ANSWER_SECONDS)
        self.headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        response = self.post(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": "init",
                    "method": "initialize",
                    "params": {
                        "protocolVersion": PROTOCOL,
                        "capabilities": {},
                        "clientInfo": {"name": "fuzz", "version": "1"},
                    },
                }
            ).encode()
        )
        assert response.status_code == 200, response.text
        self.headers["mcp-protocol-version"] = PROTOCOL
        if session := response.headers.get("mcp-session-id"):
            self.headers["mcp-session-id"] = session
        assert self.post(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}').status_code == 202

    def post(self, raw: bytes) -> httpx.Response:
        return self.client.post(self.url, content=raw, headers=self.headers)


TOO_LARGE = 413  # the SDK refuses bodies over 4 MiB before parsing them, in plain text: a rejection


def json_rpc_messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a response body (JSON, or SSE ``data:`` lines); each must be one."""
    if not response.content or response.status_code == TOO_LARGE:
        return []
    kind = response.headers.get("content-type", "")
    if kind.startswith("text/event-stream"):
        # SSE lines end at CR, LF or CRLF only (str.splitlines would also cut at U+2028, U+0085, ...).
        lines = re.split(r"\r\n|\r|\n", response.text)
        bodies = [line[5:].strip() for line in lines if line.startswith("data:")]
        bodies = [b for b in bodies if b]
    else:
        assert kind.startswith("application/json"), f"unexpected content-type {kind!r}: {response.text[:200]}"
        bodies = [response.text]
    found = []
    for body in bodies:
        message = json.loads(body)
        for item in message if isinstance(message, list) else [message]:
            assert isinstance(item, dict) and item.get("jsonrpc") == "2.0", f"not JSON-RPC: {body[:200]}"
            found.append(item)
    return found


@pytest.fixture
def http_peer(tmp_path: Path) -> Iterator[HttpPeer]:
    workspace, skills = fuzz_workspace(tmp_path)
    with http_server(workspace, "--skills-dir", str(skills), "--no-bundled", fixtures=False) as url:
        peer = HttpPeer(url)
        yield peer
        peer.client.close()


@FUZZ
@given(batch=st.lists(messages(), min_size=1, max_size=4))
def test_http_answers_or_rejects_every_message_with_an_id(http_peer: HttpPeer, batch: list[Message]) -> None:
    for message in batch:
        response = http_peer.post(message.raw)
        assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
        if response.status_code == TOO_LARGE:  # refused before parsing: a rejection of whatever it held
            event("413 body too large")
            assert len(message.raw) > 4 * 1024 * 1024, f"413 for a {len(message.raw)}-byte body"
            continue
        found = json_rpc_messages(response)
        ids = {json.dumps(m.get("id")) for m in found if "method" not in m}
        for m in found:
            event(outcome(m))
        if message.expected_id is not None:
            assert json.dumps(message.expected_id) in ids, (
                f"no response to id {message.expected_id!r}: {response.text[:300]}"
            )
        for request_id in message.identified:
            answered = json.dumps(request_id) in ids
            rejected = 400 <= response.status_code < 500 and any("error" in m for m in found)
            assert answered or rejected, (
                f"id {request_id!r} neither answered nor rejected: {response.status_code}"
            )
        if response.status_code >= 400:
            assert any("error" in m for m in found), f"a {response.status_code} without a JSON-RPC error"
    final = http_peer.post(b'{"jsonrpc": "2.0", "id": "alive", "method": "tools/list"}')
    assert final.status_code == 200 and any("result" in m for m in json_rpc_messages(final))


def test_http_server_answers_after_malformed_bodies_and_headers(http_peer: HttpPeer) -> None:
    client, url = http_peer.client, http_peer.url
    cases: list[tuple[bytes, dict[str, str]]] = [
        (b"", http_peer.headers),
        (b"\x00" * 1000, http_peer.headers),
        (
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 3_000_000}}
            ).encode(),
            http_peer.headers,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}',
            {**http_peer.headers, "mcp-session-id": "nope"},
        ),
        (
            b'{"jsonrpc": "2.0", "id": 3, "method": "tools/list"}',
            {**http_peer.headers, "mcp-protocol-version": "x"},
        ),
        (
            b'{"jsonrpc": "2.0", "id": 4, "method": "tools/list"}',
            {**http_peer.headers, "Content-Type": "text/plain"},
        ),
        (
            b'{"jsonrpc": "2.0", "id": 5, "method": "tools/list"}',
            {**http_peer.headers, "Accept": "image/png"},
        ),
    ]
    for body, headers in cases:
        response = client.post(url, content=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.text[:200])
    too_large = http_peer.post(
        b'{"jsonrpc": "2.0", "id": 6, "method": "ping", "params": {"pad": "%s"}}' % (b"x" * 5_000_000)
    )
    assert too_large.status_code == TOO_LARGE
    assert client.get(url, headers={**http_peer.headers, "Accept": "text/plain"}).status_code < 500
    final = http_peer.post(b'{"jsonrpc": "2.0", "id": "alive", "method": "tools/list"}')
    assert final.status_code == 200 and any("result" in m for m in json_rpc_messages(final))


# -- findings ----------------------------------------------------------------------------------

# Requests whose id is readable but that the SDK's message model refuses: over stdio they are dropped
# silently (the client waits forever); JSON-RPC 2.0 wants an error response (-32600 / -32602 / -32700).
MALFORMED_WITH_AN_ID = {
    "params_array": b'{"jsonrpc": "2.0", "id": 101, "method": "tools/call", "params": [1, 2]}',
    "params_string": b'{"jsonrpc": "2.0", "id": 102, "method": "tools/list", "params": "x"}',
    "method_number": b'{"jsonrpc": "2.0", "id": 103, "method": 5}',
    "nested_250": json.dumps(
        {"jsonrpc": "2.0", "id": 104, "method": "tools/call", "params": nested(250)}
    ).encode(),
    "lone_surrogate": b'{"jsonrpc": "2.0", "id": 105, "method": "ping", "params": {"s": "\\ud800"}}',
    "batch": b'[{"jsonrpc": "2.0", "id": 106, "method": "ping"}]',
}
# Ids that are not a string or an integer: both transports treat the request as a notification.
BAD_IDS = {"null": None, "float": 4.5, "true": True, "object": {"a": 1}, "array": [1]}


def test_stdio_answers_every_malformed_message_that_carries_an_id(stdio_server: StdioServer) -> None:
    missing = []
    for (name, raw), request_id in zip(MALFORMED_WITH_AN_ID.items(), range(101, 107), strict=True):
        stdio_server.send(raw)
        if not stdio_server.await_ids([request_id], seconds=0.5):
            missing.append(name)
    assert_alive_and_clean(stdio_server)
    assert not missing, f"no response over stdio to: {', '.join(missing)}"


def test_http_rejects_requests_whose_id_is_not_a_string_or_an_integer(http_peer: HttpPeer) -> None:
    accepted = []
    for name, bad in BAD_IDS.items():
        response = http_peer.post(json.dumps({"jsonrpc": "2.0", "id": bad, "method": "ping"}).encode())
        if not (400 <= response.status_code < 500 and any("error" in m for m in json_rpc_messages(response))):
            accepted.append(f"{name} -> {response.status_code}")
    assert not accepted, f"not rejected: {', '.join(accepted)}"


def test_the_fuzz_skills_exist() -> None:
    """Guards the safe-skill list against fixture renames (the fuzz would silently call nothing)."""
    for name in SAFE_SKILLS:
        assert (FIXTURE_SKILLS / name / "skill.yaml").is_file(), name
