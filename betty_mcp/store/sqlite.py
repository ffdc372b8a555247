"""The default store: the workspace's SQLite file (``usage.sqlite``) and JSON Lines traces beside it.

Each statement is short and runs inline (a WAL write takes well under a millisecond; a worker-thread
hop would cost more), so writes are done when the call returns and ``flush`` has nothing to wait for.
The file's migrations are the ledger's (``llm.ledger.MIGRATIONS``); runs live in its ``runs`` table,
users in its ``users`` table (``llm.users.UserStore``), traces stay ``<runs_dir>/<run_id>.jsonl`` as
before (a trace's user is its first line's).

    store = SqliteStore(settings.ledger_path, settings.runs_dir)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from betty_mcp.core.holders import alive, this_process
from betty_mcp.llm.ledger import (
    MIGRATIONS,
    Claim,
    Ledger,
    Reservation,
    Shortfall,
    Spend,
    UsageRecord,
    connect,
    usage_report,
)
from betty_mcp.llm.users import StoredUser, UserStore
from betty_mcp.store.base import LEGACY_USER, MigrationStatus, RunRecord

_RUN_COLUMNS = (
    "run_id, kind, agent, task, owner, status, error, created_at, updated_at, status_doc, result_doc"
)


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: Path, runs_dir: Path) -> None:
        self.ledger = Ledger(path)
        self.users = UserStore(path)
        self.runs_dir = runs_dir
        self.where = str(path)

    # -- lifecycle and schema

    async def upgrade(self) -> list[str]:
        from betty_mcp.llm.ledger import migrate

        self.ledger.close()
        self.users.close()
        db = connect(self.ledger.path)
        try:
            return migrate(db)
        finally:
            db.close()

    async def status(self) -> MigrationStatus:
        names = tuple(m.__name__ for m in MIGRATIONS)
        applied: tuple[str, ...] = ()
        if self.ledger.path.exists():
            db = connect(self.ledger.path)
            try:
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "_migrations" in tables:
                    applied = tuple(r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid"))
            finally:
                db.close()
        return MigrationStatus(self.backend, self.where, applied, tuple(n for n in names if n not in applied))

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        self.ledger.close()
        self.users.close()

    # -- accounts

    async def reserve(self, claims: Sequence[Claim], reservation: Reservation) -> Shortfall | None:
        return self.ledger.reserve(claims, reservation)

    def release(self, reservation: Reservation) -> None:
        self.ledger.release(reservation)

    def settle(self, record: UsageRecord, reservation: Reservation | None) -> None:
        self.ledger.record(record, reservation)

    async def counted(self, scopes: Sequence[str]) -> dict[str, Spend]:
        return self.ledger.counted(scopes)

    async def spend(
        self,
        *,
        since: datetime | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
    ) -> Spend:
        return self.ledger.spend(
            since=since, run_id=run_id, agent=agent, consensus_id=consensus_id, user=user
        )

    async def records(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        return self.ledger.records(
            run_id=run_id, session_id=session_id, consensus_id=consensus_id, user=user, limit=limit
        )

    async def usage(self, days: int = 30, by: str | None = None) -> dict[str, Any]:
        return usage_report(self.ledger, days, by)

    # -- runs

    async def save_run(self, run: RunRecord) -> None:
        """Written with this process as its holder (``core.holders`` tells another when it died)."""
        values = (
            run.run_id,
            run.kind,
            run.agent,
            run.task,
            run.owner,
            run.status,
            run.error,
            _iso(run.created_at),
            _iso(run.updated_at),
            json.dumps(run.status_doc, default=str),
            json.dumps(run.result_doc, default=str),
            this_process(),
        )
        self.ledger.execute(
            f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}, holder) VALUES ({', '.join('?' * len(values))})",
            values,
        )

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = self.ledger.rows(f"SELECT {_RUN_COLUMNS}, holder FROM runs WHERE run_id = ?", (run_id,))
        return self._checked(rows[0]) if rows else None

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        rows = self.ledger.rows(
            f"SELECT {_RUN_COLUMNS}, holder FROM runs ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [self._checked(row) for row in rows]

    def _checked(self, row: tuple) -> RunRecord:
        """The run; a running one whose process is gone (killed, crashed) is marked failed
        (``worker_lost``) now, once, and never run again."""
        run = _run(row[:-1])
        if run.status != "running" or alive(row[-1]):
            return run
        why = "worker_lost: the betty-mcp process running it is gone (killed, crashed); it was not run again"
        lost = {"status": "failed", "error": why, "reason": "worker_lost"}
        self.ledger.execute(
            "UPDATE runs SET status = 'failed', error = ?, updated_at = ?, "
            "status_doc = json_patch(status_doc, ?), result_doc = json_patch(result_doc, ?) "
            "WHERE run_id = ? AND status = 'running'",
            (why, _iso(datetime.now(UTC)), json.dumps(lost), json.dumps(lost), run.run_id),
        )
        run.status, run.error = "failed", why
        run.status_doc = {**run.status_doc, **lost}
        run.result_doc = {**run.result_doc, **lost}
        return run

    # -- traces: JSON Lines files, one per run

    def _trace(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.jsonl"

    def append_event(self, run_id: str, event: dict[str, Any]) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with self._trace(run_id).open("a", encoding="utf-8") as f:
            f.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")

    async def events(self, run_id: str) -> list[dict[str, Any]] | None:
        path = self._trace(run_id)
        if not path.is_file():
            return None
        found: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:  # a line cut short by a crash
                    continue
                if isinstance(event, dict):
                    found.append(event)
        return found

    async def traced_runs(self, limit: int = 50, *, user: str | None = None) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        paths = sorted(self.runs_dir.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
        if user is not None:
            paths = [p for p in paths if _first_user(p) == user]
        return [p.stem for p in paths[:limit]]

    async def trace_user(self, run_id: str) -> str | None:
        path = self._trace(run_id)
        return _first_user(path) if path.is_file() else None

    def trace_location(self, run_id: str) -> str:
        return str(self._trace(run_id))

    def shared_runs(self) -> None:
        return None  # one process holds its runs; a restart keeps the finished ones

    # -- users: the users table of the same file (``llm.users.UserStore``)

    async def add_user(self, name: str, role: str | None, token_sha256: str) -> None:
        self.users.insert(name, role, token_sha256)

    async def revoke_user(self, name: str) -> bool:
        return self.users.revoke(name)

    async def list_users(self) -> list[StoredUser]:
        return self.users.list()

    async def find_user(self, token_sha256: str) -> StoredUser | None:
        return self.users.find_digest(token_sha256)

    async def any_active_user(self) -> bool:
        return self.users.any_active()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _first_user(path: Path) -> str:
    """The user who started a traced run: its first line's ``user`` (``run_started`` comes first)."""
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return LEGACY_USER
    user = first.get("user") if isinstance(first, dict) else None
    return user if isinstance(user, str) and user else LEGACY_USER


def _run(row: tuple) -> RunRecord:
    fields = dict(zip(_RUN_COLUMNS.split(", "), row, strict=True))
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    fields["updated_at"] = datetime.fromisoformat(fields["updated_at"])
    fields["status_doc"] = json.loads(fields["status_doc"])
    fields["result_doc"] = json.loads(fields["result_doc"])
    return RunRecord(**fields)
