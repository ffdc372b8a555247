"""Runs in the background: start, watch, wait for, cancel, for the life of the server.

Every run is a task in the manager's own task group, not in the request that started it, so it
survives the client disconnecting and a ``wait`` that gives up: a caller waiting past its deadline
gets the partial result (status ``running``) and polls with the run id. A run is an agent's
(``start``: its steps are the progress) or any other ``Job`` (``start_job``: a consensus, which
reports its own lines and shows its own result so far); ``run_status``, ``run_result`` and
``run_cancel`` treat both alike.

A run belongs to the caller who started it (``core.identity``) and runs as them to its end, whoever
waits for it. Another user's run is, to anyone but an admin, exactly like a run that does not exist.

    manager = RunManager(task_group)   # the serving process's task group
    handle = manager.start("api.analyzer", "Review openapi.yaml", run)   # run(run_id, on_step)
    handle = manager.start_job("llm.consensus", "Tabs or spaces?", consensus, work)  # work(run_id, note)
    result = await manager.wait(handle, seconds=50, on_progress=report)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from betty_mcp.agent.runtime import OnStep
from betty_mcp.agent.state import RunResult, RunState, Step
from betty_mcp.core.errors import BettyError, UnknownRun
from betty_mcp.core.identity import Caller, acting_as, current_caller
from betty_mcp.core.rules import new_run_id

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

Progress = Callable[[str], Awaitable[None]]
StartRun = Callable[[str, OnStep], Awaitable[RunResult]]
Note = Callable[[str], Awaitable[None]]  # a job's progress line, reported to whoever waits
StartJob = Callable[[str, Note], Awaitable[Any]]
HEARTBEAT_SECONDS = 10.0
log = logging.getLogger(__name__)


class Job(Protocol):
    """A background run other than an agent's: it shows its result so far, ``status`` included
    (with ``run_id``, ``agent``, ``steps``, ``totals``, ``error``), and a line while nothing happens."""

    def snapshot(self) -> dict[str, Any]: ...

    def heartbeat(self) -> str: ...


@dataclass
class RunHandle:
    run_id: str
    agent: str
    task: str
    started: float = field(default_factory=time.monotonic)
    state: RunState | None = None
    result: RunResult | None = None
    error: str | None = None
    lines: list[str] = field(default_factory=list)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)
    job: Job | None = None  # a run other than an agent's
    owner: Caller = field(default_factory=current_caller)  # who started it

    def note(self, line: str) -> None:
        """A progress line: kept, and whoever waits is woken."""
        self.lines.append(line)
        self.changed.set()
        self.changed = anyio.Event()

    def heartbeat(self) -> str:
        if self.job is not None:
            return self.job.heartbeat()
        return f"{self.agent}: running, {len(self.lines)} step(s) so far"

    def status(self) -> dict[str, Any]:
        if self.job is not None:
            shown = self.snapshot()
            return {
                "run_id": self.run_id,
                "agent": self.agent,
                "status": shown["status"],
                "steps": len(shown.get("steps") or []),
                "last_step": self.lines[-1] if self.lines else None,
                "elapsed_s": round(time.monotonic() - self.started, 1),
                "totals": shown.get("totals"),
                "error": shown.get("error"),
            }
        state = self.state
        status = self.result.status if self.result else ("failed" if self.error else "running")
        return {
            "run_id": self.run_id,
            "agent": self.agent,
            "status": status,
            "steps": len(state.steps) if state else 0,
            "last_step": self.lines[-1] if self.lines else None,
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "totals": state.totals() if state else None,
            "error": self.error,
        }

    def snapshot(self) -> dict[str, Any]:
        """The final result, or what is known so far while the run goes on."""
        if self.job is not None:
            shown = self.job.snapshot()
            if self.error and shown.get("status") == "running":  # the job ended on an error of its own
                shown = {**shown, "status": "failed", "error": self.error}
            elif self.done.is_set() and shown.get("status") == "running":
                shown = {**shown, "status": "cancelled", "error": "the run was cancelled before it started"}
            return shown
        if self.result is not None:
            return self.result.as_dict()
        state = self.state
        partial = state.result().as_dict() if state else {"steps": [], "totals": None, "answer": None}
        return {
            **partial,
            "run_id": self.run_id,
            "agent": self.agent,
            "status": "failed" if self.error else "running",
            "error": self.error,
        }


class RunManager:
    def __init__(self, task_group: TaskGroup) -> None:
        self.task_group = task_group
        self.runs: dict[str, RunHandle] = {}

    def start(self, agent: str, task: str, run: StartRun) -> RunHandle:
        """Start ``run(run_id, on_step)`` in the background; it ends with its RunResult."""
        handle = RunHandle(new_run_id(), agent, task)
        self.runs[handle.run_id] = handle
        self.task_group.start_soon(self._run, handle, run)
        return handle

    def start_job(self, name: str, task: str, job: Job, work: StartJob) -> RunHandle:
        """Start ``work(run_id, note)`` in the background; ``job`` shows its progress and result.

        ``job.snapshot()["run_id"]`` is the run's id, so the job may name it before it starts."""
        handle = RunHandle(job.snapshot()["run_id"], name, task, job=job)
        self.runs[handle.run_id] = handle
        self.task_group.start_soon(self._run_job, handle, work)
        return handle

    async def _run_job(self, handle: RunHandle, work: StartJob) -> None:
        async def note(line: str) -> None:
            handle.note(line)

        try:
            with handle.scope, acting_as(handle.owner):
                await work(handle.run_id, note)
        except BettyError as exc:
            handle.error = str(exc)
        except Exception as exc:  # a bug in the job: it must not end the server's task group with it
            log.exception("background run %s failed", handle.run_id)
            handle.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            handle.done.set()
            handle.changed.set()

    async def _run(self, handle: RunHandle, run: StartRun) -> None:
        async def on_step(step: Step, state: RunState) -> None:
            handle.state = state
            handle.note(step_line(step))

        try:
            with handle.scope, acting_as(handle.owner):
                handle.result = await run(handle.run_id, on_step)
            if handle.result is None:  # cancelled: the runtime marked the state before re-raising
                if handle.state is not None:
                    handle.result = handle.state.result()
                else:
                    handle.error = "the run was cancelled before its first step"
        except BettyError as exc:
            handle.error = str(exc)
        finally:
            handle.done.set()
            handle.changed.set()

    def get(self, run_id: str) -> RunHandle:
        """The run ``run_id`` if the current caller may see it; UnknownRun otherwise, the same either way."""
        caller = current_caller()
        handle = self.runs.get(run_id)
        if handle is None or not caller.may_see(handle.owner.user):
            theirs = [r for r, h in self.runs.items() if caller.may_see(h.owner.user)]
            raise UnknownRun(
                f"unknown run '{run_id}'; your runs on this server: {', '.join(theirs) or 'none'}"
            )
        return handle

    async def wait(
        self, handle: RunHandle, seconds: float, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Wait up to ``seconds`` for the run, reporting each step and at least every 10 s."""
        deadline = time.monotonic() + seconds
        reported = 0
        while not handle.done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            changed = handle.changed
            with anyio.move_on_after(min(HEARTBEAT_SECONDS, remaining)):
                await changed.wait()
            if on_progress is not None:
                new = handle.lines[reported:]
                reported = len(handle.lines)
                for line in new or [handle.heartbeat()]:
                    await on_progress(line)
        return handle.snapshot()

    async def cancel(self, run_id: str) -> dict[str, Any]:
        handle = self.get(run_id)
        handle.scope.cancel()
        with anyio.move_on_after(10):
            await handle.done.wait()
        return handle.status()


def step_line(step: Step) -> str:
    """``step 3: api.validate ok`` - the short line hosts show for progress."""
    verdict = "refused" if step.refused else ("ok" if step.ok else "failed")
    line = f"step {step.index}: {step.name} {verdict}"
    if step.kind == "llm" and step.tokens:
        line += f" ({step.tokens} tokens)"
    return line[:200]
