"""Runs across the instances of a team service (one PostgreSQL database): started on A, followed and
read on B, cancelled from C; an instance or a worker killed with ``kill -9`` leaves its runs ``failed``
(``worker_lost``) within the stated bound, never run again, and no other run touched; runs nobody waits
for are queued and taken by whichever instance or ``betty-mcp worker`` is free; after a restart of
everything, finished runs and the ledger are still there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import yaml
from mcp.client import Client

from tests.conftest import free_port, server_args
from tests.fakes.scripted_llm import Hang, Reply, ScriptedLLM

pytestmark = pytest.mark.anyio

HEARTBEAT, LOST_AFTER = 0.5, 5.0  # silent for 10 heartbeats: lost even on a loaded machine
BOUND = LOST_AFTER + 2 * HEARTBEAT + 2.0  # silent for LOST_AFTER, then the next reaper round, + slack


def team_workspace(root: Path, name: str, llm: ScriptedLLM, *, run_workers: int = 4) -> Path:
    workspace = root / name
    (workspace / "agents" / "demo.waiter").mkdir(parents=True)
    router = {
        "embedded_fallback": False,
        "providers": {"scripted": {"endpoint": llm.base_url, "models": ["quick", "slow"]}},
    }
    limits = {
        "run_heartbeat_seconds": HEARTBEAT,
        "run_lost_after_seconds": LOST_AFTER,
        "run_workers": run_workers,
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router, "limits": limits}))
    agent = {
        "name": "demo.waiter",
        "version": "0.1.0",
        "description": "Answers, sometimes slowly.",
        "capabilities": ["wait"],
        "skills_available": [],
        "reasoning_mode": "oneshot",
        "status": "active",
    }
    (workspace / "agents" / "demo.waiter" / "agent.yaml").write_text(yaml.safe_dump(agent))
    return workspace


@contextmanager
def instance(workspace: Path, pg_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``betty-mcp serve --http`` on the shared database; yields the process and its MCP URL."""
    port = free_port()
    args = server_args(workspace, "--http", "--port", str(port), "--agents-dir", str(workspace / "agents"))
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=workspace,
        env={**os.environ, "BETTY_MCP_DATABASE_URL": pg_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the instance did not start"
                time.sleep(0.05)
        yield proc, f"http://127.0.0.1:{port}/mcp"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert result.structured_content is not None, result.content[0].text
    return result.structured_content


async def start(client: Client, model: str, task: str = "t") -> str:
    """A run nobody waits for: queued, for whichever instance or worker is free."""
    out = await call(client, "agent_run", agent="demo.waiter", task=task, model=model, wait=False)
    assert out["status"] == "queued"
    return out["run_id"]


async def start_here(client: Client, model: str) -> str:
    """A run its caller waits for (briefly): held by the instance that answered, from its first step."""
    out = await call(client, "agent_run", agent="demo.waiter", task="t", model=model, wait_seconds=0.2)
    return out["run_id"]


async def test_runs_are_followed_cancelled_and_lost_across_instances(tmp_path: Path, pg_url: str) -> None:
    with ScriptedLLM() as llm:
        llm.script("quick", Reply("the answer"))
        llm.script("slow", Hang(), Hang(), Hang())
        spaces = [team_workspace(tmp_path, name, llm) for name in "abcd"]
        with (
            instance(spaces[0], pg_url) as (a_proc, a),
            instance(spaces[1], pg_url) as (_, b),
            instance(spaces[2], pg_url) as (_, c),
        ):
            async with AsyncExitStack() as stack:
                on_a, on_b, on_c = [
                    await stack.enter_async_context(Client(url, read_timeout_seconds=60)) for url in (a, b, c)
                ]
                done = await start(on_a, "scripted/quick")
                result = await call(on_b, "run_result", run_id=done, wait_seconds=30)
                assert (result["status"], result["answer"]) == ("completed", "the answer")
                assert (await call(on_b, "run_status", run_id=done))["status"] == "completed"

                cancelled = await start(on_a, "scripted/slow")
                await wait_for(on_b, cancelled, "running")
                assert (await call(on_c, "run_cancel", run_id=cancelled))["status"] == "cancelled"
                assert (await call(on_b, "run_status", run_id=cancelled))["status"] == "cancelled"

                lost, kept = await start_here(on_a, "scripted/slow"), await start_here(on_b, "scripted/slow")
                await wait_for(on_c, lost, "running")
                a_proc.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                status = await wait_for(on_c, lost, "failed", within=BOUND + 5)
                assert time.monotonic() - killed < BOUND, f"worker_lost took over {BOUND}s"
                assert status["error"].startswith("worker_lost") and "not run again" in status["error"]
                assert (await call(on_c, "run_status", run_id=kept))["status"] == "running", "B's run goes on"
                assert (await call(on_c, "run_status", run_id=done))["status"] == "completed"
                await call(on_c, "run_cancel", run_id=kept)
        # Every instance is gone; a new one (another workspace) sees the finished runs.
        with instance(spaces[3], pg_url) as (_, d):
            async with Client(d, read_timeout_seconds=60) as on_d:
                again = await call(on_d, "run_result", run_id=done)
                assert (again["status"], again["answer"]) == ("completed", "the answer")
                assert (await call(on_d, "run_status", run_id=lost))["status"] == "failed"
    with psycopg.connect(pg_url) as conn:
        (calls,) = conn.execute("SELECT count(*) FROM calls WHERE outcome = 'ok'").fetchone() or (0,)
        (events,) = conn.execute("SELECT count(*) FROM run_events WHERE run_id = %s", (done,)).fetchone() or (
            0,
        )
    assert calls == 1 and events >= 3, "the ledger and the trace outlive every instance"


async def wait_for(client: Client, run_id: str, status: str, within: float = 20) -> dict[str, Any]:
    """The run's status once it is ``status`` (polled on ``client``)."""
    deadline = time.monotonic() + within
    while True:
        shown = await call(client, "run_status", run_id=run_id)
        if shown["status"] == status or time.monotonic() > deadline:
            assert shown["status"] == status, shown
            return shown
        await anyio.sleep(0.1)


@contextmanager
def worker(workspace: Path, pg_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """``betty-mcp worker --concurrency 1`` on the shared database, once it has registered there."""
    args = ["-m", "betty_mcp", "worker", "--workspace", str(workspace), "--concurrency", "1"]
    args += ["--agents-dir", str(workspace / "agents"), "--log-level", "warning"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        before = registered(conn)
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=workspace,
            env={**os.environ, "BETTY_MCP_DATABASE_URL": pg_url},
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while registered(conn) <= before:
                assert proc.poll() is None and time.monotonic() < deadline, "the worker did not start"
                time.sleep(0.05)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)


def registered(conn: psycopg.Connection) -> int:
    """How many queue workers have registered with the database so far (serial ids: only grows)."""
    (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM procrastinate_workers").fetchone() or (0,)
    return last


def holder_pid(pg_url: str, run_id: str) -> int:
    with psycopg.connect(pg_url) as conn:
        (holder,) = conn.execute("SELECT holder FROM runs WHERE run_id = %s", (run_id,)).fetchone() or ("",)
    return int(holder.rpartition(":")[2])


async def test_queued_runs_are_taken_by_workers_once(tmp_path: Path, pg_url: str) -> None:
    with ScriptedLLM() as llm:
        llm.script("quick", Reply("done by a worker"))
        llm.script("slow", Hang(), Hang(), Hang(), Hang())
        front = team_workspace(tmp_path, "front", llm, run_workers=0)  # takes no queued run itself
        back = team_workspace(tmp_path, "back", llm)
        with instance(front, pg_url) as (_, url):
            async with Client(url, read_timeout_seconds=60) as client:
                # No worker yet: the run waits in the queue, and is cancelled there, never to run.
                early = await start(client, "scripted/slow", task="early")
                assert (await call(client, "run_status", run_id=early))["status"] == "queued"
                assert (await call(client, "run_cancel", run_id=early))["status"] == "cancelled"

                with worker(back, pg_url) as first, worker(back, pg_url) as second:
                    one = await start(client, "scripted/slow", task="one")
                    two = await start(client, "scripted/slow", task="two")
                    await wait_for(client, one, "running")
                    await wait_for(client, two, "running")
                    held = {holder_pid(pg_url, one), holder_pid(pg_url, two)}
                    assert held == {first.pid, second.pid}, "each worker takes one run at a time"
                    await until_asked(llm, "one", "two")
                    three = await start(client, "scripted/slow", task="three")
                    await anyio.sleep(1.0)
                    assert (await call(client, "run_status", run_id=three))["status"] == "queued"

                    os.kill(holder_pid(pg_url, one), signal.SIGKILL)
                    killed = time.monotonic()
                    status = await wait_for(client, one, "failed", within=BOUND + 5)
                    assert time.monotonic() - killed < BOUND, f"worker_lost took over {BOUND}s"
                    assert status["error"].startswith("worker_lost")
                    assert (await call(client, "run_status", run_id=two))["status"] == "running"
                    assert (await call(client, "run_status", run_id=three))["status"] == "queued"

                    # The survivor's run is cancelled from the front; the survivor takes the next one.
                    assert (await call(client, "run_cancel", run_id=two))["status"] == "cancelled"
                    await wait_for(client, three, "running")
                    await until_asked(llm, "three")
                    assert (await call(client, "run_cancel", run_id=three))["status"] == "cancelled"
                    done = await start(client, "scripted/quick", task="four")
                    result = await call(client, "run_result", run_id=done, wait_seconds=30)
                    assert (result["status"], result["answer"]) == ("completed", "done by a worker")
                    asked_all = await call(
                        client, "llm_consensus", prompt="p", models=["scripted/quick"], wait=False
                    )
                    assert asked_all["status"] == "queued"
                    result = await call(client, "run_result", run_id=asked_all["run_id"], wait_seconds=30)
                    assert result["status"] == "completed" and result["answers"][0]["response"] == "ok"
                    # The killed worker's job is marked failed by the survivor (never retried); the
                    # others succeeded (and were deleted: their runs' rows keep what they did).
                    deadline = time.monotonic() + BOUND
                    while (jobs := queue_jobs(pg_url)) != {"failed": 1}:
                        assert time.monotonic() < deadline, jobs
                        await anyio.sleep(0.2)
        assert sorted(asked(llm, "slow")) == ["one", "three", "two"], "each ran once; the early one never"


def asked(llm: ScriptedLLM, model: str) -> list[str]:
    """The tasks ``model`` was asked, one per call."""
    return [r.messages[-1]["content"] for r in llm.requests_for(model)]


async def until_asked(llm: ScriptedLLM, *tasks: str, within: float = 30) -> None:
    """Wait until the runs of these tasks have reached their model call (a worker's first one loads
    LiteLLM: seconds)."""
    deadline = time.monotonic() + within
    while not set(tasks) <= set(asked(llm, "slow")):
        assert time.monotonic() < deadline, f"{tasks} not all asked: {asked(llm, 'slow')}"
        await anyio.sleep(0.05)


def queue_jobs(pg_url: str) -> dict[str, int]:
    """How many of the queue's jobs are in each state."""
    with psycopg.connect(pg_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM procrastinate_jobs GROUP BY 1").fetchall())
