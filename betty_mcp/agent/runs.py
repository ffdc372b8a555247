"""Runs in the background: start, watch, wait for, cancel, for the life of the server; kept in the store.

Every run is a task in the manager's own task group, not in the request that started it, so it
survives the client disconnecting and a ``wait`` that gives up: a caller waiting past its deadline
gets the partial result (status ``running``) and polls with the run id. A run is an agent's
(``start``: its steps are the progress) or any other ``Job`` (``start_job``: a consensus, which
reports its own lines and shows its own result so far); ``run_status``, ``run_result`` and
``run_cancel`` treat both alike.

A run belongs to the caller who started it (``core.identity``) and runs as them to its end, whoever
waits for it. Another user's run is, to anyone but an admin, exactly like a run that does not exist,
whichever instance holds it (the store keeps its ``owner``).

    manager = RunManager(task_group, store)   # the serving process's task group
    handle = manager.start("api.analyzer", "Review openapi.yaml", run)   # run(run_id, on_step)
    handle = manager.start_job("llm.consensus", "Tabs or spaces?", consensus, work)  # work(run_id, note)
    result = await manager.wait(handle, seconds=50, on_progress=report)

Each run's row in the store (``RunRecord``) is written when it starts, at each step and when it ends,
so ``status``/``result`` answer for runs this process no longer holds: finished before a restart, or
(with PostgreSQL) run by another instance.

With PostgreSQL, a run nobody waits for is queued instead (``enqueue``; ``agent.queue``): any instance
or ``betty-mcp worker`` takes it (``claim``, once) and holds it from then on, as if started there.

    shown = await manager.enqueue(QueuedRun(...), shown)   # its row, status "queued"
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
from betty_mcp.agent.trace import LEGACY_USER
from betty_mcp.core.errors import BettyError, UnknownRun
from betty_mcp.core.identity import Caller, acting_as, current_caller
from betty_mcp.core.rules import new_run_id
from betty_mcp.store import RunRecord, Store
from betty_mcp.store.base import CANCEL_CHANNEL, SharedRuns

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from betty_mcp.agent.queue import QueuedRun, RunQueue

Progress = Callable[[str], Awaitable[None]]
StartRun = Callable[[str, OnStep], Awaitable[RunResult]]
Note = Callable[[str], Awaitable[None]]  # a job's progress line, reported to whoever waits
StartJob = Callable[[str, Note], Awaitable[Any]]
HEARTBEAT_SECONDS = 10.0
POLL_SECONDS = 0.25  # how often a run held elsewhere is looked up while someone waits for it
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
    owner: Caller = field(default_factory=current_caller)  # who started it; the run acts as them
    cancelled: bool = False  # before its first step (after it, the result says so)

    def record(self) -> RunRecord:
        """The run's row as the store keeps it."""
        shown = self.status()
        return RunRecord(
            run_id=self.run_id,
            kind="agent" if self.job is None else "consensus",
            agent=self.agent,
            task=self.task,
            status=shown["status"],
            owner=self.owner.user,
            error=shown.get("error"),
            status_doc=shown,
            result_doc=self.snapshot(),
        )

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
        status = self.result.status if self.result else self._ended()
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
            "status": self._ended(),
            "error": self.error,
        }

    def _ended(self) -> str:
        """The status of a run without a result: running, or how it ended without one."""
        return "cancelled" if self.cancelled else "failed" if self.error else "running"


class RunManager:
    """The runs this process holds. With a shared database (``store.shared_runs()``), it also says every
    ``heartbeat`` seconds that it still holds them, marks runs whose holder fell silent for ``lost_after``
    seconds as failed (``worker_lost``), and cancels its runs when any instance asks."""

    def __init__(
        self,
        task_group: TaskGroup,
        store: Store,
        *,
        heartbeat: float = 2.0,
        lost_after: float = 15.0,
        queue: RunQueue | None = None,
    ) -> None:
        self.task_group = task_group
        self.store = store
        self.runs: dict[str, RunHandle] = {}
        self.shared = store.shared_runs()
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self.queue = queue  # a shared database's (``agent.queue``), else None
        if self.shared is not None:
            task_group.start_soon(self._coordinate, self.shared)

    async def _coordinate(self, shared: SharedRuns) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(shared.listen, CANCEL_CHANNEL, self._cancel_asked)
            while True:
                await anyio.sleep(self.heartbeat)
                try:
                    held = [run_id for run_id, h in self.runs.items() if not h.done.is_set()]
                    if held:
                        await shared.heartbeat(held)
                    for run_id in await shared.reap(self.lost_after):
                        log.warning(
                            "run %s: its instance stopped answering; marked failed (worker_lost)", run_id
                        )
                except BettyError as exc:
                    log.warning("runs: the shared database did not answer: %s", exc)

    def _cancel_asked(self, run_id: str) -> None:
        handle = self.runs.get(run_id)
        if handle is not None:
            handle.scope.cancel()

    def start(self, agent: str, task: str, run: StartRun, *, run_id: str | None = None) -> RunHandle:
        """Start ``run(run_id, on_step)`` in the background; it ends with its RunResult."""
        return self._launch(RunHandle(run_id or new_run_id(), agent, task), self._run, run)

    def start_job(self, name: str, task: str, job: Job, work: StartJob) -> RunHandle:
        """Start ``work(run_id, note)`` in the background; ``job`` shows its progress and result.

        ``job.snapshot()["run_id"]`` is the run's id, so the job may name it before it starts."""
        return self._launch(RunHandle(job.snapshot()["run_id"], name, task, job=job), self._run_job, work)

    def _launch(self, handle: RunHandle, runner: Callable[..., Awaitable[None]], work: Any) -> RunHandle:
        handle.owner = current_caller()
        self.runs[handle.run_id] = handle
        self.task_group.start_soon(runner, handle, work)
        return handle

    async def enqueue(self, queued: QueuedRun, shown: dict[str, Any]) -> dict[str, Any]:
        """Queue a run for whichever worker is free (``queue`` is set); ``shown`` is its result so far.
        Its row says ``queued`` until a worker claims it; what ``run_status`` shows is returned."""
        assert self.queue is not None, "runs are queued only on a shared database"
        status = {
            "run_id": queued.run_id,
            "agent": queued.name,
            "status": "queued",
            "steps": 0,
            "last_step": None,
            "elapsed_s": 0.0,
            "totals": None,
            "error": None,
        }
        record = RunRecord(
            run_id=queued.run_id,
            kind=queued.kind,
            agent=queued.name,
            task=queued.task,
            status="queued",
            owner=queued.owner.user,
            status_doc=status,
            result_doc={**shown, "status": "queued"},
        )
        await self.store.save_run(record)
        try:
            await self.queue.enqueue(queued)
        except BettyError as exc:
            await self.fail(queued, f"the run could not be queued: {exc}")
            raise
        return status

    async def claim(self, run_id: str) -> bool:
        """Take a queued run to run here; False if it was cancelled or taken already (never run twice)."""
        assert self.shared is not None
        return await self.shared.claim(run_id)

    async def fail(self, queued: QueuedRun, error: str) -> None:
        """A queued run that could not start (its agent is gone, a budget refuses it): failed, saying why."""
        handle = RunHandle(queued.run_id, queued.name, queued.task, owner=queued.owner, error=error)
        handle.done.set()
        record = handle.record()
        record.kind = queued.kind
        await self.store.save_run(record)

    async def _save(self, handle: RunHandle) -> None:
        """Write the run's row; a database that cannot be reached is logged, never ends the run."""
        try:
            await self.store.save_run(handle.record())
        except BettyError as exc:
            log.warning("run %s: its row could not be saved: %s", handle.run_id, exc)

    async def _run_job(self, handle: RunHandle, work: StartJob) -> None:
        async def note(line: str) -> None:
            handle.note(line)
            await self._save(handle)

        try:
            await self._save(handle)
            with handle.scope, acting_as(handle.owner):
                await work(handle.run_id, note)
        except BettyError as exc:
            handle.error = str(exc)
        except Exception as exc:  # a bug in the job: it must not end the server's task group with it
            log.exception("background run %s failed", handle.run_id)
            handle.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            await self._finish(handle)

    async def _run(self, handle: RunHandle, run: StartRun) -> None:
        async def on_step(step: Step, state: RunState) -> None:
            handle.state = state
            handle.note(step_line(step))
            await self._save(handle)

        try:
            await self._save(handle)
            with handle.scope, acting_as(handle.owner):
                handle.result = await run(handle.run_id, on_step)
            if handle.result is None:  # cancelled: the runtime marked the state before re-raising
                if handle.state is not None:
                    handle.result = handle.state.result()
                else:
                    handle.error = "the run was cancelled before its first step"
                    handle.cancelled = True
        except BettyError as exc:
            handle.error = str(exc)
        finally:
            await self._finish(handle)

    async def _finish(self, handle: RunHandle) -> None:
        handle.done.set()
        handle.changed.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await self._save(handle)

    def get(self, run_id: str) -> RunHandle:
        """A run this process holds that the current caller may see; UnknownRun otherwise, the same
        either way."""
        handle = self._held(run_id)
        if handle is None:
            raise self._unknown(run_id)
        return handle

    def _unknown(self, run_id: str) -> UnknownRun:
        """The answer for a run that does not exist and for another user's: the same, so nothing leaks."""
        return UnknownRun(f"unknown run '{run_id}'; no run of that id in {self.store.where}")

    def _held(self, run_id: str) -> RunHandle | None:
        """The run if this process holds it, None if not; UnknownRun if the caller may not see it."""
        handle = self.runs.get(run_id)
        if handle is not None and not current_caller().may_see(handle.owner.user):
            raise self._unknown(run_id)
        return handle

    async def _stored(self, run_id: str) -> RunRecord:
        found = await self.store.get_run(run_id)
        if found is None or not current_caller().may_see(found.owner or LEGACY_USER):
            raise self._unknown(run_id)
        return found

    async def status(self, run_id: str) -> dict[str, Any]:
        """``run_status``: from this process if it holds the run, else from the store."""
        if (handle := self._held(run_id)) is not None:
            return handle.status()
        return (await self._stored(run_id)).status_doc

    async def result(
        self, run_id: str, seconds: float, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """``run_result``: waits up to ``seconds`` for the run to end, wherever it runs."""
        if (handle := self._held(run_id)) is not None:
            return await self.wait(handle, seconds, on_progress)
        stored = await self._stored(run_id)
        deadline = time.monotonic() + seconds
        reported = stored.status_doc.get("last_step")
        while not stored.finished and time.monotonic() < deadline:
            await anyio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            stored = await self._stored(run_id)
            line = stored.status_doc.get("last_step")
            if on_progress is not None and line and line != reported:
                reported = line
                await on_progress(line)
        return stored.result_doc

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
        """Cancel a run here, or ask the instance holding it (shared database) and wait up to 10 s."""
        handle = self._held(run_id)
        if handle is None:
            stored = await self._stored(run_id)
            if stored.status == "queued" and self.shared is not None:
                if (cancelled := await self.shared.cancel_queued(run_id)) is not None:
                    return cancelled.status_doc
                stored = await self._stored(run_id)  # a worker took it meanwhile: cancel it there
            if stored.finished:
                return stored.status_doc
            if self.shared is None:
                raise UnknownRun(
                    f"run '{run_id}' is held by another betty-mcp process; cancel it there (runs are "
                    "cancelled from any instance only with a shared database_url)"
                )
            await self.shared.notify(CANCEL_CHANNEL, run_id)
            with anyio.move_on_after(10):
                while not stored.finished:
                    await anyio.sleep(POLL_SECONDS)
                    stored = await self._stored(run_id)
            return stored.status_doc
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
