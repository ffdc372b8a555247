"""The server as a host sees it: a real MCP client over stdio, in both protocol eras."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import anyio
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import ERAS, alive, server_args, stdio_client

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ERAS)
async def test_tools_list_has_names_titles_and_schemas(workspace: Path, mode: str) -> None:
    async with stdio_client(workspace, mode=mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        tools = {t.name: t for t in (await client.list_tools()).tools}
    echo = tools["test_echo"]
    assert echo.title == "test.echo"
    assert echo.description.startswith("Echo the inputs back")
    assert echo.input_schema == {
        "type": "object",
        "properties": {
            "message": {"type": "string", "description": "Text to echo."},
            "times": {"type": "integer", "default": 1},
            "shout": {"type": "boolean"},
            "tags": {"type": "array"},
        },
        "required": ["message"],
        "additionalProperties": False,
    }
    assert echo.output_schema["properties"]["message"] == {"type": "string"}
    assert {"skills_list", "skill_run"} <= set(tools)
    assert "test_draft" not in tools, "draft skills are hidden by default"
    assert "broken_types" not in tools and "broken_yaml" not in tools, "broken manifests are skipped"
    for name in tools:
        assert len(f"mcp__betty__{name}") <= 64


@pytest.mark.parametrize("mode", ERAS)
async def test_valid_call_returns_structured_and_text(workspace: Path, mode: str) -> None:
    async with stdio_client(workspace, mode=mode) as client:
        result = await client.call_tool(
            "test_echo", {"message": "hi", "times": 2, "shout": True, "tags": ["a"]}
        )
    assert not result.is_error
    assert result.structured_content == {
        "ok": True,
        "status": "success",
        "message": "HI",
        "times": 2,
        "tags": ["a"],
    }
    assert json.loads(result.content[0].text) == result.structured_content


@pytest.mark.parametrize("mode", ERAS)
async def test_invalid_arguments_are_refused_before_running(workspace: Path, mode: str) -> None:
    async with stdio_client(workspace, mode=mode) as client:
        wrong_type = await client.call_tool("test_echo", {"message": "hi", "times": "two"})
        unknown = await client.call_tool("test_echo", {"message": "hi", "colour": "red"})
        missing = await client.call_tool("test_echo", {})
    assert wrong_type.is_error
    assert "argument 'times': 'two' is not of type 'integer'" in wrong_type.content[0].text
    assert unknown.is_error and "unknown argument(s) 'colour'" in unknown.content[0].text
    assert "accepted: message, times, shout, tags" in unknown.content[0].text
    assert missing.is_error and "missing required argument 'message'" in missing.content[0].text


@pytest.mark.parametrize("mode", ERAS)
async def test_unknown_tool_is_a_clear_protocol_error(workspace: Path, mode: str) -> None:
    async with stdio_client(workspace, mode=mode) as client:
        with pytest.raises(MCPError, match="Unknown tool 'no_such_tool'"):
            await client.call_tool("no_such_tool", {})
        # the server is still answering
        assert not (await client.call_tool("test_echo", {"message": "still here"})).is_error


async def test_crashing_skill_reports_its_error_and_stderr(workspace: Path) -> None:
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_crash", {})
    assert result.is_error
    content = result.structured_content
    assert content["ok"] is False and content["exit_code"] == 1
    assert "RuntimeError: boom: the handler crashed" in content["errors"][0]["message"]
    assert "about to fail" in content["stderr_tail"]


async def test_plain_text_with_exit_0_is_a_success_whose_content_is_the_text(workspace: Path) -> None:
    """isError means a non-zero exit or a failure envelope, nothing else (a retry could act twice)."""
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_nonjson", {})
    assert not result.is_error
    assert result.content[0].text == "hello, this is not JSON\nneither is this {"
    assert result.structured_content == {"ok": True, "status": "success", "output": result.content[0].text}


async def test_logs_before_json_are_skipped(workspace: Path) -> None:
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_logs", {"name": "bob"})
    assert not result.is_error
    assert result.structured_content == {"ok": True, "status": "success", "greeting": "hello bob"}


async def test_ten_megabytes_of_output_are_capped_and_kept_in_the_run_folder(workspace: Path) -> None:
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_big", {"megabytes": 10})
        content = result.structured_content
        assert not result.is_error and content["truncated"] is True
        assert len(result.content[0].text) < 40_000
        saved = Path(content["output_file"])
        assert saved.is_relative_to(workspace / ".betty-mcp" / "runs")
        assert len(json.loads(saved.read_text())["rows"]) == 10 * 1024
        resource = await client.read_resource(content["output_resource"])
        assert json.loads(resource.contents[0].text)["ok"] is True


@pytest.mark.parametrize("mode", ERAS)
async def test_hanging_skill_is_killed_at_its_timeout_while_others_are_served(
    workspace: Path, mode: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    async with stdio_client(workspace, mode=mode, env={"BETTY_TEST_PIDFILE": str(pidfile)}) as client:
        await client.list_tools()  # the server is up (initialize is answered before it is)
        results: dict[str, object] = {}

        async def hang() -> None:
            results["hang"] = await client.call_tool("test_hang", {})

        async with anyio.create_task_group() as tg:
            tg.start_soon(hang)
            await anyio.sleep(0.3)
            started = time.monotonic()
            echo = await client.call_tool("test_echo", {"message": "meanwhile"})
            assert not echo.is_error and time.monotonic() - started < 1.0
    hang_result = results["hang"]
    assert hang_result.is_error  # type: ignore[attr-defined]
    assert "timed out after 1.5s" in hang_result.content[0].text  # type: ignore[attr-defined]
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2 and not any(alive(p) for p in pids), "handler and its child are gone"


@pytest.mark.parametrize("mode", ERAS)
async def test_cancelling_a_call_kills_the_skill_and_its_children(
    workspace: Path, mode: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    async with stdio_client(workspace, mode=mode, env={"BETTY_TEST_PIDFILE": str(pidfile)}) as client:
        with anyio.move_on_after(30):  # cancelled once the handler runs (it records its pid first)

            async def cancel_once_running(scope: anyio.CancelScope) -> None:
                while not pidfile.exists() or not pidfile.read_text().strip():
                    await anyio.sleep(0.02)
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_once_running, tg.cancel_scope)
                await client.call_tool("test_sleep", {"seconds": 60})
        assert pidfile.exists(), "the handler started"
        pids = [int(p) for p in pidfile.read_text().split()]
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert not any(alive(p) for p in pids), "the cancelled handler was killed"
        assert not (await client.call_tool("test_echo", {"message": "after cancel"})).is_error


async def test_independent_calls_run_concurrently(workspace: Path) -> None:
    async with stdio_client(workspace) as client:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client.call_tool, "test_sleep", {"seconds": 1})
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"three 1 s skills took {elapsed:.1f}s"


async def test_slow_skill_sends_progress(workspace: Path) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_sleep", {"seconds": 5.6}, progress_callback=on_progress)
    assert not result.is_error
    assert messages and messages[0].startswith("test.sleep: running for 5s")


async def test_secrets_are_not_passed_to_skills_unless_declared(workspace: Path) -> None:
    env = {
        "OPENAI_API_KEY": "sk-test-123456",
        "GITHUB_TOKEN": "ghp_abcdef123",
        "NEEDED_API_KEY": "needed-1234",
    }
    async with stdio_client(workspace, env=env) as client:
        result = await client.call_tool("test_env", {})
    assert result.structured_content["visible"] == ["NEEDED_API_KEY"]


async def test_path_arguments_outside_the_workspace_are_refused(workspace: Path) -> None:
    (workspace / "inside.txt").write_text("12345")
    async with stdio_client(workspace) as client:
        inside = await client.call_tool("test_readfile", {"file_path": "inside.txt"})
        outside = await client.call_tool("test_readfile", {"file_path": "../../etc/passwd"})
        absolute = await client.call_tool("test_readfile", {"file_path": "/etc/passwd"})
    assert inside.structured_content["size"] == 5
    for refused in (outside, absolute):
        assert refused.is_error
        assert "outside the workspace" in refused.content[0].text


async def test_skills_list_and_skill_run_reach_every_skill(workspace: Path) -> None:
    async with stdio_client(workspace, "--include", "test.echo") as client:
        names = {t.name for t in (await client.list_tools()).tools}
        builtins = {
            "skills_list",
            "skill_run",
            "llm_query",
            "llm_consensus",
            "models_list",
            "agent_run",
            "agents_list",
            "run_status",
            "run_result",
            "run_cancel",
        }
        assert names - builtins == {"test_echo"}, "include globs pick per-skill tools"
        found = await client.call_tool("skills_list", {"query": "sleep"})
        assert [s["name"] for s in found.structured_content["skills"]] == ["test.sleep", "test.hang"], (
            "name matches rank above description matches"
        )
        assert found.structured_content["skills"][0]["input_schema"]["required"] == ["seconds"]
        ran = await client.call_tool("skill_run", {"name": "test.logs", "arguments": {"name": "ann"}})
        assert ran.structured_content["greeting"] == "hello ann"
        bad = await client.call_tool("skill_run", {"name": "test.logs", "arguments": {"nom": "ann"}})
        assert bad.is_error and "missing required argument 'name'" in bad.content[0].text
        draft = await client.call_tool("skill_run", {"name": "test.draft", "arguments": {}})
        assert draft.is_error and "is draft" in draft.content[0].text
        unknown = await client.call_tool("skill_run", {"name": "test.nope"})
        assert unknown.is_error and "unknown skill 'test.nope'" in unknown.content[0].text


@pytest.mark.parametrize("mode", ERAS)
async def test_resources_serve_manifests_and_docs(workspace: Path, mode: str) -> None:
    async with stdio_client(workspace, mode=mode) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        assert "betty://skills/test.echo" in uris
        assert "betty://agents/api.designer" in uris
        manifest = await client.read_resource("betty://skills/test.echo")
        assert "name: test.echo" in manifest.contents[0].text
        agent = await client.read_resource("betty://agents/api.designer")
        assert "reasoning_mode: iterative" in agent.contents[0].text
        with pytest.raises(MCPError, match="Unknown resource"):
            await client.read_resource("betty://skills/no.such")


async def test_stdout_carries_only_protocol_messages(workspace: Path) -> None:
    """Logs go to stderr: a raw stdio session must read nothing but JSON-RPC lines."""
    import subprocess
    import sys

    from tests.conftest import server_args

    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    proc = subprocess.run(
        [sys.executable, *server_args(workspace, "--log-level", "debug")],
        input=json.dumps(request) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=workspace,
        env={**os.environ},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines and all(json.loads(ln)["jsonrpc"] == "2.0" for ln in lines)
    assert "DEBUG" in proc.stderr or "INFO" in proc.stderr or "WARNING" in proc.stderr


def test_the_server_exits_promptly_when_stdin_closes(workspace: Path) -> None:
    """Hot reload on, the zygote and interface reading started: EOF ends the process within moments
    (best of two runs: a busy 2-core machine adds its own delays)."""
    import glob

    tmp = workspace.parent / "tmp"  # the server's own temp folder: other tests' servers may run meanwhile
    tmp.mkdir()
    elapsed = min(_seconds_to_exit_after_eof(workspace, tmp) for _ in range(2))
    assert elapsed < 0.3, f"took {elapsed:.2f}s to exit after EOF"
    assert not glob.glob(str(tmp / "betty-mcp-*")), "the zygote's folder is removed"


def _seconds_to_exit_after_eof(workspace: Path, tmp: Path) -> float:
    import json
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, *server_args(workspace)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workspace,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert proc.stdin is not None and proc.stdout is not None

    def ask(message: dict) -> None:
        proc.stdin.write((json.dumps(message) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    ask({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello})
    proc.stdout.readline()
    ask({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for n in range(3):  # the zygote starts with the first call; the next ones may fork from it
        call = {"name": "test_echo", "arguments": {"message": "x"}}
        ask({"jsonrpc": "2.0", "id": 10 + n, "method": "tools/call", "params": call})
        proc.stdout.readline()
    started = time.monotonic()
    proc.stdin.close()
    proc.wait(timeout=30)
    assert proc.returncode == 0
    return time.monotonic() - started
