"""Background runs on a PostgreSQL queue: any instance enqueues, any worker runs (shared database only).

The queue is procrastinate's. Chosen over pgqueuer because:
- it has been maintained for years;
- it runs on psycopg 3 and its pool, the driver the store already uses;
- it wakes workers with LISTEN/NOTIFY, without polling;
- it has worker heartbeats;
- it never retries a job unless told to.
Its schema is one of the store's migrations (``006_run_queue``), applied under the same lock.

    queue = RunQueue(url, heartbeat=2, lost_after=15)
    await queue.enqueue(QueuedRun(run_id, "agent", "api.analyzer", task, owner, arguments))
    await queue.work(run_one, concurrency=4)     # until cancelled: run_one(QueuedRun) per job

A job only names its run. The run's row in ``runs`` is the truth: status ``queued`` until a worker takes
it with ``claim``, which succeeds once. A job delivered twice, or a run cancelled while it waited, is
never run. Jobs are never retried: a worker that dies mid-run leaves its run to the reaper, which marks
it ``worker_lost`` (``agent.runs``), and its job, stalled, is marked failed by any live worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import anyio

from betty_mcp.core.errors import StorageError
from betty_mcp.core.identity import Caller
from betty_mcp.core.secrets import scrub

if TYPE_CHECKING:
    import procrastinate

TASK = "betty_mcp.run"
QUEUE = "betty_runs"
POOL_MAX = 4  # enqueueing and a worker's bookkeeping: a few short queries at a time
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueuedRun:
    """What a job carries: the run's id and kind, who asked (the run acts as them), and the arguments
    of the call that asked for it (``agent_run``'s or ``llm_consensus``'s)."""

    run_id: str
    kind: str  # "agent" or "consensus"
    name: str  # the agent's name, or the consensus's kind
    task: str
    owner: Caller
    arguments: dict[str, Any]

    def as_job(self) -> dict[str, Any]:
        owner = {"user": self.owner.user, "role": self.owner.role, "scopes": sorted(self.owner.scopes)}
        return {**asdict(self), "owner": owner}

    @classmethod
    def of_job(cls, job: dict[str, Any]) -> QueuedRun:
        owner = job["owner"]
        caller = Caller(owner["user"], owner.get("role"), frozenset(owner.get("scopes") or ()))
        return cls(job["run_id"], job["kind"], job["name"], job["task"], caller, job["arguments"])


class RunQueue:
    """The shared database's run queue, opened on first use."""

    def __init__(self, url: str, *, heartbeat: float, lost_after: float) -> None:
        self.url = url
        self.heartbeat = heartbeat
        self.lost_after = lost_after
        self._app: procrastinate.App | None = None
        self._opening = asyncio.Lock()

    async def _open(self) -> procrastinate.App:
        async with self._opening:
            if self._app is None:
                import procrastinate

                connector = procrastinate.PsycopgConnector(
                    conninfo=self.url, min_size=1, max_size=POOL_MAX, name="betty-queue"
                )
                app = procrastinate.App(connector=connector)
                try:
                    await app.open_async()
                except Exception as exc:
                    raise StorageError(f"the run queue's database does not answer: {_clean(exc)}") from None
                self._app = app
            return self._app

    async def enqueue(self, run: QueuedRun) -> None:
        app = await self._open()
        try:
            await app.configure_task(TASK, queue=QUEUE).defer_async(run=run.as_job())
        except Exception as exc:
            raise StorageError(f"the run could not be queued: {_clean(exc)}") from None

    async def work(self, run_one: Callable[[QueuedRun], Awaitable[None]], concurrency: int) -> None:
        """Take queued runs, ``concurrency`` at a time, until cancelled; each job ends with its run."""
        app = await self._open()

        async def run(run: dict[str, Any]) -> None:
            await run_one(QueuedRun.of_job(run))

        app.task(name=TASK, queue=QUEUE, retry=0)(run)
        log.info("taking queued runs, %d at a time", concurrency)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._fail_stalled_jobs, app)
            await self._run_worker(app, concurrency)
            tg.cancel_scope.cancel()

    async def _run_worker(self, app: procrastinate.App, concurrency: int) -> None:
        await app.run_worker_async(
            queues=[QUEUE],
            name=f"betty-mcp {socket.gethostname()}:{os.getpid()}",
            concurrency=concurrency,
            install_signal_handlers=False,
            update_heartbeat_interval=self.heartbeat,
            stalled_worker_timeout=self.lost_after,
            delete_jobs="successful",  # the run's row keeps what it did; the job has nothing more to say
            shutdown_graceful_timeout=5,
        )

    async def _fail_stalled_jobs(self, app: procrastinate.App) -> None:
        """Jobs of workers silent for ``lost_after`` seconds: failed, never retried (their runs are
        marked ``worker_lost`` by the runs' own heartbeat)."""
        from procrastinate.jobs import Status

        manager = app.job_manager
        while True:
            await anyio.sleep(self.lost_after)
            try:
                stalled = await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=self.lost_after)
                for job in stalled:
                    await manager.finish_job(job, status=Status.FAILED, delete_job=False)
                    log.warning("queued job %s: its worker stopped answering; marked failed", job.id)
            except Exception as exc:  # the database went away for a moment: next round
                log.warning("looking for stalled jobs: %s", _clean(exc))

    async def aclose(self) -> None:
        if self._app is not None:
            app, self._app = self._app, None
            await app.connector.close_async()


def _clean(exc: BaseException) -> str:
    text = str(exc).strip()
    return scrub(text.splitlines()[0] if text else type(exc).__name__)
