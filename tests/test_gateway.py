"""The Anthropic-compatible gateway, driven by an Anthropic-format HTTP client (httpx) against the
scripted OpenAI-compatible upstream: translation, routing by request class, fallbacks before the first
byte, budgets, ledger rows, keys and security."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from betty_mcp.llm.ledger import Ledger
from tests.fakes.gateway_process import (
    ENV,
    SECRET,
    gateway_process,
    in_process_gateway,
    write_gateway_config,
)
from tests.fakes.scripted_llm import Error, Raw, Reply, ScriptedLLM, ToolCalls

CLIENT_KEY = "sk-ant-client-own-key-should-stay-here-0000"
TOOLS = [
    {
        "name": "mcp__betty__api_validate",
        "description": "Validate an OpenAPI spec",
        "input_schema": {"type": "object", "properties": {"spec_path": {"type": "string"}}},
    }
]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-opus-4-8",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Say hello"}],
        **extra,
    }


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The SSE events of a streamed answer, each checked against its ``event:`` line."""
    out = []
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            event = json.loads(lines["data"])
            assert lines.get("event") == event["type"]
            out.append(event)
    return out


def ledger_rows(workspace: Path) -> list[Any]:
    with Ledger(workspace / ".betty-mcp" / "usage.sqlite") as ledger:
        return list(reversed(ledger.records()))


def post(url: str, payload: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/messages?beta=true", json=payload, headers=headers, timeout=30)


def test_a_plain_answer_is_translated_both_ways_and_accounted(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    llm.script("main", Reply("Hello there.", prompt_tokens=12, completion_tokens=4))
    with in_process_gateway(workspace) as url:
        r = post(
            url,
            body(system=[{"type": "text", "text": "Be brief."}]),
            **{"x-api-key": CLIENT_KEY, "x-claude-code-session-id": "sess-1"},
        )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["content"] == [{"type": "text", "text": "Hello there."}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"]["input_tokens"] == 12 and answer["usage"]["output_tokens"] == 4
    assert r.headers["x-betty-model"] == "scripted/main"
    sent = llm.requests_for("main")[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert sent.headers["authorization"] == f"Bearer {SECRET}", "upstream keys come from the environment"
    assert CLIENT_KEY not in json.dumps(sent.to_json()), "the client's key never goes to another provider"
    (row,) = ledger_rows(workspace)
    assert (row.caller, row.session_id, row.request_class, row.model) == (
        "gateway",
        "sess-1",
        "default",
        "scripted/main",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.outcome) == (12, 4, "ok")
    assert row.cost_usd == pytest.approx(12 * 2e-6 + 4 * 6e-6) and row.latency_ms > 0


def test_fields_no_provider_takes_are_dropped_knowingly(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    extra = {
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "u1"},
        "top_k": 5,
    }
    with in_process_gateway(workspace) as url:
        r = post(url, body(**extra))
    assert r.status_code == 200, r.text
    sent = llm.requests_for("main")[0].body
    assert not {"context_management", "output_config", "thinking", "reasoning_effort"} & set(sent)
    assert "top_k" not in sent and sent["user"] == "u1"
    assert r.headers["x-betty-dropped"] == "context_management,output_config,top_k"


def test_tool_use_and_tool_result_round_trip(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    llm.script(
        "main", ToolCalls([("mcp__betty__api_validate", {"spec_path": "openapi.yaml"})], text="Checking.")
    )
    llm.script("main", Reply("The spec is valid."))
    with in_process_gateway(workspace) as url:
        first = post(url, body(tools=TOOLS, stream=True))
        streamed = events(first)
        use = next(
            e["content_block"]
            for e in streamed
            if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use"
        )
        arguments = "".join(
            e["delta"]["partial_json"]
            for e in streamed
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
        )
        assert use["name"] == "mcp__betty__api_validate" and json.loads(arguments) == {
            "spec_path": "openapi.yaml"
        }
        stop = next(e for e in streamed if e["type"] == "message_delta")
        assert stop["delta"]["stop_reason"] == "tool_use"
        follow = body(
            tools=TOOLS,
            messages=[
                {"role": "user", "content": "Validate openapi.yaml"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {
                            "type": "tool_use",
                            "id": use["id"],
                            "name": use["name"],
                            "input": {"spec_path": "openapi.yaml"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": use["id"],
                            "content": [{"type": "text", "text": "valid: true"}],
                        }
                    ],
                },
            ],
        )
        second = post(url, follow)
    assert second.json()["content"][0]["text"] == "The spec is valid."
    sent = llm.requests_for("main")[1]
    assert sent.tools[0]["function"]["name"] == "mcp__betty__api_validate"
    assert sent.tools[0]["function"]["parameters"]["properties"] == {"spec_path": {"type": "string"}}
    assistant = next(m for m in sent.messages if m["role"] == "assistant")
    assert assistant["tool_calls"][0]["function"]["name"] == "mcp__betty__api_validate"
    tool = next(m for m in sent.messages if m["role"] == "tool")
    assert tool["tool_call_id"] == use["id"] and "valid: true" in json.dumps(tool["content"])


def test_streamed_tool_arguments_split_across_many_chunks_arrive_whole(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_gateway_config(workspace, llm)
    words = " ".join(f"word{i}" for i in range(60))
    llm.script(
        "main",
        ToolCalls([("mcp__betty__api_validate", {"spec_path": "a.yaml", "note": words})], arg_pieces=40),
    )
    with in_process_gateway(workspace) as url:
        streamed = events(post(url, body(tools=TOOLS, stream=True)))
    pieces = [
        e["delta"]["partial_json"]
        for e in streamed
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
    ]
    assert len(pieces) >= 20
    assert json.loads("".join(pieces)) == {"spec_path": "a.yaml", "note": words}


def test_images_reach_a_model_that_takes_them(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    with in_process_gateway(workspace) as url:
        post(
            url,
            body(messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]),
        )
    content = llm.requests_for("main")[0].messages[-1]["content"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}} in [
        {k: v for k, v in part.items() if k in ("type", "image_url")} for part in content
    ] or "data:image/png;base64,iVBORw0KGgo=" in json.dumps(content)


@pytest.mark.parametrize(
    ("extra", "model", "request_class"),
    [
        ({"model": "claude-haiku-4-5-20251001"}, "small", "background"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "thinker", "think"),
        ({"thinking": {"type": "adaptive"}}, "main", "default"),
        ({"system": "You are helpful.\n<!-- betty-agent: api.designer -->"}, "agentmodel", "default"),
    ],
)
def test_requests_are_routed_by_class_and_agent(
    workspace: Path, llm: ScriptedLLM, extra: dict[str, Any], model: str, request_class: str
) -> None:
    write_gateway_config(workspace, llm)
    with in_process_gateway(workspace) as url:
        r = post(url, body(**extra))
    assert r.status_code == 200, r.text
    assert [q.model for q in llm.requests] == [model]
    assert r.headers["x-betty-request-class"] == request_class
    (row,) = ledger_rows(workspace)
    assert row.request_class == request_class and row.model == f"scripted/{model}"


def test_long_context_and_aliases_of_claude_model_names(workspace: Path, llm: ScriptedLLM) -> None:
    rules = [{"request_class": "long_context", "preferred_provider": "scripted", "preferred_model": "backup"}]
    write_gateway_config(
        workspace,
        llm,
        routing_rules=rules,
        gateway={"long_context_tokens": 500},
        aliases={"claude-sonnet-4-5": "scripted/small"},
    )
    with in_process_gateway(workspace) as url:
        long = post(url, body(messages=[{"role": "user", "content": "word " * 3000}]))
        aliased = post(url, body(model="claude-sonnet-4-5"))
    assert long.headers["x-betty-request-class"] == "long_context"
    assert [q.model for q in llm.requests] == ["backup", "small"]
    assert aliased.headers["x-betty-model"] == "scripted/small"


@pytest.mark.parametrize("stream", [False, True])
def test_a_500_before_the_first_byte_falls_back(workspace: Path, llm: ScriptedLLM, stream: bool) -> None:
    write_gateway_config(workspace, llm)
    llm.script("main", Error(500))
    llm.script("backup", Reply("from backup"))
    with in_process_gateway(workspace) as url:
        r = post(url, body(stream=stream))
    assert r.status_code == 200
    text = (
        "".join(e["delta"].get("text", "") for e in events(r) if e["type"] == "content_block_delta")
        if stream
        else r.json()["content"][0]["text"]
    )
    assert text == "from backup" and r.headers["x-betty-fallbacks"] == "1"
    rows = ledger_rows(workspace)
    assert [(x.model, x.outcome) for x in rows] == [("scripted/main", "server"), ("scripted/backup", "ok")]
    assert rows[1].fallbacks[0]["error_kind"] == "server"


def test_a_failure_after_the_first_byte_ends_the_stream_with_an_error_event(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_gateway_config(workspace, llm)
    good = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "main",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
    }
    broken = {"error": {"message": "engine died", "type": "server_error"}}
    llm.script(
        "main",
        Raw(
            200,
            f"data: {json.dumps(good)}\n\ndata: {json.dumps(broken)}\n\n",
            content_type="text/event-stream",
        ),
    )
    with in_process_gateway(workspace) as url:
        r = post(url, body(stream=True))
    streamed = events(r)
    assert r.status_code == 200 and streamed[0]["type"] == "message_start"
    assert streamed[-1]["type"] == "error" and "engine died" in streamed[-1]["error"]["message"]
    assert llm.requests_for("backup") == [], "no fallback once the client has bytes"
    (row,) = ledger_rows(workspace)
    assert row.outcome == "server"


def test_an_upstream_key_echoed_in_a_401_appears_nowhere(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    write_gateway_config(workspace, llm)
    llm.script("main", Error(401, echo_auth=True), Error(401, echo_auth=True))
    log = tmp_path / "gateway.log"
    with (
        log.open("w") as errors,
        gateway_process(workspace, "--log-level", "debug", env=ENV, stderr=errors) as (url, _),
    ):
        r = post(url, body())
        s = post(url, body(stream=True))
    assert SECRET in llm.requests[0].headers["authorization"], "the provider did get the key"
    assert r.status_code == 502 and r.headers["x-should-retry"] == "false" and s.status_code == 502
    assert r.json()["type"] == "error" and "auth" in r.json()["error"]["message"]
    assert "[REDACTED]" in r.text
    everything = [
        r.text,
        s.text,
        log.read_text(),
        (workspace / ".betty-mcp" / "usage.sqlite").read_bytes().decode("latin-1"),
    ]
    assert all(SECRET not in text for text in everything)
    assert llm.requests_for("backup") == [], "an auth error does not fall back"


def test_a_budget_refusal_is_an_anthropic_error_that_is_not_retried(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_gateway_config(workspace, llm, limits={"budgets": {"per_call_usd": 0.000001}})
    with in_process_gateway(workspace) as url:
        r = post(url, body(stream=True))
    assert r.status_code == 400 and r.headers["x-should-retry"] == "false"
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "per-call budget" in error["error"]["message"]
    assert llm.requests == []
    (row,) = ledger_rows(workspace)
    assert row.outcome == "budget" and row.caller == "gateway"


def test_count_tokens_and_health(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    with in_process_gateway(workspace) as url:
        small = httpx.post(url + "/v1/messages/count_tokens?beta=true", json=body())
        large = httpx.post(
            url + "/v1/messages/count_tokens", json=body(tools=TOOLS, system="Be brief. " * 50)
        )
        health = httpx.get(url + "/health")
        missing = httpx.post(url + "/v1/other", json={})
    assert small.status_code == 200 and 0 < small.json()["input_tokens"] < large.json()["input_tokens"]
    assert health.json() == {"status": "ok"}
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert llm.requests == [], "counting asks no model"


def test_host_origin_and_token_are_checked(workspace: Path, llm: ScriptedLLM) -> None:
    write_gateway_config(workspace, llm)
    with in_process_gateway(workspace, token="gw-token-123") as url:
        no_token = post(url, body())
        bearer = post(url, body(), authorization="Bearer gw-token-123")
        api_key = post(url, body(), **{"x-api-key": "gw-token-123"})
        wrong = post(url, body(), **{"x-api-key": "nope"})
        host = post(url, body(), host="evil.example.com", **{"x-api-key": "gw-token-123"})
        origin = post(url, body(), origin="http://evil.example.com", **{"x-api-key": "gw-token-123"})
        local_origin = post(url, body(), origin="http://localhost:3000", **{"x-api-key": "gw-token-123"})
    assert (no_token.status_code, wrong.status_code) == (401, 401)
    assert no_token.json()["error"]["type"] == "authentication_error"
    assert (bearer.status_code, api_key.status_code, local_origin.status_code) == (200, 200, 200)
    assert host.status_code == 421 and origin.status_code == 403
    assert all("gw-token-123" not in json.dumps(q.to_json()) for q in llm.requests), "the token stays here"


def test_a_bind_off_loopback_needs_a_token(workspace: Path, llm: ScriptedLLM) -> None:
    from betty_mcp.core.config import load_settings
    from betty_mcp.core.errors import ConfigError
    from betty_mcp.gateway.server import gateway_app
    from betty_mcp.services import Services

    write_gateway_config(workspace, llm)
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace))
    with pytest.raises(ConfigError, match="--token"):
        gateway_app(services, host="0.0.0.0", port=8787, token=None)
    assert gateway_app(services, host="0.0.0.0", port=8787, token="t").security.token == b"t"


def test_usage_shows_the_gateway_share(workspace: Path, llm: ScriptedLLM) -> None:
    import subprocess
    import sys

    write_gateway_config(workspace, llm)
    with in_process_gateway(workspace) as url:
        post(url, body())
    out = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "usage", "--json", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        check=True,
    )
    callers = {c["caller"]: c for c in json.loads(out.stdout)["by_caller"]}
    assert callers["gateway"]["calls"] == 1 and callers["gateway"]["share"] == 1.0
    text = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "usage", "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.startswith("gateway") and "100%" in line for line in text.splitlines())


def test_an_old_ledger_gains_the_gateway_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    from betty_mcp.llm.ledger import MIGRATIONS, UsageRecord, connect, migrate

    path = tmp_path / "usage.sqlite"
    db = connect(path)
    migrate(db, MIGRATIONS[:3])  # a ledger written before the gateway existed
    db.execute(
        "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd) "
        "VALUES ('2026-01-01T00:00:00.000000Z', 'llm_query', 'gpt-4', 'openai', 42, 0.5)"
    )
    db.close()
    with Ledger(path) as ledger:
        (old,) = ledger.records()
        assert (old.caller, old.session_id, old.request_class) == ("llm_query", None, None)
        ledger.record(
            UsageRecord(caller="gateway", model="m", provider="p", session_id="s", request_class="think")
        )
        assert ledger.records(session_id="s")[0].request_class == "think"
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in MIGRATIONS] and "m004_gateway_session_and_class" in names


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_gets_the_request_as_it_came_with_the_gateways_key(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    from tests.fakes.scripted_anthropic import ScriptedAnthropic

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-gateway-own-key-0000000000")
    with ScriptedAnthropic(text="from claude", input_tokens=21, output_tokens=5) as api:
        write_gateway_config(
            workspace,
            llm,
            providers={"anthropic": {"type": "anthropic", "endpoint": api.base_url, "models": []}},
            default_model=None,
            routing_rules=[],
        )
        extra = {"context_management": {"edits": []}, "output_config": {"effort": "high"}, "stream": stream}
        with in_process_gateway(workspace) as url:
            r = post(
                url,
                body(**extra),
                **{"x-api-key": CLIENT_KEY, "anthropic-beta": "context-management-2025-06-27"},
            )
    assert r.status_code == 200, r.text
    text = r.json()["content"][0]["text"] if not stream else json.dumps(events(r))
    assert "from claude" in text
    (sent,) = api.requests
    assert sent["path"] == "/v1/messages" and sent["body"]["context_management"] == {"edits": []}
    assert sent["headers"]["x-api-key"] == "sk-ant-gateway-own-key-0000000000", "never the client's key"
    assert sent["headers"]["anthropic-beta"] == "context-management-2025-06-27"
    (row,) = ledger_rows(workspace)
    assert (row.model, row.prompt_tokens, row.completion_tokens) == ("anthropic/claude-opus-4-8", 21, 5)


def test_passthrough_sends_the_clients_key_to_anthropic_only(workspace: Path, llm: ScriptedLLM) -> None:
    from tests.fakes.scripted_anthropic import ScriptedAnthropic

    with ScriptedAnthropic(text="with your key") as api:
        providers = {
            "anthropic": {
                "type": "anthropic",
                "endpoint": api.base_url,
                "api_key_env": "UNSET_ANTHROPIC_KEY",
            },
        }
        write_gateway_config(workspace, llm, gateway={"passthrough": True}, routing_rules=[])
        data = yaml.safe_load((workspace / "betty.yaml").read_text())
        data["llm_router"]["providers"].update(providers)
        (workspace / "betty.yaml").write_text(yaml.safe_dump(data))
        with in_process_gateway(workspace) as url:
            r = post(url, body(), **{"x-api-key": CLIENT_KEY})
            plain = post(url, body())  # no client key: Anthropic is skipped, the default answers
    assert r.json()["content"][0]["text"] == "with your key"
    assert api.requests[0]["headers"]["x-api-key"] == CLIENT_KEY
    assert plain.headers["x-betty-model"] == "scripted/main"
    assert all(CLIENT_KEY not in json.dumps(q.to_json()) for q in llm.requests)


@pytest.mark.parametrize("stream", [False, True])
def test_a_cut_answer_stops_with_max_tokens(workspace: Path, llm: ScriptedLLM, stream: bool) -> None:
    write_gateway_config(workspace, llm)
    llm.script("main", Reply("Once upon a", finish_reason="length"))
    with in_process_gateway(workspace) as url:
        r = post(url, body(stream=stream, max_tokens=3))
    if stream:
        stop = next(e for e in events(r) if e["type"] == "message_delta")["delta"]["stop_reason"]
    else:
        stop = r.json()["stop_reason"]
    assert stop == "max_tokens"
    assert llm.requests_for("main")[0].body["max_tokens"] == 3
