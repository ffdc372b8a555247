"""llm_query through the real MCP server and the real LiteLLM HTTP path, against a scripted provider."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from mcp.client import Client

from tests.conftest import ERAS, ROOT, server_args, stdio_client
from tests.fakes.scripted_llm import ContextLengthError, Error, Hang, Reply, ScriptedLLM, ToolCalls

pytestmark = pytest.mark.anyio

SECRET = "sk-scripted-secret-0123456789"


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def write_config(workspace: Path, llm: ScriptedLLM, **extra: object) -> None:
    router = {
        "default_model": "scripted/main",
        "providers": {
            "scripted": {
                "type": "openai_compatible",
                "endpoint": llm.base_url,
                "api_key_env": "SCRIPTED_API_KEY",
                "models": [
                    {
                        "name": "main",
                        "context_window": 4000,
                        "input_cost_per_mtok": 2.0,
                        "output_cost_per_mtok": 6.0,
                        "fallbacks": ["scripted/backup"],
                    },
                    {
                        "name": "backup",
                        "context_window": 128000,
                        "input_cost_per_mtok": 1.0,
                        "output_cost_per_mtok": 1.0,
                    },
                ],
            },
            "ollama": {"type": "ollama", "endpoint": llm.base_url, "models": ["llama3"]},
        },
        "embedded_fallback": False,
        **extra,
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))


ENV = {"SCRIPTED_API_KEY": SECRET}


# -- one server for the tests that only make calls ----------------------------------------------
# Each server pays LiteLLM's import (seconds of CPU). Tests that neither change the server's state
# (no fallback cool-downs, no budgets, no ledger checks) nor depend on a fresh one share this one;
# each starts with the scripted provider's queues and recorded requests cleared.


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module-scoped, so that the shared server's client lives across tests


@pytest.fixture(scope="module")
def shared_llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture(scope="module")
async def shared_client(
    tmp_path_factory: pytest.TempPathFactory, shared_llm: ScriptedLLM
) -> AsyncIterator[Client]:
    workspace = tmp_path_factory.mktemp("shared") / "workspace"
    workspace.mkdir()
    write_config(workspace, shared_llm)
    async with stdio_client(workspace, env=ENV) as client:
        yield client


@pytest.fixture
def served(shared_client: Client, shared_llm: ScriptedLLM) -> tuple[Client, ScriptedLLM]:
    """The shared server's client, and its scripted provider with nothing queued or recorded."""
    shared_llm.reset()
    return shared_client, shared_llm


@pytest.mark.parametrize("mode", ERAS)
async def test_llm_query_answers_with_model_tokens_cost_and_latency(
    workspace: Path, llm: ScriptedLLM, mode: str
) -> None:
    write_config(workspace, llm)
    llm.script("main", Reply("Paris is the capital.", prompt_tokens=10, completion_tokens=5))
    async with stdio_client(workspace, mode=mode, env=ENV) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["llm_query"].title == "llm.query"
        result = await client.call_tool(
            "llm_query", {"prompt": "Capital of France?", "system_prompt": "Be brief."}
        )
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["response"] == "Paris is the capital."
    assert (out["model_used"], out["provider"]) == ("scripted/main", "scripted")
    assert out["tokens_used"] == {"prompt": 10, "completion": 5, "total": 15}
    assert out["cost_usd"] == pytest.approx(10 * 2e-6 + 5 * 6e-6)
    assert out["latency_ms"] > 0 and out["fallbacks"] == []
    sent = llm.requests_for("main")[0]
    assert [m["role"] for m in sent.messages] == ["system", "user"] and sent.body["stream"] is True
    assert sent.headers["authorization"] == f"Bearer {SECRET}"


async def test_rate_limit_falls_back_within_a_second_and_records_the_hop(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_config(workspace, llm)
    llm.script("main", Error(429, retry_after=30))
    llm.script("backup", Reply("from backup"))
    async with stdio_client(workspace, env=ENV) as client:
        out = (await client.call_tool("llm_query", {"prompt": "hi", "model": "main"})).structured_content
    assert out["response"] == "from backup" and out["model_used"] == "scripted/backup"
    assert [(h["model"], h["error_kind"]) for h in out["fallbacks"]] == [("scripted/main", "rate_limit")]
    first, second = llm.requests_for("main")[0], llm.requests_for("backup")[0]
    assert second.time - first.time < 1.0, "no Retry-After or back-off wait before falling back"


async def test_server_errors_and_context_length_fall_back(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm)
    llm.script("main", Error(500), ContextLengthError())
    llm.script("backup", Reply("one"), Reply("two"))
    async with stdio_client(workspace, env=ENV) as client:
        first = (await client.call_tool("llm_query", {"prompt": "a"})).structured_content
        second = (await client.call_tool("llm_query", {"prompt": "b"})).structured_content
    assert [h["error_kind"] for h in first["fallbacks"]] == ["server"]
    assert [h["error_kind"] for h in second["fallbacks"]] == ["context_window"]
    assert second["model_used"] == "scripted/backup"


async def test_auth_errors_do_not_fall_back_and_the_key_appears_nowhere(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    write_config(workspace, llm)
    llm.script("main", Error(401, echo_auth=True))
    stderr_log = tmp_path / "stderr.log"
    with stderr_log.open("w") as errlog:
        async with stdio_client(workspace, "--log-level", "debug", env=ENV, errlog=errlog) as client:
            result = await client.call_tool("llm_query", {"prompt": "hi"})
            usage = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [sys.executable, "-m", "betty_mcp", "usage", "--json"],
                    cwd=workspace,
                    capture_output=True,
                    text=True,
                    env={**os.environ, **ENV},
                )
            )
    assert result.is_error
    assert "auth" in result.content[0].text and len(llm.requests_for("backup")) == 0
    assert SECRET in llm.requests_for("main")[0].headers["authorization"], "the provider did get the key"
    everything = [
        result.content[0].text,
        json.dumps(result.structured_content),
        stderr_log.read_text(),
        usage.stdout,
        (workspace / ".betty-mcp" / "usage.sqlite").read_bytes().decode("latin-1"),
    ]
    assert all(SECRET not in text for text in everything)
    assert "[REDACTED]" in result.content[0].text


async def test_slow_streams_send_progress_with_the_text_so_far(served: tuple[Client, ScriptedLLM]) -> None:
    client, llm = served
    llm.script("main", Reply("word " * 40, chunk_delay=0.5))
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    result = await client.call_tool("llm_query", {"prompt": "slow"}, progress_callback=on_progress)
    assert not result.is_error
    assert messages and all(m.startswith("scripted/main: ") for m in messages)
    assert any("characters received" in m and not m.startswith("scripted/main: 0 ") for m in messages)


@pytest.mark.parametrize("mode", ERAS)
async def test_cancelling_a_hanging_call_leaves_the_server_answering(
    workspace: Path, llm: ScriptedLLM, mode: str
) -> None:
    write_config(workspace, llm)
    llm.script("main", Hang())
    async with stdio_client(workspace, mode=mode, env=ENV) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.call_tool, "llm_query", {"prompt": "hang"})
            with anyio.fail_after(30):
                while not llm.requests:  # the provider has the request: cancel it mid-call
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        started = time.monotonic()
        llm.script("main", Reply("after"))
        out = (await client.call_tool("llm_query", {"prompt": "again"})).structured_content
        assert out["response"] == "after" and time.monotonic() - started < 10


async def test_ollama_is_reached_natively(served: tuple[Client, ScriptedLLM]) -> None:
    client, llm = served
    llm.script("llama3", Reply("from ollama", prompt_tokens=4, completion_tokens=2))
    out = (await client.call_tool("llm_query", {"prompt": "hi", "model": "ollama/llama3"})).structured_content
    assert out["response"] == "from ollama" and out["cost_usd"] == 0.0
    assert [r.path for r in llm.requests_for("llama3")] == ["/api/chat"]


async def test_budgets_refuse_calls_and_name_the_budget(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm, limits={"budgets": {"per_call_usd": 0.000001}})
    async with stdio_client(workspace, env=ENV) as client:
        result = await client.call_tool("llm_query", {"prompt": "hi " * 50, "max_tokens": 1000})
    assert result.is_error and "budget" in result.content[0].text
    assert result.structured_content["errors"][0]["budget"] == "per_call"
    assert llm.requests == []


async def test_structured_output_is_parsed_and_invalid_arguments_refused(
    served: tuple[Client, ScriptedLLM],
) -> None:
    client, llm = served
    llm.script("main", Reply('{"city": "Paris"}'))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    out = (
        await client.call_tool("llm_query", {"prompt": "city?", "response_format": schema})
    ).structured_content
    bad = await client.call_tool("llm_query", {"prompt": "x", "temperature": "hot"})
    unknown = await client.call_tool("llm_query", {"prompt": "x", "model": "nope/nothing"})
    assert out["json"] == {"city": "Paris"}
    assert llm.requests_for("main")[0].body["response_format"]["type"] == "json_schema"
    assert bad.is_error and "argument 'temperature'" in bad.content[0].text
    assert unknown.is_error and "unknown model 'nope/nothing'" in unknown.content[0].text


async def test_models_list_shows_readiness_and_prices(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm)
    async with stdio_client(workspace, env={"SCRIPTED_API_KEY": ""}) as client:
        out = (await client.call_tool("models_list", {})).structured_content
    models = {m["id"]: m for m in out["models"]}
    assert models["scripted/main"]["key_present"] is False and models["scripted/main"]["configured"] is False
    assert models["scripted/main"]["prices_usd_per_mtok"] == {"input": 2.0, "output": 6.0}
    assert models["ollama/llama3"]["configured"] is True and "embedded/gemma-3-270m" in models
    assert out["default"] == "scripted/main"


async def test_tool_calls_reach_litellm_callers(llm: ScriptedLLM, tmp_path: Path) -> None:
    """The adapter returns tool calls (agent runs need them), through the real HTTP path."""
    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.litellm_adapter import LiteLLMBackend
    from betty_mcp.llm.models import ModelCatalog
    from betty_mcp.llm.types import ChatRequest, StreamSink

    llm.script("main", ToolCalls([("api_validate", {"spec_path": "a.yaml"})]))
    config = LlmRouterConfig.model_validate(
        {"providers": {"s": {"endpoint": llm.base_url, "models": ["main"]}}}
    )
    spec = ModelCatalog(config).resolve("s/main")
    tools = [{"type": "function", "function": {"name": "api_validate", "parameters": {"type": "object"}}}]
    completion = await LiteLLMBackend().complete(
        spec, ChatRequest([{"role": "user", "content": "x"}], tools=tools), StreamSink()
    )
    assert [(c.name, json.loads(c.arguments)) for c in completion.tool_calls] == [
        ("api_validate", {"spec_path": "a.yaml"})
    ]


async def test_litellm_end_of_stream_logging_never_runs(
    llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream is read up to LiteLLM's usage chunk, then closed: its success logging (unused, ~40% of a
    streamed call's CPU) never runs, and the answer, its tool calls and its usage are whole."""
    import asyncio

    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.litellm_adapter import LiteLLMBackend, load_litellm
    from betty_mcp.llm.models import ModelCatalog
    from betty_mcp.llm.types import ChatRequest, StreamSink

    litellm = await load_litellm()  # imported offline, as the server does
    Logging = litellm.litellm_core_utils.litellm_logging.Logging
    dispatched: list[object] = []

    def counted(*args: object, **kwargs: object) -> object:
        dispatched.append(args)
        return asyncio.sleep(0)

    monkeypatch.setattr(Logging, "dispatch_success_handlers", counted)
    config = LlmRouterConfig.model_validate({"providers": {"s": {"endpoint": llm.base_url, "models": ["m"]}}})
    spec = ModelCatalog(config).resolve("s/m")
    llm.script("m", Reply("a whole answer", prompt_tokens=11, completion_tokens=4))
    llm.script("m", ToolCalls([("api_validate", {"spec_path": "a.yaml"})]))
    sink = StreamSink()
    answer = await LiteLLMBackend().complete(spec, ChatRequest([{"role": "user", "content": "x"}]), sink)
    calls = await LiteLLMBackend().complete(spec, ChatRequest([{"role": "user", "content": "y"}]), sink)
    await anyio.sleep(0.1)
    assert (answer.text, answer.prompt_tokens, answer.completion_tokens) == ("a whole answer", 11, 4)
    assert [c.name for c in calls.tool_calls] == ["api_validate"]
    assert dispatched == []


def test_start_up_does_not_import_litellm(workspace: Path) -> None:
    code = (
        "import sys; from betty_mcp.core.config import load_settings;"
        "from betty_mcp.services import Services; from betty_mcp.mcp import transports;"
        "transports.build_server(Services(load_settings())); print('litellm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=workspace, check=True
    )
    assert out.stdout.strip() == "False"


def test_cli_query_models_usage_and_doctor(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm)
    llm.script("main", Reply("cli answer", prompt_tokens=3, completion_tokens=2))
    env = {**os.environ, **ENV}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "betty_mcp", *args],
            capture_output=True,
            text=True,
            cwd=workspace,
            env=env,
            timeout=60,
        )

    answered = cli("query", "hello")
    assert answered.returncode == 0 and answered.stdout.strip() == "cli answer"
    assert "scripted/main: 5 tokens" in answered.stderr
    as_json = cli("query", "hello", "--json")
    assert json.loads(as_json.stdout)["model_used"] == "scripted/main"
    assert "scripted/main" in cli("models").stdout
    usage = json.loads(cli("usage", "--json").stdout)
    assert sum(row["calls"] for row in usage["by_model"]) == 2
    doctor = cli("doctor", "--json")
    checks = {f["check"]: f for f in json.loads(doctor.stdout)}
    assert checks["config"]["ok"] and checks["key SCRIPTED_API_KEY"]["ok"]
    assert checks["endpoint scripted"]["ok"] and checks["endpoint ollama"]["ok"]
    failed = cli("query", "x", "--model", "nope")
    assert failed.returncode == 1 and "unknown model 'nope'" in failed.stderr


async def test_the_llm_query_skill_runs_the_same_code(served: tuple[Client, ScriptedLLM]) -> None:
    """skills/llm.query (a Betty skill, run as a subprocess) reaches the provider with its key."""
    client, llm = served
    llm.script("main", Reply("from the skill", prompt_tokens=2, completion_tokens=3))
    result = await client.call_tool("skill_run", {"name": "llm.query", "arguments": {"prompt": "hi"}})
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert out["response"] == "from the skill" and out["model_used"] == "scripted/main"
    assert out["tokens_used"]["total"] == 5
    assert llm.requests_for("main")[0].headers["authorization"] == f"Bearer {SECRET}"


# -- a key in a successful answer ----------------------------------------------------------------


async def test_a_key_echoed_in_a_successful_answer_reaches_no_result_progress_or_ledger(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_config(workspace, llm)
    # 62 words in 4 chunks 0.8 s apart: the second ends with the key, the last thing received at the
    # 2 s progress tick (LiteLLM already loaded), where the message shows the end of the text so far.
    words = " ".join(f"w{i}" for i in range(30)) + " {auth} " + " ".join(f"v{i}" for i in range(30))
    llm.script("main", Reply("warm"), Reply(words, echo_auth=True, chunk_delay=0.8))
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with stdio_client(workspace, env=ENV) as client:
        await client.call_tool("llm_query", {"prompt": "warm up"})
        result = await client.call_tool("llm_query", {"prompt": "echo"}, progress_callback=on_progress)
    usage = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "usage", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
    )
    assert not result.is_error, result.content[0].text
    assert SECRET in llm.requests_for("main")[0].headers["authorization"], "the provider did get the key"
    assert result.structured_content["response"].startswith("w0 w1") and messages
    assert "Bearer [REDACTED] v0" in result.structured_content["response"]
    everything = [
        result.content[0].text,
        json.dumps(result.structured_content),
        *messages,
        usage.stdout,
        (workspace / ".betty-mcp" / "usage.sqlite").read_bytes().decode("latin-1"),
    ]
    assert all(SECRET not in text for text in everything)


# -- what reaches stderr and stdout --------------------------------------------------------------


async def test_litellm_info_lines_stay_off_stderr_unless_verbose(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    write_config(workspace, llm)
    logs = {}
    for flags in ((), ("--verbose",)):
        llm.script("main", Reply("fine"))
        log = tmp_path / f"stderr{len(flags)}.log"
        args = ("--log-level", "info", *flags)
        with log.open("w") as errlog:
            async with stdio_client(workspace, *args, env=ENV, errlog=errlog) as client:
                result = await client.call_tool("llm_query", {"prompt": "hi"})
        assert not result.is_error, result.content[0].text
        logs[flags] = log.read_text().splitlines()
    # LiteLLM logs "\nLiteLLM completion() model= main; provider = openai" at INFO for each call.
    quiet = [line for line in logs[()] if "completion() model=" in line or "LiteLLM:INFO" in line]
    assert quiet == [] and not any(line.startswith("INFO LiteLLM") for line in logs[()]), quiet
    loud = [line for line in logs[("--verbose",)] if "completion() model=" in line]
    assert len(loud) == 1, f"--verbose shows LiteLLM's lines, each once: {loud}"


def _read_line(stream: Any, deadline: float) -> bytes:
    """One line of ``stream`` (a pipe), or b"" at EOF; fails the test at ``deadline``."""
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no complete line before the deadline; got {line!r}"
        ready, _, _ = select.select([stream], [], [], remaining)
        if not ready:
            continue
        byte = os.read(stream.fileno(), 1)
        if not byte:
            return line
        line += byte
    return line


@pytest.mark.parametrize(
    "logging", [("debug",), ("debug", "--verbose"), ("info",), ("error",)], ids=lambda a: "-".join(a)
)
def test_stdout_carries_only_protocol_messages_at_every_log_level_even_after_the_session(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path, logging: tuple[str, ...]
) -> None:
    """LiteLLM loaded, at any --log-level (and --verbose): every line on stdout is JSON-RPC, through the
    end of the process (LiteLLM's own handler writes records below WARNING to stdout, its exit handler
    among them)."""
    write_config(workspace, llm)
    llm.script("main", Reply("fine"))
    requests = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "llm_query", "arguments": {"prompt": "hi"}},
        },
    ]
    with (tmp_path / "stderr.log").open("w") as errlog:
        proc = subprocess.Popen(
            [sys.executable, *server_args(workspace, "--log-level", *logging, fixtures=False)],
            cwd=workspace,
            env={**os.environ, **ENV},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errlog,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
            proc.stdin.flush()
            deadline = time.monotonic() + 60
            lines = []
            while not any(b'"id":2' in line.replace(b" ", b"") for line in lines):
                line = _read_line(proc.stdout, deadline)
                assert line, "the server closed stdout before answering"
                lines.append(line)
            proc.stdin.close()  # the session ends; the process exits, running its exit handlers
            while line := _read_line(proc.stdout, deadline):
                lines.append(line)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    answered = [json.loads(line) for line in lines if b'"id":2' in line.replace(b" ", b"")]
    assert answered and answered[0]["result"]["structuredContent"]["response"] == "fine"
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON-RPC message on stdout: {line!r}")
        assert isinstance(message, dict) and message.get("jsonrpc") == "2.0", line


# -- how each HTTP status is classified, through the real LiteLLM HTTP path ---------------------

STATUSES = [
    # status, the error kind betty-mcp reports, whether the walk moves on to the next model
    (400, "bad_request", False),
    (401, "auth", False),
    (403, "auth", False),
    (404, "not_found", True),
    (408, "timeout", True),
    (429, "rate_limit", True),
    (500, "server", True),
    (502, "server", True),
    (503, "server", True),
    (504, "timeout", True),
]


@pytest.mark.parametrize(("status", "kind", "moves_on"), STATUSES)
async def test_each_http_status_is_classified_and_walked_as_documented(
    llm: ScriptedLLM, tmp_path: Path, status: int, kind: str, moves_on: bool
) -> None:
    from betty_mcp.core.errors import AllModelsFailed
    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.routing import RouteRequest
    from betty_mcp.llm.service import LlmService
    from betty_mcp.llm.types import ChatRequest
    from betty_mcp.store import SqliteStore

    config = LlmRouterConfig.model_validate(
        {
            "default_model": "scripted/main",
            "embedded_fallback": False,
            "providers": {
                "scripted": {
                    "endpoint": llm.base_url,
                    "models": [{"name": "main", "fallbacks": ["scripted/backup"]}, "backup"],
                }
            },
        }
    )
    service = LlmService(config, SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs"))
    llm.script("main", Error(status))
    llm.script("backup", Reply("from backup"))
    request, route = ChatRequest([{"role": "user", "content": "hi"}]), RouteRequest(prompt="hi")
    if moves_on:
        result = await service.chat(request, route, caller="test")
        assert result.spec.id == "scripted/backup" and result.completion.text == "from backup"
        assert [(h.model, h.error_kind) for h in result.fallbacks] == [("scripted/main", kind)]
    else:
        with pytest.raises(AllModelsFailed) as failed:
            await service.chat(request, route, caller="test")
        assert failed.value.kind == kind and [h.error_kind for h in failed.value.hops] == [kind]
        assert llm.requests_for("backup") == [], "the walk stopped"
    assert len(llm.requests_for("main")) == 1, "no retry of the same model"


async def test_the_llm_path_is_warmed_up_once_the_client_is_served(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """LiteLLM's import (seconds) is paid after the first request, not by the first llm_query, and
    not at all without a configured provider; the warm-up sends nothing and records nothing."""
    log = tmp_path / "stderr.log"
    for configured in (True, False):
        if configured:
            write_config(workspace, llm)
        else:
            (workspace / "betty.yaml").unlink()
        with log.open("w") as errlog:
            async with stdio_client(workspace, "--log-level", "info", env=ENV, errlog=errlog) as client:
                await client.list_tools()
                with anyio.fail_after(60):
                    while "warmed up (" not in log.read_text():
                        await anyio.sleep(0.1)
        warmed = next(line for line in log.read_text().splitlines() if "warmed up (" in line)
        assert ("LLM path" in warmed) is configured, warmed
    assert llm.requests == [], "the warm-up asked the provider nothing"
    assert not (workspace / ".betty-mcp" / "usage.sqlite").exists() or _ledger_rows(workspace) == 0


def _ledger_rows(workspace: Path) -> int:
    import sqlite3

    with sqlite3.connect(workspace / ".betty-mcp" / "usage.sqlite") as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


FIRST_REAL_CALL = """
import sys
import anyio
import pydantic
from betty_mcp.core.llm_config import LlmRouterConfig
from betty_mcp.llm.litellm_adapter import LiteLLMBackend
from betty_mcp.llm.models import ModelCatalog
from betty_mcp.llm.types import ChatRequest, StreamSink
from tests.fakes.scripted_llm import ScriptedLLM

adapters = []
built = pydantic.TypeAdapter.__init__
pydantic.TypeAdapter.__init__ = lambda self, *a, **k: adapters.append(a) or built(self, *a, **k)

def unbuilt(cls=pydantic.BaseModel):
    found = set()
    for sub in cls.__subclasses__():
        if not getattr(sub, "__pydantic_complete__", True):
            found.add(f"{sub.__module__}.{sub.__qualname__}")
        found |= unbuilt(sub)
    return found

async def main(url):
    config = LlmRouterConfig.model_validate({"providers": {"s": {"endpoint": url, "models": ["m"]}}})
    spec, backend = ModelCatalog(config).resolve("s/m"), LiteLLMBackend()
    await backend.warm_up(spec)
    modules, models = set(sys.modules), unbuilt()
    adapters.clear()
    await backend.complete(spec, ChatRequest([{"role": "user", "content": "hi"}]), StreamSink())
    print(len(adapters))
    print(sorted(set(sys.modules) - modules), sorted(models - unbuilt()))

with ScriptedLLM() as llm:
    anyio.run(main, llm.base_url)
"""


def test_the_warm_up_leaves_the_first_real_call_nothing_to_import_or_build() -> None:
    """What a real call loads and a mocked one does not (LiteLLM's lazy modules, pydantic models built
    on first use) is loaded by the warm-up, and the pydantic adapters the OpenAI client's parser builds
    on its first answer are built by the warm-up's call to itself: checked in a fresh process, where
    nothing else warmed it."""
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REAL_CALL], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    adapters, listed = out.stdout.strip().splitlines()[-2:]
    assert adapters == "0", f"pydantic adapters built at the first real call: {adapters}"
    imported, built = listed.split("] [")
    assert imported == "[", f"imported at the first real call: {imported}]"
    assert built == "]", f"built at the first real call: [{built}"
