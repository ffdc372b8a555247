"""agent_run and the run tools through the real MCP server, with the model behind the real LiteLLM
HTTP path (the scripted OpenAI-compatible server), and once against a real local model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import yaml

from tests.conftest import ERAS, alive, stdio_client
from tests.fakes.scripted_llm import Error, Hang, Reply, ScriptedLLM, ToolCalls

pytestmark = pytest.mark.anyio


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def setup_agent(
    workspace: Path, llm: ScriptedLLM, *, skills: list[str], mode: str = "iterative"
) -> list[str]:
    """betty.yaml pointing at the scripted provider, and an agent allowed ``skills``; returns server flags."""
    (workspace / "betty.yaml").write_text(
        yaml.safe_dump(
            {
                "llm_router": {
                    "embedded_fallback": False,
                    "providers": {
                        "scripted": {
                            "endpoint": llm.base_url,
                            "models": [
                                {
                                    "name": "main",
                                    "supports_tools": True,
                                    "input_cost_per_mtok": 1.0,
                                    "output_cost_per_mtok": 2.0,
                                },
                                {"name": "backup", "supports_tools": True},
                            ],
                        }
                    },
                }
            }
        )
    )
    agents = workspace / "agents" / "demo.echoer"
    agents.mkdir(parents=True)
    (agents / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "demo.echoer",
                "version": "0.1.0",
                "description": "Echoes things with skills.",
                "capabilities": ["echo"],
                "skills_available": skills,
                "reasoning_mode": mode,
                "status": "active",
                "error_handling": {"max_retries": 2, "timeout_seconds": 60},
                "llm_config": {
                    "primary_provider": "scripted",
                    "primary_model": "main",
                    "fallback_provider": "scripted",
                    "fallback_model": "backup",
                },
            }
        )
    )
    return ["--agents-dir", str(workspace / "agents")]


@pytest.mark.parametrize("mode", ERAS)
async def test_agent_run_completes_with_steps_tokens_cost_and_progress(
    workspace: Path, llm: ScriptedLLM, mode: str
) -> None:
    flags = setup_agent(workspace, llm, skills=["test.echo"])
    llm.script(
        "main",
        ToolCalls([("test_echo", {"message": "hi", "shout": True})], prompt_tokens=50, completion_tokens=10),
        Reply("The echo said HI.", prompt_tokens=80, completion_tokens=5),
    )
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with stdio_client(workspace, *flags, mode=mode) as client:
        result = await client.call_tool(
            "agent_run", {"agent": "demo.echoer", "task": "Echo hi loudly."}, progress_callback=on_progress
        )
        out = result.structured_content
        trace = await client.read_resource(f"betty://runs/{out['run_id']}")
    assert not result.is_error, result.content[0].text
    assert out["status"] == "completed" and out["answer"] == "The echo said HI."
    assert [(s["kind"], s["name"], s["ok"]) for s in out["steps"]] == [
        ("llm", "scripted/main", True),
        ("skill", "test.echo", True),
        ("llm", "scripted/main", True),
    ]
    assert out["totals"]["tokens"] == 145
    assert out["totals"]["cost_usd"] == pytest.approx(130 * 1e-6 + 15 * 2e-6)
    assert "step 2: test.echo ok" in messages
    tool_message = llm.requests_for("main")[1].messages[-1]
    assert tool_message["role"] == "tool" and '"message": "HI"' in tool_message["content"]
    events = [json.loads(line)["event"] for line in trace.contents[0].text.splitlines()]
    assert events[0] == "run_started" and events[-1] == "run_finished"


async def test_background_run_lifecycle_and_the_runs_cli(workspace: Path, llm: ScriptedLLM) -> None:
    flags = setup_agent(workspace, llm, skills=["test.sleep"])
    llm.script("main", ToolCalls([("test_sleep", {"seconds": 1.5})]), Reply("slept"))
    async with stdio_client(workspace, *flags) as client:
        started = await client.call_tool(
            "agent_run", {"agent": "demo.echoer", "task": "sleep", "wait": False}
        )
        run_id = started.structured_content["run_id"]
        assert started.structured_content["status"] == "running"
        status = (await client.call_tool("run_status", {"run_id": run_id})).structured_content
        assert status["status"] == "running"
        result = (
            await client.call_tool("run_result", {"run_id": run_id, "wait_seconds": 30})
        ).structured_content
        assert result["status"] == "completed" and result["answer"] == "slept"
        done = (await client.call_tool("run_status", {"run_id": run_id})).structured_content
        assert done["status"] == "completed" and done["steps"] == 3
        unknown = await client.call_tool("run_status", {"run_id": "nope"})
        assert unknown.is_error and "unknown run 'nope'" in unknown.content[0].text
    listed = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "runs", "list", "--json"],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert [(r["run_id"], r["status"]) for r in json.loads(listed.stdout)] == [(run_id, "completed")]
    shown = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "runs", "show", run_id],
        cwd=workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "skill_result" in shown.stdout and "run_finished" in shown.stdout


async def test_cancelling_a_background_run_kills_its_skill(
    workspace: Path, llm: ScriptedLLM, tmp_path: Path
) -> None:
    flags = setup_agent(workspace, llm, skills=["test.sleep"])
    llm.script("main", ToolCalls([("test_sleep", {"seconds": 60})]), Reply("never"))
    pidfile = tmp_path / "pids"
    async with stdio_client(workspace, *flags, env={"BETTY_TEST_PIDFILE": str(pidfile)}) as client:
        run_id = (
            await client.call_tool("agent_run", {"agent": "demo.echoer", "task": "t", "wait": False})
        ).structured_content["run_id"]
        with anyio.fail_after(20):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await anyio.sleep(0.05)
        cancelled = (await client.call_tool("run_cancel", {"run_id": run_id})).structured_content
        assert cancelled["status"] == "cancelled"
        pids = [int(p) for p in pidfile.read_text().split()]
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert not any(alive(p) for p in pids)
        final = (await client.call_tool("run_result", {"run_id": run_id})).structured_content
        assert final["status"] == "cancelled"


async def test_a_model_failure_mid_run_continues_on_the_fallback_model(
    workspace: Path, llm: ScriptedLLM
) -> None:
    flags = setup_agent(workspace, llm, skills=["test.echo"])
    llm.script("main", ToolCalls([("test_echo", {"message": "one"})]), Error(503))
    llm.script("backup", Reply("finished on backup"))
    async with stdio_client(workspace, *flags) as client:
        out = (await client.call_tool("agent_run", {"agent": "demo.echoer", "task": "t"})).structured_content
    assert out["status"] == "completed" and out["answer"] == "finished on backup"
    assert [s["name"] for s in out["steps"]] == ["scripted/main", "test.echo", "scripted/backup"]
    assert len(llm.requests_for("backup")[0].messages) > 2, "the run went on; it did not restart"


async def test_hanging_model_and_bad_agents_end_cleanly(workspace: Path, llm: ScriptedLLM) -> None:
    flags = setup_agent(workspace, llm, skills=["test.echo", "no.such.skill"])
    llm.script("main", Hang())
    async with stdio_client(workspace, *flags) as client:
        unknown = await client.call_tool("agent_run", {"agent": "nobody", "task": "t"})
        assert unknown.is_error and "unknown agent 'nobody'" in unknown.content[0].text
        timed = await client.call_tool(
            "agent_run", {"agent": "demo.echoer", "task": "t", "limits": {"timeout_seconds": 2}}
        )
        assert timed.is_error and timed.structured_content["status"] == "timed_out"
        agents = (await client.call_tool("agents_list", {})).structured_content["agents"]
    demo = next(a for a in agents if a["name"] == "demo.echoer")
    assert demo["missing_skills"] == ["no.such.skill"] and demo["llm_config"]["primary_model"] == "main"
    assert {"api.designer", "api.analyzer", "skill.author"} <= {a["name"] for a in agents}


@pytest.mark.timeout(240)  # the model server's start and the run's own 90 s timeout, on a busy CPU
async def test_agent_run_against_a_real_local_model_ends_cleanly(workspace: Path) -> None:
    """Structure only: a 270M base model rarely plans well; the run must end within its limits."""
    from tests.test_local_model import start_local_server

    with start_local_server(workspace.parent) as base:
        (workspace / "betty.yaml").write_text(
            yaml.safe_dump(
                {
                    "llm_router": {
                        "default_provider": "local",
                        "embedded_fallback": False,
                        "providers": {
                            "local": {
                                "endpoint": base,
                                "models": [{"name": "gemma-3-270m", "supports_tools": False}],
                            }
                        },
                    }
                }
            )
        )
        async with stdio_client(workspace) as client:
            result = await client.call_tool(
                "agent_run",
                {
                    "agent": "api.analyzer",
                    "task": "Validate petstore.yaml",
                    "model": "local/gemma-3-270m",
                    "limits": {"max_steps": 3, "timeout_seconds": 90, "max_tokens": 4000},
                    "wait_seconds": 100,  # past the run's own timeout: a busy CPU slows the model down
                },
            )
            out = result.structured_content
            trace = await client.read_resource(f"betty://runs/{out['run_id']}")
    assert out["status"] in {"completed", "failed", "budget_exceeded", "timed_out"}
    assert (
        out["steps"] and out["steps"][0]["kind"] == "llm" and out["steps"][0]["name"] == "local/gemma-3-270m"
    )
    events = [json.loads(line) for line in trace.contents[0].text.splitlines()]
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == out["status"]


async def test_background_runs_survive_the_client_disconnecting_over_http(
    workspace: Path, llm: ScriptedLLM
) -> None:
    from mcp.client import Client

    from tests.conftest import http_server

    flags = setup_agent(workspace, llm, skills=["test.sleep"])
    llm.script("main", ToolCalls([("test_sleep", {"seconds": 1})]), Reply("done after the client left"))
    with http_server(workspace, *flags) as url:
        async with Client(url) as first:
            run_id = (
                await first.call_tool("agent_run", {"agent": "demo.echoer", "task": "t", "wait": False})
            ).structured_content["run_id"]
        async with Client(url) as second:
            result = await second.call_tool("run_result", {"run_id": run_id, "wait_seconds": 30})
    assert result.structured_content["status"] == "completed"
    assert result.structured_content["answer"] == "done after the client left"


def test_the_run_command_shows_progress_and_sets_the_exit_code(workspace: Path, llm: ScriptedLLM) -> None:
    flags = setup_agent(workspace, llm, skills=["test.echo"])
    llm.script("main", ToolCalls([("test_echo", {"message": "cli"})]), Reply("echoed cli"), Error(401))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "betty_mcp",
                "run",
                "demo.echoer",
                "echo cli",
                *args,
                *flags,
                "--skills-dir",
                str(Path(__file__).parent / "fixtures" / "skills"),
            ],
            capture_output=True,
            text=True,
            cwd=workspace,
            timeout=120,
        )

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "echoed cli"
    assert "step 2: test.echo ok" in ok.stderr and "completed" in ok.stderr
    failed = run("--json")
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["status"] == "failed"


async def test_a_wait_that_runs_out_returns_the_partial_result(workspace: Path, llm: ScriptedLLM) -> None:
    flags = setup_agent(workspace, llm, skills=["test.sleep"])
    llm.script("main", Reply("warm"), ToolCalls([("test_sleep", {"seconds": 3})]), Reply("slept"))
    async with stdio_client(workspace, *flags) as client:
        await client.call_tool("llm_query", {"prompt": "warm", "model": "scripted/main"})  # LiteLLM loaded
        partial = await client.call_tool(
            "agent_run", {"agent": "demo.echoer", "task": "t", "wait_seconds": 1}
        )
        out = partial.structured_content
        assert not partial.is_error and out["status"] == "running", out
        assert [s["kind"] for s in out["steps"]] == ["llm"], "the model turn so far; the skill still runs"
        final = await client.call_tool("run_result", {"run_id": out["run_id"], "wait_seconds": 30})
    assert final.structured_content["status"] == "completed"
