"""The scripted fake LLM server, driven through the real LiteLLM HTTP path (no real provider)."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

import litellm
import openai

from tests.fakes.scripted_llm import (
    ContextLengthError,
    Disconnect,
    Error,
    Hang,
    Raw,
    Reply,
    ScriptedLLM,
    Slow,
    ToolCalls,
    parse_step,
    remote_requests,
    remote_reset,
    remote_script,
    step_to_dict,
)

litellm.suppress_debug_info = True
litellm.disable_hf_tokenizer_download = True
litellm.turn_off_message_logging = True

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-0123456789abcdef"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "validate my spec please"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "api_validate",
            "description": "Validate an OpenAPI spec",
            "parameters": {"type": "object", "properties": {"spec_path": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


async def call(llm: ScriptedLLM, model: str = "gpt-x", model_prefix: str = "openai", **kw: Any) -> Any:
    args: dict[str, Any] = {
        "model": f"{model_prefix}/{model}",
        "messages": MESSAGES,
        "api_base": llm.base_url + "/v1",
        "api_key": KEY,
        "max_retries": 0,
        "timeout": 5,
    }
    args.update(kw)
    return await litellm.acompletion(**args)


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def get_json(url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


# --------------------------------------------------------------------------- OpenAI-compatible


@pytest.mark.anyio
async def test_text_reply_with_given_and_computed_usage(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", Reply("hello there", prompt_tokens=11, completion_tokens=7), Reply("one two three"))
    r = await call(llm)
    assert r.choices[0].message.content == "hello there"
    assert r.choices[0].finish_reason == "stop"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (11, 7, 18)
    assert r.id == "chatcmpl-1" and r.created == llm.created and r.model == "gpt-x"
    r = await call(llm)
    # computed: words in all message contents (2 + 4) and in the answer (3)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (6, 3)
    # queue empty: the default answer
    r = await call(llm)
    assert r.choices[0].message.content == "ok"


@pytest.mark.anyio
async def test_tool_calls(llm: ScriptedLLM) -> None:
    llm.script(
        "gpt-x",
        ToolCalls(
            [("api_validate", {"spec_path": "a.yaml"}), ("api_define", {"name": "pets"})], text="checking"
        ),
    )
    r = await call(llm, tools=TOOLS)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.content == "checking"
    assert [tc.id for tc in msg.tool_calls] == ["call_1", "call_2"]
    assert msg.tool_calls[0].function.name == "api_validate"
    assert json.loads(msg.tool_calls[0].function.arguments) == {"spec_path": "a.yaml"}
    assert json.loads(msg.tool_calls[1].function.arguments) == {"name": "pets"}


@pytest.mark.anyio
async def test_stream_text_with_usage(llm: ScriptedLLM) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    llm.script("gpt-x", Reply(text, prompt_tokens=5))
    chunks = await collect(await call(llm, stream=True, stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 3
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert rebuilt.choices[0].message.content == text
    assert rebuilt.choices[0].finish_reason == "stop"
    assert (rebuilt.usage.prompt_tokens, rebuilt.usage.completion_tokens) == (5, 9)


@pytest.mark.anyio
async def test_stream_tool_calls(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", ToolCalls([("api_validate", {"spec_path": "specs/pets.yaml"}), ("noop", {})]))
    chunks = await collect(await call(llm, tools=TOOLS, stream=True, stream_options={"include_usage": True}))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    calls = rebuilt.choices[0].message.tool_calls
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_1", "api_validate", {"spec_path": "specs/pets.yaml"}),
        ("call_2", "noop", {}),
    ]


@pytest.mark.anyio
async def test_slow_stream_chunks_arrive_over_time(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", Reply("a b c d e f g h", chunk_delay=0.1))
    start = time.monotonic()
    arrivals = []
    async for _ in await call(llm, stream=True):
        arrivals.append(time.monotonic() - start)
    assert arrivals[0] < 0.3
    assert arrivals[-1] >= 0.4  # 6+ events, 0.1 s apart


@pytest.mark.anyio
async def test_error_details_come_through(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", Error(401, echo_auth=True), Error(429, retry_after=2), ContextLengthError())
    with pytest.raises(litellm.AuthenticationError) as auth:
        await call(llm)
    assert KEY in str(auth.value)  # the leak a redaction layer must scrub
    assert auth.value.status_code == 401

    with pytest.raises(litellm.RateLimitError) as rate:
        await call(llm)
    assert rate.value.response.headers["retry-after"] == "2"

    with pytest.raises(litellm.ContextWindowExceededError) as ctx:
        await call(llm)
    assert "maximum context length is 8192 tokens" in str(ctx.value)
    assert isinstance(ctx.value, litellm.BadRequestError)


# What LiteLLM 1.110.2 raises for each scripted failure (openai-style, ollama_chat).
ERROR_TABLE: list[tuple[Any, type, type]] = [
    (Error(400), litellm.BadRequestError, litellm.BadRequestError),
    (Error(401), litellm.AuthenticationError, litellm.AuthenticationError),
    (Error(403), litellm.APIError, litellm.PermissionDeniedError),  # openai-style 403: plain APIError
    (Error(404), litellm.NotFoundError, litellm.NotFoundError),
    (Error(408), litellm.Timeout, litellm.Timeout),
    (Error(422), litellm.BadRequestError, litellm.BadRequestError),
    (Error(429, retry_after=1), litellm.RateLimitError, litellm.RateLimitError),
    (Error(500), litellm.InternalServerError, litellm.InternalServerError),
    (Error(502), litellm.BadGatewayError, litellm.BadGatewayError),  # not an InternalServerError
    (Error(503), litellm.ServiceUnavailableError, litellm.ServiceUnavailableError),  # idem
    (Error(504), litellm.Timeout, litellm.Timeout),
    (ContextLengthError(), litellm.ContextWindowExceededError, litellm.BadRequestError),
    (Disconnect(), litellm.InternalServerError, litellm.APIConnectionError),
    (Raw(200, "{not json"), litellm.InternalServerError, litellm.APIConnectionError),
]


@pytest.mark.anyio
@pytest.mark.parametrize("provider", ["openai", "ollama_chat"])
async def test_error_mapping(llm: ScriptedLLM, provider: str) -> None:
    base = llm.base_url + ("/v1" if provider == "openai" else "")
    for step, openai_exc, ollama_exc in ERROR_TABLE:
        llm.script("e", step)
        expected = openai_exc if provider == "openai" else ollama_exc
        with pytest.raises(openai.APIError) as info:
            await call(llm, model="e", model_prefix=provider, api_base=base)
        assert type(info.value) is expected, (step, type(info.value))


@pytest.mark.anyio
async def test_slow_reply_times_out(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", Slow(3, then=Reply("late")), Reply("fast", delay=0.05))
    start = time.monotonic()
    with pytest.raises(litellm.Timeout):
        await call(llm, timeout=0.5)
    assert time.monotonic() - start < 1.5
    assert not issubclass(litellm.Timeout, litellm.APIConnectionError)
    r = await call(llm, timeout=0.5)  # the server is still responsive
    assert r.choices[0].message.content == "fast"


@pytest.mark.anyio
async def test_hang_times_out_and_server_shuts_down_fast() -> None:
    with ScriptedLLM() as llm:
        llm.script("gpt-x", Hang())
        start = time.monotonic()
        with pytest.raises(litellm.Timeout):
            await call(llm, timeout=0.5)
        assert time.monotonic() - start < 1.5
        stop_start = time.monotonic()
    assert time.monotonic() - stop_start < 0.5


def test_hanging_connection_does_not_block_shutdown() -> None:
    llm = ScriptedLLM().start()
    llm.script("*", Hang())
    sock = socket.create_connection(("127.0.0.1", llm.port))
    body = json.dumps({"model": "m", "messages": []}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    llm.wait_for_requests(1)
    start = time.monotonic()
    llm.stop()
    assert time.monotonic() - start < 0.5
    sock.settimeout(2)
    assert sock.recv(100) == b""  # closed without an answer
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", llm.port), timeout=0.5)


@pytest.mark.anyio
async def test_queues_wildcard_default_and_strict_models() -> None:
    with ScriptedLLM(default=Reply("fallback")) as llm:
        llm.script("a", Reply("from a"))
        llm.script("*", Reply("from star"))
        assert (await call(llm, "a")).choices[0].message.content == "from a"
        assert (await call(llm, "a")).choices[0].message.content == "from star"
        assert (await call(llm, "b")).choices[0].message.content == "fallback"
        assert llm.pending() == {}
    with ScriptedLLM(strict_models=True, models=["known"]) as llm:
        assert (await call(llm, "known")).choices[0].message.content == "ok"
        with pytest.raises(litellm.NotFoundError):
            await call(llm, "unknown")


@pytest.mark.anyio
async def test_requests_are_recorded(llm: ScriptedLLM) -> None:
    llm.script("primary", Error(500))
    llm.script("backup", Reply("saved"))
    with pytest.raises(litellm.InternalServerError):
        await call(llm, "primary", tools=TOOLS)
    await call(llm, "backup", tools=TOOLS)
    first, second = llm.requests
    assert (first.path, first.model, first.step) == ("/v1/chat/completions", "primary", "error")
    assert second.model == "backup" and second.step == "reply"
    assert first.body["messages"] == MESSAGES and second.messages == MESSAGES
    assert [t["function"]["name"] for t in second.tools] == ["api_validate"]
    assert first.headers["Authorization"] == f"Bearer {KEY}" == first.headers["authorization"]
    assert first.time <= second.time <= time.monotonic()
    assert llm.requests_for("backup") == [second]
    llm.reset()
    assert llm.requests == []


def test_models_tags_and_legacy_completions(llm: ScriptedLLM) -> None:
    llm.script("gpt-x", Reply("legacy text"))
    assert [m["id"] for m in get_json(llm.base_url + "/v1/models")["data"]] == ["gpt-x"]
    assert [m["name"] for m in get_json(llm.base_url + "/api/tags")["models"]] == ["gpt-x"]
    out = get_json(llm.base_url + "/v1/completions", {"model": "gpt-x", "prompt": "say it"})
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == "legacy text"
    assert out["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_steps_from_dicts_round_trip() -> None:
    steps = [
        Reply("hi", prompt_tokens=3, chunk_delay=0.01),
        ToolCalls([("t", {"a": 1})], text="x"),
        Error(429, retry_after=1.5, echo_auth=True),
        ContextLengthError(max_tokens=4096, tokens=5000),
        Slow(0.2, then=Error(500)),
        Hang(seconds=1),
        Disconnect(),
        Raw(200, "{not json"),
    ]
    for step in steps:
        assert parse_step(json.loads(json.dumps(step_to_dict(step)))) == step
    assert parse_step("plain") == Reply("plain")
    assert parse_step({"text": "t"}) == Reply("t")
    assert parse_step({"type": "tool_calls", "calls": [["n", '{"k": 2}']]}) == ToolCalls([("n", {"k": 2})])
    assert parse_step({"kind": "slow", "seconds": 1}) == Slow(1, Reply("ok"))
    with pytest.raises(ValueError):
        parse_step({"kind": "nope"})


# --------------------------------------------------------------------------- Ollama


@pytest.mark.anyio
async def test_ollama_chat(llm: ScriptedLLM) -> None:
    llm.script(
        "llama3",
        Reply("hello from ollama", prompt_tokens=4, completion_tokens=3),
        ToolCalls([("api_validate", {"spec_path": "a.yaml"})]),
        Reply("streamed ollama answer here"),
        ToolCalls([("api_validate", {"spec_path": "b.yaml"})]),
        Error(500, message="ollama broke"),
    )
    kw: dict[str, Any] = {
        "model": "ollama_chat/llama3",
        "messages": MESSAGES,
        "api_base": llm.base_url,
        "timeout": 5,
    }
    r = await litellm.acompletion(**kw)
    assert r.choices[0].message.content == "hello from ollama"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 3)
    r = await litellm.acompletion(**kw, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"spec_path": "a.yaml"}

    chunks = await collect(await litellm.acompletion(**kw, stream=True))
    assert len(chunks) >= 3
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert rebuilt.choices[0].message.content == "streamed ollama answer here"
    assert rebuilt.usage.completion_tokens == 4

    chunks = await collect(await litellm.acompletion(**kw, tools=TOOLS, stream=True))
    rebuilt = litellm.stream_chunk_builder(chunks, messages=MESSAGES)
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    assert rebuilt.choices[0].message.tool_calls[0].function.name == "api_validate"

    with pytest.raises(litellm.InternalServerError, match="ollama broke"):
        await litellm.acompletion(**kw)
    assert [r.path for r in llm.requests] == ["/api/chat"] * 5
    assert [r.body.get("stream") for r in llm.requests] == [False, False, True, True, False]


# --------------------------------------------------------------------------- standalone process


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError("no output from scripted_llm")
    return proc.stdout.readline()


@pytest.mark.anyio
async def test_standalone_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"from-file": [{"kind": "reply", "text": "loaded from file"}]}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.scripted_llm", "--port", "0", "--script", str(script)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _readline(proc, 10)
        assert line.startswith("READY "), line
        base = f"http://127.0.0.1:{int(line.split()[1])}"
        remote_script(base, "remote", Reply("pushed at run time"), Error(429, retry_after=1))
        kw: dict[str, Any] = {
            "messages": MESSAGES,
            "api_base": base + "/v1",
            "api_key": KEY,
            "max_retries": 0,
            "timeout": 5,
        }
        r = await litellm.acompletion(model="openai/remote", **kw)
        assert r.choices[0].message.content == "pushed at run time"
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(model="openai/remote", **kw)
        r = await litellm.acompletion(model="openai/from-file", **kw)
        assert r.choices[0].message.content == "loaded from file"
        seen = remote_requests(base)
        assert [(s["model"], s["step"]) for s in seen] == [
            ("remote", "reply"),
            ("remote", "error"),
            ("from-file", "reply"),
        ]
        assert seen[0]["body"]["messages"] == MESSAGES
        assert seen[0]["headers"]["authorization"] == f"Bearer {KEY}"
        assert seen[0]["time"] <= time.monotonic()  # CLOCK_MONOTONIC is shared across processes
        remote_reset(base)
        assert remote_requests(base) == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""
