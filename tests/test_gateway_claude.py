"""The real Claude Code CLI (pinned in tests/node, offline, print mode) through ``betty-mcp gateway``,
with the scripted OpenAI-compatible server as the only model behind it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from betty_mcp.llm.ledger import Ledger
from tests.conftest import OPENAPI_DIR, ROOT
from tests.fakes.gateway_process import ENV, SECRET, free_port, gateway_process, write_gateway_config
from tests.fakes.scripted_llm import Error, Reply, ScriptedLLM, ToolCalls

CLAUDE = ROOT / "tests" / "node" / "node_modules" / ".bin" / "claude"
TOKEN = "gw-session-token-abcdef0123456789"


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
def workspace_with_spec(workspace: Path) -> Path:
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / "petstore.yaml")
    return workspace


def mcp_config(workspace: Path) -> Path:
    path = workspace / "mcp.json"
    server = {"command": sys.executable, "args": ["-m", "betty_mcp", "serve", "--workspace", str(workspace)]}
    path.write_text(json.dumps({"mcpServers": {"betty": server}}))
    return path


def claude_code_env(workspace: Path) -> dict[str, str]:
    """This environment without Anthropic or Claude settings, a home of its own, offline."""
    home = workspace.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "CLAUDE"))}
    env.update(HOME=str(home), CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1", DISABLE_AUTOUPDATER="1")
    return env


def claude(
    workspace: Path, url: str, prompt: str, *args: str, key: str = TOKEN, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    assert CLAUDE.exists(), "Claude Code is installed by scripts/test (npm ci in tests/node)"
    env = claude_code_env(workspace)
    env.pop("SCRIPTED_API_KEY", None)  # Claude Code never sees an upstream key
    env.update(
        ANTHROPIC_BASE_URL=url,
        ANTHROPIC_API_KEY=key,
        MCP_CONNECTION_NONBLOCKING="0",  # wait for betty's server before the first turn, as README says
    )
    return subprocess.run(
        [str(CLAUDE), "-p", prompt, "--mcp-config", str(mcp_config(workspace)), "--strict-mcp-config", *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def rows(workspace: Path) -> list[Any]:
    with Ledger(workspace / ".betty-mcp" / "usage.sqlite") as ledger:
        return list(reversed(ledger.records()))


def tool_results(request: Any) -> list[str]:
    return [json.dumps(m.get("content")) for m in request.messages if m.get("role") == "tool"]


def test_a_plain_answer_reaches_the_scripted_model_with_its_ledger_row(
    workspace: Path, llm: ScriptedLLM
) -> None:
    """(a)"""
    write_gateway_config(workspace, llm)
    llm.script("main", Reply("Paris is the capital of France.", prompt_tokens=30, completion_tokens=7))
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(workspace, url, "What is the capital of France?")
    assert out.returncode == 0, out.stderr
    assert "Paris is the capital of France." in out.stdout
    sent = llm.requests_for("main")[0]
    assert any(t["function"]["name"] == "Agent" for t in sent.tools), "Claude Code's own tools went through"
    assert not {"context_management", "output_config"} & set(sent.body)
    row = next(r for r in rows(workspace) if r.model == "scripted/main")
    assert (row.caller, row.outcome, row.request_class) == ("gateway", "ok", "default")
    assert (row.prompt_tokens, row.completion_tokens) == (30, 7) and row.session_id


def test_the_whole_loop_through_bettys_mcp_server(workspace_with_spec: Path, llm: ScriptedLLM) -> None:
    """(b) the model asks for mcp__betty__api_validate; Claude Code calls betty; the result goes back."""
    ws = workspace_with_spec
    write_gateway_config(ws, llm)
    llm.script(
        "main",
        ToolCalls([("mcp__betty__api_validate", {"spec_path": "petstore.yaml"})]),
        Reply("The petstore spec was validated."),
    )
    with gateway_process(ws, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(ws, url, "Validate petstore.yaml", "--allowedTools", "mcp__betty__api_validate")
    assert out.returncode == 0, out.stderr
    assert "The petstore spec was validated." in out.stdout
    second = llm.requests_for("main")[1]
    results = tool_results(second)
    assert results and "valid" in results[0], second.messages[-1]


def test_an_exported_betty_agent_runs_as_a_subagent_on_its_own_model(
    workspace: Path, llm: ScriptedLLM
) -> None:
    """(c) the main model starts the exported subagent; its requests reach the model its agent rule names."""
    write_gateway_config(workspace, llm)
    exported = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "export", "claude-agents", "--out", ".claude/agents", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    files = {f["agent"]: f for f in json.loads(exported.stdout)}
    text = (workspace / ".claude" / "agents" / "betty-api-designer.md").read_text()
    assert text.startswith("---\nname: betty-api-designer\n") and "<!-- betty-agent: api.designer -->" in text
    assert files["api.designer"]["tools"] == [
        "mcp__betty__api_define",
        "mcp__betty__api_validate",
        "mcp__betty__api_compatibility",
    ]
    start = {
        "description": "Design the orders API",
        "prompt": "Design an orders API.",
        "subagent_type": "betty-api-designer",
    }
    llm.script("main", ToolCalls([("Agent", start)]), Reply("The designer finished."))
    llm.script("agentmodel", Reply("Orders API designed by the Betty subagent."))
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(workspace, url, "Design an orders API", "--allowedTools", "Agent")
    assert out.returncode == 0, out.stderr
    assert "The designer finished." in out.stdout
    sub = llm.requests_for("agentmodel")
    assert sub, [r.model for r in llm.requests]
    assert "betty-agent: api.designer" in json.dumps(sub[0].messages[0])
    assert "Orders API designed by the Betty subagent." in json.dumps(llm.requests_for("main")[1].messages)
    agent_rows = [r for r in rows(workspace) if r.agent == "api.designer"]
    assert agent_rows and agent_rows[0].model == "scripted/agentmodel"
    assert any(
        "agent primary" in h["message"] or "not configured" in h["message"] for h in agent_rows[0].fallbacks
    )


def test_a_500_before_the_first_byte_falls_back(workspace: Path, llm: ScriptedLLM) -> None:
    """(d)"""
    write_gateway_config(workspace, llm)
    llm.script("main", Error(500))
    llm.script("backup", Reply("Answered by the backup model."))
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(workspace, url, "Hello?")
    assert out.returncode == 0, out.stderr
    assert "Answered by the backup model." in out.stdout
    assert [(r.model, r.outcome) for r in rows(workspace)][:2] == [
        ("scripted/main", "server"),
        ("scripted/backup", "ok"),
    ]


def test_an_upstream_key_echoed_in_a_401_appears_in_no_output_log_or_ledger(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    """(e)"""
    write_gateway_config(workspace, llm)
    llm.script("*", Error(401, echo_auth=True))
    log = tmp_path / "gateway.log"
    with (
        log.open("w") as errors,
        gateway_process(workspace, "--token", TOKEN, "--log-level", "debug", env=ENV, stderr=errors) as (
            url,
            _,
        ),
    ):
        out = claude(workspace, url, "Hello?")
    assert SECRET in llm.requests[0].headers["authorization"], "the provider did get the key"
    assert out.returncode != 0
    everything = [
        out.stdout,
        out.stderr,
        log.read_text(),
        (workspace / ".betty-mcp" / "usage.sqlite").read_bytes().decode("latin-1"),
    ]
    assert all(SECRET not in text for text in everything)
    assert len(llm.requests) == 1, "not retried: the gateway said x-should-retry: false"


def test_a_budget_refusal_is_shown_and_not_retried(workspace: Path, llm: ScriptedLLM) -> None:
    """(f)"""
    write_gateway_config(workspace, llm, limits={"budgets": {"per_call_usd": 0.000001}})
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(workspace, url, "Hello?")
    assert out.returncode != 0
    assert "budget" in (out.stdout + out.stderr)
    assert llm.requests == []
    refused = [r for r in rows(workspace) if r.outcome == "budget"]
    assert len(refused) == 1, "Claude Code asked once: the refusal is not retried in a loop"


def test_streamed_tool_arguments_split_across_many_chunks_arrive_whole(
    workspace: Path, llm: ScriptedLLM
) -> None:
    """(g) a tool call whose arguments come in 30+ pieces reaches betty's tool whole."""
    folder = "specs for the many words test of the gateway streaming path with pieces"
    (workspace / folder).mkdir()
    shutil.copy(OPENAPI_DIR / "petstore.yaml", workspace / folder / "petstore.yaml")
    write_gateway_config(workspace, llm)
    arguments = {"spec_path": f"{folder}/petstore.yaml", "rule_set": "minimal"}
    llm.script(
        "main",
        ToolCalls([("mcp__betty__api_validate", arguments)], arg_pieces=40),
        Reply("Validated."),
    )
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        out = claude(workspace, url, "Validate it", "--allowedTools", "mcp__betty__api_validate")
    assert out.returncode == 0, out.stderr
    second = llm.requests_for("main")[1]
    call = next(m for m in second.messages if m.get("role") == "assistant")["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == arguments
    assert '\\"valid\\"' in tool_results(second)[0] or "valid" in tool_results(second)[0]
    assert "error" not in tool_results(second)[0].lower()[:200]


def test_count_tokens_answers_for_claude_code_requests(workspace: Path, llm: ScriptedLLM) -> None:
    """(h) the endpoint Claude Code uses to size its context."""
    write_gateway_config(workspace, llm)
    request = {
        "model": "claude-opus-4-8",
        "messages": [{"role": "user", "content": "count these words please"}],
    }
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        r = httpx.post(
            url + "/v1/messages/count_tokens?beta=true", json=request, headers={"x-api-key": TOKEN}
        )
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    assert llm.requests == []


def test_host_origin_and_token_checks_hold_for_claude_code(workspace: Path, llm: ScriptedLLM) -> None:
    """(i) a wrong token is refused (Claude Code reports it); Host and Origin are checked."""
    write_gateway_config(workspace, llm)
    with gateway_process(workspace, "--token", TOKEN, env=ENV) as (url, _):
        wrong = claude(workspace, url, "Hello?", key="not-the-token")
        good = {"x-api-key": TOKEN}
        host = httpx.post(
            url + "/v1/messages", json={"messages": []}, headers={**good, "host": "attacker.example:80"}
        )
        origin = httpx.post(
            url + "/v1/messages",
            json={"messages": []},
            headers={**good, "origin": "https://attacker.example"},
        )
    assert wrong.returncode != 0 and llm.requests == []
    assert host.status_code == 421 and origin.status_code == 403


PROMPT = ["-p", "Validate petstore.yaml", "--allowedTools", "mcp__betty__api_validate"]


SLOW_SERVE = """import sys, time
if "serve" in sys.argv:  # betty's MCP server, not the gateway nor betty-mcp claude
    time.sleep(4)
"""


@pytest.mark.parametrize("slow_server", [False, True], ids=["server", "slow-starting-server"])
def test_betty_mcp_claude_runs_claude_code_through_a_session_gateway(
    workspace_with_spec: Path, llm: ScriptedLLM, tmp_path: Path, slow_server: bool
) -> None:
    """(4) one command: the gateway on a free port with a session token, betty's MCP server, claude.
    Claude Code's first turn waits for betty's server, however slowly it starts."""
    ws = workspace_with_spec
    write_gateway_config(ws, llm)
    llm.script(
        "main",
        ToolCalls([("mcp__betty__api_validate", {"spec_path": "petstore.yaml"})]),
        Reply("Validated through betty-mcp claude."),
    )
    env = {**claude_code_env(ws), **ENV}
    if slow_server:
        (tmp_path / "slow").mkdir()
        (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_SERVE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "slow"), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "betty_mcp",
            "claude",
            "--claude",
            str(CLAUDE),
            "--workspace",
            str(ws),
            *PROMPT,
        ],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    assert "Validated through betty-mcp claude." in out.stdout
    result = tool_results(llm.requests_for("main")[1])[0]
    assert "valid" in result and "error" not in result.lower()[:200], result
    assert SECRET not in out.stdout + out.stderr
    assert all(r.caller == "gateway" for r in rows(ws))


def test_betty_mcp_claude_passes_the_exit_code_and_stops_the_gateway(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_gateway_config(workspace, llm)
    fake = workspace / "fake-claude"
    fake.write_text(
        "#!" + sys.executable + "\n"
        "import os, sys, json, urllib.request\n"
        "url = os.environ['ANTHROPIC_BASE_URL']\n"
        "key = {'x-api-key': os.environ['ANTHROPIC_API_KEY']}\n"
        "status = urllib.request.urlopen(urllib.request.Request(url + '/health', headers=key)).status\n"
        "print(json.dumps({'url': url, 'health': status, 'args': sys.argv[1:]}))\n"
        "sys.exit(3)\n"
    )
    fake.chmod(0o755)
    out = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "claude", "--claude", str(fake), "--no-mcp", "--", "-p", "hi"],
        cwd=workspace,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stderr
    seen = json.loads(out.stdout)
    assert (
        seen["health"] == 200 and seen["args"] == ["-p", "hi"] and seen["url"].startswith("http://127.0.0.1:")
    )
    with pytest.raises(httpx.HTTPError):
        httpx.get(seen["url"] + "/health", timeout=2)


def test_export_ccr_writes_a_config_claude_code_router_runs_with(workspace: Path, llm: ScriptedLLM) -> None:
    """(5) the exported config.json drives the real claude-code-router to the same models by class."""
    ccr = ROOT / "tests" / "node" / "node_modules" / ".bin" / "ccr"
    assert ccr.exists(), "claude-code-router is installed by scripts/test (npm ci in tests/node)"
    write_gateway_config(workspace, llm)
    home = workspace.parent / "ccr-home"
    port = free_port()
    config = home / ".claude-code-router" / "config.json"
    subprocess.run(
        [sys.executable, "-m", "betty_mcp", "export", "ccr", "--out", str(config), "--port", str(port)],
        cwd=workspace,
        check=True,
        capture_output=True,
    )
    exported = json.loads(config.read_text())
    assert (
        exported["Router"]["default"] == "scripted,main"
        and exported["Router"]["background"] == "scripted,small"
    )
    assert SECRET not in config.read_text() and exported["Providers"][0]["api_key"] == "$SCRIPTED_API_KEY"
    env = {**os.environ, **ENV, "HOME": str(home), "CI": "true"}
    proc = subprocess.Popen(
        [str(ccr), "start"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/v1/messages"
        request = {
            "model": "claude-haiku-4-5",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "hi"}],
        }
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(url, json=request, timeout=10)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        assert [r.model for r in llm.requests] == ["small"]
        assert llm.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    finally:
        subprocess.run([str(ccr), "stop"], env=env, capture_output=True, timeout=30)
        proc.terminate()
        proc.wait(timeout=10)
