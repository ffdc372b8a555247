"""Every process a call starts dies with the call, whatever session it makes: when the handler
returns, at the timeout, on cancellation, and for handlers run by a handler (workflow.run). A
grandchild holding the handler's stdout neither delays the result nor keeps the server from exiting.

Run with a cgroup per call where this machine allows it, and with /proc tracking (the fallback);
through the zygote and with a freshly spawned interpreter.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import yaml

from betty_mcp.core.config import load_settings
from betty_mcp.run.reaper import CGROUPS_ENV, Containment
from betty_mcp.services import Services
from tests.conftest import FIXTURE_SKILLS, alive, server_args

pytestmark = pytest.mark.anyio


def cgroups_work() -> bool:
    containment = Containment(cgroups=True)
    try:
        return containment.mode == "cgroup"
    finally:
        containment.close()


MODES = [
    pytest.param("cgroup", marks=pytest.mark.skipif(not cgroups_work(), reason="no writable cgroup v2 here")),
    "proc",
]


def children_of(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
    return found


async def recorded(record: Path, count: int = 3) -> list[int]:
    """The pids the handler wrote (handler, child, grandchild), once they are all there."""
    with anyio.fail_after(20):
        while not record.exists() or len(record.read_text().split()) < count:
            await anyio.sleep(0.02)
    return [int(p) for p in record.read_text().split()]


async def assert_gone(pids: list[int], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        await anyio.sleep(0.02)
    survivors = [p for p in pids if alive(p)]
    for pid in survivors:  # do not leave them behind for the next test
        os.kill(pid, 9)
    assert not survivors, f"still running: {survivors}"


@pytest.fixture(params=MODES)
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(CGROUPS_ENV, "1" if request.param == "cgroup" else "0")
    return request.param


@pytest.fixture(params=["zygote", "cold"])
async def app(request: pytest.FixtureRequest, containment: str, workspace: Path) -> AsyncIterator[Services]:
    if containment == "cgroup" and request.param == "cold":
        pytest.skip(
            "opt-in cgroup mode: a cold spawn joins its cgroup just after Popen returns, so a handler that "
            "forks at once can escape it (seen in CI); the default /proc mode covers cold spawns"
        )
    services = await make_app(workspace, fork=request.param == "zygote")
    assert services.runner._containment.mode == containment
    yield services
    services.close()


async def make_app(workspace: Path, fork: bool, bundled: bool = False) -> Services:
    settings = load_settings(
        None,
        workspace=workspace,
        skills_dirs=[FIXTURE_SKILLS],
        bundled=bundled,
        limits={"fork_server": fork},
    )
    services = Services(settings)
    await services.runner.run(services.catalog.skills["test.echo"], {"message": "start"})
    zygote = services.runner._zygote
    if fork:
        assert zygote is not None
        with anyio.fail_after(30):
            while not zygote._ready.is_set():
                await anyio.sleep(0.05)
    return services


async def test_every_process_dies_when_the_handler_returns(app: Services, tmp_path: Path) -> None:
    record = tmp_path / "pids"
    result = await app.runner.run(app.catalog.skills["test.spawn"], {"mode": "return", "record": str(record)})
    assert result.ok, result.text
    pids = await recorded(record)
    assert result.structured["pid"] == pids[0]
    await assert_gone(pids)


async def test_every_process_dies_at_the_timeout(app: Services, tmp_path: Path) -> None:
    record = tmp_path / "pids"
    started = time.monotonic()
    result = await app.runner.run(app.catalog.skills["test.spawn"], {"mode": "hang", "record": str(record)})
    assert not result.ok and "timed out after 2s" in result.structured["errors"][0]["message"]
    assert time.monotonic() - started < 4
    await assert_gone(await recorded(record))


async def test_every_process_dies_when_the_call_is_cancelled(app: Services, tmp_path: Path) -> None:
    record = tmp_path / "pids"
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            app.runner.run, app.catalog.skills["test.spawn"], {"mode": "hang", "record": str(record)}
        )
        pids = await recorded(record)
        tg.cancel_scope.cancel()
    await assert_gone(pids)


async def test_a_grandchild_holding_stdout_neither_delays_the_result_nor_survives(
    app: Services, tmp_path: Path
) -> None:
    record = tmp_path / "pids"
    started = time.monotonic()
    result = await app.runner.run(
        app.catalog.skills["test.spawn"], {"mode": "return", "record": str(record), "hold": True}
    )
    elapsed = time.monotonic() - started
    assert result.ok, result.text  # the handler's own result, not "timed out"
    assert elapsed < 1.5, f"took {elapsed:.2f}s; the skill's timeout is 2s"
    pids = await recorded(record)
    assert result.structured["pid"] == pids[0]
    await assert_gone(pids)


async def test_cancelling_a_workflow_kills_the_handlers_it_runs(
    containment: str, workspace: Path, tmp_path: Path
) -> None:
    """workflow.run runs its steps through the server's zygote: their handlers are the zygote's
    children, in sessions of their own, not descendants of the cancelled call."""
    app = await make_app(workspace, fork=True, bundled=True)
    try:
        zygote_pid = app.runner._zygote._process.pid  # type: ignore[union-attr]
        record = tmp_path / "pids"
        workflow = {
            "steps": [{"id": "spawn", "skill": "test.spawn", "args": {"mode": "hang", "record": str(record)}}]
        }
        (workspace / "wf.yaml").write_text(yaml.safe_dump(workflow))
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.runner.run, app.catalog.skills["workflow.run"], {"workflow_path": "wf.yaml"})
            pids = await recorded(record)
            # workflow.run itself, the step's handler, and the orphaned grandchild (the zygote reaps orphans)
            forked = children_of(zygote_pid)
            assert pids[0] in forked, "the step's handler was forked by the server's zygote"
            assert len(set(forked) - set(pids)) == 1, "and so was workflow.run"
            tg.cancel_scope.cancel()
        await assert_gone([*forked, *pids])
        assert alive(zygote_pid)
    finally:
        app.close()


async def test_the_server_answers_promptly_and_exits_despite_a_grandchild_holding_stdout(
    workspace: Path, tmp_path: Path
) -> None:
    record = tmp_path / "pids"
    server = subprocess.Popen(
        [sys.executable, *server_args(workspace)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workspace,
    )
    assert server.stdin is not None and server.stdout is not None
    lines = server.stdout

    def send(message: dict) -> None:
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]

    def answer(request_id: int, within: float) -> dict:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if select.select([lines], [], [], max(0.0, deadline - time.monotonic()))[0]:
                message = json.loads(lines.readline())
                if message.get("id") == request_id:
                    return message
        raise TimeoutError(f"no answer to request {request_id} in {within}s")

    try:
        send(
            {
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                },
            }
        )
        answer(1, 30)
        send({"method": "notifications/initialized"})
        arguments = {"mode": "return", "record": str(record), "hold": True}
        send({"id": 2, "method": "tools/call", "params": {"name": "test_spawn", "arguments": arguments}})
        started = time.monotonic()
        result = answer(2, 30)["result"]
        assert not result.get("isError"), result
        # Not the 2 s timeout's kill (that answers with an error): the answer came when the handler exited.
        assert time.monotonic() - started < 2.0, "the skill's timeout is 2s"
        assert result["structuredContent"]["ok"] is True
        server.stdin.close()
        assert server.wait(timeout=10) == 0, "the server exits when its stdin closes"
        await assert_gone(await recorded(record))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
