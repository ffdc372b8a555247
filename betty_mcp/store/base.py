"""The storage interface: what betty-mcp keeps beyond one call, whichever database keeps it.

One ``Store`` holds the usage ledger (every LLM call, the gateway's and consensus fan-outs' included),
the budget counters calls reserve against (``Accounts``), the runs the run tools show, each run's
events (its trace), and the HTTP front end's users (their tokens' hashes). Two implementations:
``SqliteStore`` (the workspace's file, the default) and ``PostgresStore`` (``database_url``: shared by
every instance of a team service).

    store = open_store(settings)           # betty_mcp.store
    held = await reserve(store, budgets, cost_usd=0.01, tokens=500)
    store.settle(UsageRecord(...), held)   # may be written in the background: ``await store.flush()``
    await store.save_run(RunRecord(...))
    await store.aclose()

Writes that nothing waits for (``settle``, ``release``, ``append_event``) are synchronous calls that
may complete later; ``flush`` waits for them, and every read of this process sees its own writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from betty_mcp.core.identity import LOCAL
from betty_mcp.llm.ledger import Accounts, UsageRecord
from betty_mcp.llm.users import UserAccounts

__all__ = ["CANCEL_CHANNEL", "LEGACY_USER", "MigrationStatus", "RunRecord", "SharedRuns", "Store", "now"]

CANCEL_CHANNEL = "betty_run_cancel"  # NOTIFY payload: the id of a run to cancel, wherever it runs
LEGACY_USER = LOCAL.user  # the user of calls, runs and traces from before there were users


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RunRecord:
    """A run as every instance sees it: what was asked, where it stands, and what it showed last.

    ``status_doc`` is what ``run_status`` shows, ``result_doc`` what ``run_result`` shows (the partial
    result while it runs)."""

    run_id: str
    kind: str  # "agent" or "consensus"
    agent: str
    task: str
    status: str = (
        "running"  # "queued" until a worker takes it (PostgreSQL), then "running", then how it ended
    )
    owner: str | None = None  # who started it (core.identity's current caller)
    error: str | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    status_doc: dict[str, Any] = field(default_factory=dict)
    result_doc: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status not in ("queued", "running")


@dataclass(frozen=True)
class MigrationStatus:
    """Which of a database's migrations are applied, and which are not yet."""

    backend: str
    where: str  # a path, or a URL with its password redacted
    applied: tuple[str, ...]
    pending: tuple[str, ...]

    @property
    def current(self) -> bool:
        return not self.pending


class SharedRuns(Protocol):
    """What instances sharing a database tell each other about runs (PostgreSQL only)."""

    async def heartbeat(self, run_ids: Sequence[str]) -> None:
        """These runs are still held here."""
        ...

    async def claim(self, run_id: str) -> bool:
        """Take a queued run (status ``queued``) to run it here; True for exactly one taker."""
        ...

    async def cancel_queued(self, run_id: str) -> RunRecord | None:
        """Cancel a run still queued; its row, or None if someone took it (or it ended) first."""
        ...

    async def reap(self, lost_after: float) -> list[str]:
        """Mark running runs whose holder has not said so for ``lost_after`` seconds as failed
        (``worker_lost``); their ids."""
        ...

    async def notify(self, channel: str, payload: str) -> None: ...

    async def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """Call ``heard(payload)`` for every notification on ``channel``, until cancelled."""
        ...


class Store(Accounts, UserAccounts, Protocol):
    """Everything betty-mcp keeps; see the module's docstring. The users (``UserAccounts``) are the HTTP
    front end's per-user tokens, only their SHA-256 kept (``llm.users``)."""

    backend: str  # "sqlite" or "postgresql"
    where: str  # shown to people: a path, or a URL with its password redacted

    # -- lifecycle and schema
    async def upgrade(self) -> list[str]:
        """Apply pending migrations (once per database, whoever else is upgrading); the names applied."""
        ...

    async def status(self) -> MigrationStatus: ...

    async def flush(self) -> None:
        """Wait until every write made so far by this process is stored."""
        ...

    async def aclose(self) -> None:
        """Flush, then let go of connections."""
        ...

    # -- the ledger
    async def records(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """The most recent calls (of one run, session, consensus or user, if given), newest first."""
        ...

    async def usage(self, days: int = 30, by: str | None = None) -> dict[str, Any]:
        """The ``betty-mcp usage --json`` document (``llm.ledger.usage_report``'s shape): every view of
        ``USAGE_VIEWS``, or only the one ``by`` names."""
        ...

    # -- runs and their events
    async def save_run(self, run: RunRecord) -> None:
        """Insert or replace a run's row."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        ...

    def append_event(self, run_id: str, event: dict[str, Any]) -> None:
        """Add one event (already scrubbed of secrets) to a run's trace."""
        ...

    async def events(self, run_id: str) -> list[dict[str, Any]] | None:
        """A run's trace in order, or None when the run has none."""
        ...

    async def traced_runs(self, limit: int = 50, *, user: str | None = None) -> Sequence[str]:
        """Ids of the runs with a trace (only those ``user`` started, if given), most recent first."""
        ...

    async def trace_user(self, run_id: str) -> str | None:
        """Who started a traced run (its ``run_started`` event's user; ``local`` for a trace older than
        users), or None when the run has no trace."""
        ...

    def trace_location(self, run_id: str) -> str:
        """Where a person finds a run's trace: a file, or its ``betty://runs/<id>`` resource."""
        ...

    def shared_runs(self) -> SharedRuns | None:
        """None when runs are this process's alone (SQLite); else how instances coordinate them."""
        ...
