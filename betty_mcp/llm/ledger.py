"""The usage ledger: every LLM call written to a local SQLite file, and the budgets enforced from it.

    ledger = Ledger(Path("~/.local/share/betty-mcp/usage.db").expanduser())
    held = await reserve(accounts, Budgets(per_day_usd=5.0), cost_usd=0.02, tokens=900)  # BudgetExceeded
    accounts.settle(UsageRecord(caller="llm_query", model="gpt-4", provider="openai", cost_usd=0.02), held)

Budgets are enforced by reservation: before a call is sent, its estimate is added to the ``reserved``
counter of every scope it draws on (the UTC day, its run, its user's UTC day) in one atomic step
that refuses when ``spent + reserved + estimate`` would pass a limit; when the call ends, its row is
written and the estimate released in favour of what it really cost. ``Accounts`` is what a storage
backend provides for this (``betty_mcp.store``: this SQLite file, or PostgreSQL shared by several
instances).

Rows written inside ``tagged(consensus_id=...)`` carry that id (every call of one ``llm_consensus`` fan-out,
whoever makes them: the context is inherited by the tasks started within it):

    with tagged(consensus_id="20250101-120000-ab12cd34"):
        await service.chat(...)          # its row has consensus_id set

Several processes (the server, skill subprocesses) may write the same file: the database runs in WAL mode
with a busy timeout and every write is one short statement. One `Ledger` may be shared by threads; a lock
serialises use of its connection. Times are stored as ISO-8601 UTC text, so they sort and group by day
as text; naive datetimes are refused. The schema grows by named migrations applied in order and recorded
in `_migrations`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from betty_mcp.core.errors import BudgetExceeded
from betty_mcp.core.holders import alive, this_process
from betty_mcp.core.identity import Caller, current_caller

__all__ = [
    "MIGRATIONS",
    "USAGE_VIEWS",
    "Accounts",
    "Budgets",
    "Claim",
    "Ledger",
    "Reservation",
    "Shortfall",
    "Spend",
    "UsageRecord",
    "UserBudget",
    "check_batch",
    "connect",
    "current_consensus_id",
    "day_scope",
    "format_usage",
    "migrate",
    "reserve",
    "tagged",
    "usage_report",
    "user_scope",
]

log = logging.getLogger(__name__)
# What a reservation gives back to its scope's counters (usd, tokens, scope).
_RELEASE = (
    "UPDATE budget_counters SET reserved_usd = MAX(0, reserved_usd - ?), "
    "reserved_tokens = MAX(0, reserved_tokens - ?) WHERE scope = ?"
)

BUSY_TIMEOUT_S = 10.0
CONFIG_HINT = "llm_router.limits.budgets.{field} in betty.yaml"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EPSILON = 1e-9  # so $4.98 + $0.02 against a $5.00 budget is not refused by float rounding


@dataclass(frozen=True)
class UsageRecord:
    """One LLM call as the ledger keeps it."""

    caller: str  # "llm_query", "agent_run", "cli", ...
    model: str  # the alias the router chose, e.g. "gpt-4" or "local/gemma"
    provider: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: the price is unknown (counted as $0 in totals, kept NULL)
    latency_ms: float = 0.0
    outcome: str = "ok"  # "ok" or an error kind: "rate_limit", "auth", "timeout", "budget", ...
    agent: str | None = None
    run_id: str | None = None
    fallbacks: tuple[dict, ...] = ()  # models tried before this one: {"model": ..., "error_kind": ...}
    error: str | None = None  # short, already scrubbed of secrets by the caller
    created_at: datetime | None = None  # timezone-aware; None means now (UTC)
    session_id: str | None = None  # the client's session (the gateway: X-Claude-Code-Session-Id)
    request_class: str | None = None  # the gateway's class: default, background, think, long_context
    consensus_id: str | None = None  # the llm_consensus fan-out this call belongs to (see ``tagged``)
    user: str | None = None  # who asked; None means the current caller (``core.identity``)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Spend:
    """Totals over a set of calls; `unpriced` counts calls whose cost is unknown (included as $0)."""

    calls: int
    tokens: int
    cost_usd: float
    unpriced: int = 0


# --- schema ----------------------------------------------------------------------------------------------


def m001_calls(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL,
            caller TEXT NOT NULL,
            agent TEXT,
            run_id TEXT,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            total_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL,
            latency_ms REAL NOT NULL DEFAULT 0,
            outcome TEXT NOT NULL DEFAULT 'ok',
            error TEXT
        )
        """
    )
    db.execute("CREATE INDEX calls_created_at ON calls (created_at)")


def m002_call_fallbacks(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN fallbacks TEXT NOT NULL DEFAULT '[]'")


def m003_run_and_agent_indexes(db: sqlite3.Connection) -> None:
    db.execute("CREATE INDEX calls_run_id ON calls (run_id, created_at)")
    db.execute("CREATE INDEX calls_agent ON calls (agent, created_at)")


def m004_gateway_session_and_class(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN session_id TEXT")
    db.execute("ALTER TABLE calls ADD COLUMN request_class TEXT")
    db.execute("CREATE INDEX calls_caller ON calls (caller, created_at)")


def m005_consensus_id(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE calls ADD COLUMN consensus_id TEXT")
    db.execute("CREATE INDEX calls_consensus_id ON calls (consensus_id)")


def m006_users(db: sqlite3.Connection) -> None:
    """Who made each call, and the per-user tokens (only their SHA-256; ``llm/users.py``)."""
    db.execute("ALTER TABLE calls ADD COLUMN user TEXT")
    db.execute("CREATE INDEX calls_user ON calls (user, created_at)")
    db.execute(
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT,
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )
        """
    )


def m007_budget_counters(db: sqlite3.Connection) -> None:
    """Per-scope counters the budgets reserve against (``day:YYYY-MM-DD``, ``run:<id>``), filled from
    the calls already recorded so an upgraded ledger keeps today's spend."""
    db.execute(
        """
        CREATE TABLE budget_counters (
            scope TEXT PRIMARY KEY,
            calls INTEGER NOT NULL DEFAULT 0,
            spent_usd REAL NOT NULL DEFAULT 0,
            spent_tokens INTEGER NOT NULL DEFAULT 0,
            reserved_usd REAL NOT NULL DEFAULT 0,
            reserved_tokens INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    for key in ("'day:' || substr(created_at, 1, 10)", "'run:' || run_id"):
        db.execute(
            "INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens) "
            f"SELECT {key}, COUNT(*), TOTAL(cost_usd), COALESCE(SUM(total_tokens), 0) FROM calls "
            f"WHERE {key} IS NOT NULL GROUP BY 1"
        )


def m008_runs(db: sqlite3.Connection) -> None:
    """Runs as the run tools show them, kept after they end (their traces stay JSON Lines files)."""
    db.execute(
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            agent TEXT NOT NULL,
            task TEXT NOT NULL,
            owner TEXT,
            status TEXT NOT NULL,
            error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            status_doc TEXT NOT NULL DEFAULT '{}',
            result_doc TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute("CREATE INDEX runs_created_at ON runs (created_at)")


def m009_user_budget_counters(db: sqlite3.Connection) -> None:
    """Each user's UTC day as a budget scope (``user:YYYY-MM-DD:<name>``), filled from the calls already
    recorded (a call from before users were counts as ``local``'s) so per-user budgets keep today's spend."""
    key = "'user:' || substr(created_at, 1, 10) || ':' || COALESCE(user, 'local')"
    db.execute(
        "INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens) "
        f"SELECT {key}, COUNT(*), TOTAL(cost_usd), COALESCE(SUM(total_tokens), 0) FROM calls GROUP BY 1 "
        "ON CONFLICT (scope) DO NOTHING"
    )


def m010_run_holders(db: sqlite3.Connection) -> None:
    """Which process holds a running run, so that another can tell when it died (``store.sqlite``)."""
    db.execute("ALTER TABLE runs ADD COLUMN holder TEXT")


def m011_reservation_holds(db: sqlite3.Connection) -> None:
    """Which process holds which reservations (``core.holders``): a killed one's are given back."""
    db.execute(
        "CREATE TABLE budget_holds (holder TEXT NOT NULL, scope TEXT NOT NULL, "
        "reserved_usd REAL NOT NULL DEFAULT 0, reserved_tokens INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (holder, scope))"
    )


# Applied in this order, each once, recorded by function name. Append only: never rename or reorder.
# m006 (users) sits before m007 as it shipped on its own branch first; a file that has m007 and m008
# but not m006 gets it (and m009) on its next open.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    m001_calls,
    m002_call_fallbacks,
    m003_run_and_agent_indexes,
    m004_gateway_session_and_class,
    m005_consensus_id,
    m006_users,
    m007_budget_counters,
    m008_runs,
    m009_user_budget_counters,
    m010_run_holders,
    m011_reservation_holds,
)


def _applied(db: sqlite3.Connection) -> set[str]:
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "_migrations" not in tables:
        return set()
    return {row[0] for row in db.execute("SELECT name FROM _migrations")}


def migrate(
    db: sqlite3.Connection, migrations: Sequence[Callable[[sqlite3.Connection], None]] = MIGRATIONS
) -> list[str]:
    """Apply the pending `migrations` in one transaction; return the names applied (empty if none).

    `db` must be in autocommit mode (``isolation_level=None``). The write lock is taken before the applied
    set is re-read, so two processes opening a fresh file at once migrate it exactly once.
    """
    if {m.__name__ for m in migrations} <= _applied(db):
        return []
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = _applied(db)
        names = []
        for migration in migrations:
            if migration.__name__ in done:
                continue
            migration(db)
            db.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (migration.__name__, _iso(_now()))
            )
            names.append(migration.__name__)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return names


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` (creating its folder) in autocommit mode, WAL journal, with a busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _use_wal(db)
        db.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch to WAL once per file. SQLite answers "locked" at once, without waiting out the busy timeout,
    when another process holds the file during the switch, so retry until the timeout ourselves."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# --- the ledger ------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"ledger times must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _start_of_day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _first_day(days: int) -> datetime:
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    return _start_of_day(_now()) - timedelta(days=days - 1)


_SPEND = "COUNT(*), COALESCE(SUM(total_tokens), 0), TOTAL(cost_usd), COUNT(*) - COUNT(cost_usd)"
_COLUMNS = (
    "caller, model, provider, prompt_tokens, completion_tokens, cost_usd, latency_ms, outcome, agent, "
    "run_id, fallbacks, error, created_at, session_id, request_class, consensus_id, user"
)
# The consensus id rows written in the current context carry unless their record names one (``tagged``).
_CONSENSUS_ID: ContextVar[str | None] = ContextVar("betty_mcp_consensus_id", default=None)


def current_consensus_id() -> str | None:
    """The consensus id rows recorded in this context carry (``tagged``), if any."""
    return _CONSENSUS_ID.get()


@contextmanager
def tagged(*, consensus_id: str) -> Iterator[None]:
    """Rows recorded within the block (in this task and the tasks it starts) carry ``consensus_id``."""
    token = _CONSENSUS_ID.set(consensus_id)
    try:
        yield
    finally:
        _CONSENSUS_ID.reset(token)


class StateFile:
    """The workspace's SQLite state file (calls, budgets, runs, users): opened and migrated on first
    use, one connection shared by threads under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The open, migrated connection, held under the lock for the duration of the `with`."""
        with self._lock:
            if self._db is None:
                db = connect(self.path)
                try:
                    migrate(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            yield self._db

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class Ledger(StateFile):
    """The LLM calls in the state file."""

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one query (other tables of this file: the store's runs)."""
        with self._connection() as db:
            return db.execute(sql, params).fetchall()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One write statement (other tables of this file: the store's runs)."""
        with self._connection() as db:
            db.execute(sql, params)

    def record(self, rec: UsageRecord, reservation: Reservation | None = None) -> int:
        """Write one call and count it in its scopes' budget counters, releasing what ``reservation``
        held, in one transaction; return the call's row id."""
        values = (
            _iso(rec.created_at or _now()),
            rec.caller,
            rec.agent,
            rec.run_id,
            rec.model,
            rec.provider,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.total_tokens,
            rec.cost_usd,
            rec.latency_ms,
            rec.outcome,
            rec.error,
            json.dumps(list(rec.fallbacks)),
            rec.session_id,
            rec.request_class,
            rec.consensus_id or _CONSENSUS_ID.get(),
            rec.user or current_caller().user,
        )
        sql = (
            "INSERT INTO calls (created_at, caller, agent, run_id, model, provider, prompt_tokens, "
            "completion_tokens, total_tokens, cost_usd, latency_ms, outcome, error, fallbacks, session_id, "
            "request_class, consensus_id, user) "
            f"VALUES ({', '.join('?' * len(values))})"
        )
        counts = settlement(rec, reservation)
        with self._transaction() as db:
            row = db.execute(sql, values).lastrowid
            db.executemany(
                "INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens) VALUES (?, 1, ?, ?) "
                "ON CONFLICT (scope) DO UPDATE SET calls = calls + 1, "
                "spent_usd = spent_usd + excluded.spent_usd, "
                "spent_tokens = spent_tokens + excluded.spent_tokens, "
                "reserved_usd = MAX(0, reserved_usd - ?), reserved_tokens = MAX(0, reserved_tokens - ?)",
                [(c.scope, c.cost_usd, c.tokens, c.release_usd, c.release_tokens) for c in counts],
            )
            _unhold(db, [(c.scope, c.release_usd, c.release_tokens) for c in counts])
        return row

    def reserve(self, claims: Sequence[Claim], reservation: Reservation) -> Shortfall | None:
        """Add ``reservation`` to every claim's scope unless one would pass its limit (then nothing
        changes and that claim's shortfall is returned). Atomic across processes: the file's write
        lock is held from the first read to the last write."""
        with self._transaction() as db:
            short = _shortfall(db, claims, reservation)
            if short is not None and _give_back_the_dead(db):  # refused: were the dead holding it?
                short = _shortfall(db, claims, reservation)
            if short is not None:
                return short
            for claim in claims:
                db.execute(
                    "INSERT INTO budget_counters (scope, reserved_usd, reserved_tokens) VALUES (?, ?, ?) "
                    "ON CONFLICT (scope) DO UPDATE SET reserved_usd = reserved_usd + excluded.reserved_usd, "
                    "reserved_tokens = reserved_tokens + excluded.reserved_tokens",
                    (claim.scope, reservation.cost_usd, reservation.tokens),
                )
                db.execute(
                    "INSERT INTO budget_holds (holder, scope, reserved_usd, reserved_tokens) "
                    "VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (holder, scope) DO UPDATE SET "
                    "reserved_usd = reserved_usd + excluded.reserved_usd, "
                    "reserved_tokens = reserved_tokens + excluded.reserved_tokens",
                    (this_process(), claim.scope, reservation.cost_usd, reservation.tokens),
                )
        return None

    def release(self, reservation: Reservation) -> None:
        """Give back what ``reservation`` held, for a call that was never sent."""
        if not reservation.held:
            return
        with self._transaction() as db:
            db.executemany(
                _RELEASE, [(reservation.cost_usd, reservation.tokens, scope) for scope in reservation.claimed]
            )
            _unhold(db, [(scope, reservation.cost_usd, reservation.tokens) for scope in reservation.claimed])

    def counted(self, scopes: Sequence[str]) -> dict[str, Spend]:
        """Each scope's calls, and its tokens and cost spent or reserved by calls in flight."""
        marks = ", ".join("?" * len(scopes))
        rows = self.rows(
            "SELECT scope, calls, spent_tokens + reserved_tokens, spent_usd + reserved_usd "
            f"FROM budget_counters WHERE scope IN ({marks})",
            list(scopes),
        )
        found = {scope: Spend(calls, tokens, cost) for scope, calls, tokens, cost in rows}
        return {scope: found.get(scope, Spend(0, 0, 0.0)) for scope in scopes}

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def spend(
        self,
        *,
        since: datetime | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
    ) -> Spend:
        """Totals over the calls matching every filter given (all calls if none)."""
        where, params = _where(since=since, run_id=run_id, agent=agent, consensus_id=consensus_id, user=user)
        calls, tokens, cost, unpriced = self.rows(f"SELECT {_SPEND} FROM calls{where}", params)[0]
        return Spend(calls=calls, tokens=tokens, cost_usd=cost, unpriced=unpriced)

    def spend_today(self, user: str | None = None) -> Spend:
        """Totals since midnight UTC (of one user's calls, if given)."""
        return self.spend(since=_start_of_day(_now()), user=user)

    def by_day(self, days: int = 30) -> list[dict]:
        """One row per UTC day with calls, newest first: {day, calls, tokens, cost_usd, unpriced, errors}."""
        rows = self.rows(
            f"SELECT substr(created_at, 1, 10) AS day, {_SPEND}, SUM(outcome != 'ok') FROM calls "
            "WHERE created_at >= ? GROUP BY day ORDER BY day DESC",
            (_iso(_first_day(days)),),
        )
        keys = ("day", "calls", "tokens", "cost_usd", "unpriced", "errors")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def by_model(self, days: int = 30) -> list[dict]:
        """One row per (model, provider), costliest first: {model, provider, calls, tokens, cost_usd,
        unpriced, errors}."""
        rows = self.rows(
            f"SELECT model, provider, {_SPEND}, SUM(outcome != 'ok') FROM calls WHERE created_at >= ? "
            "GROUP BY model, provider ORDER BY TOTAL(cost_usd) DESC, COUNT(*) DESC, model, provider",
            (_iso(_first_day(days)),),
        )
        keys = ("model", "provider", "calls", "tokens", "cost_usd", "unpriced", "errors")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def by_caller(self, days: int = 30) -> list[dict]:
        """One row per caller (llm_query, agent_run, gateway, ...), costliest first: {caller, calls, tokens,
        cost_usd, unpriced, errors, share} where share is the caller's fraction of the calls."""
        rows = self.rows(
            f"SELECT caller, {_SPEND}, SUM(outcome != 'ok') FROM calls WHERE created_at >= ? "
            "GROUP BY caller ORDER BY TOTAL(cost_usd) DESC, COUNT(*) DESC, caller",
            (_iso(_first_day(days)),),
        )
        keys = ("caller", "calls", "tokens", "cost_usd", "unpriced", "errors")
        found = [dict(zip(keys, row, strict=True)) for row in rows]
        total = sum(r["calls"] for r in found) or 1
        for r in found:
            r["share"] = r["calls"] / total
        return found

    def by_user(self, days: int = 30) -> list[dict]:
        """One row per user, costliest first: {user, calls, tokens, cost_usd, unpriced, errors}. Calls
        recorded before users were (schema m006) count as user ``local``."""
        rows = self.rows(
            f"SELECT COALESCE(user, 'local') AS who, {_SPEND}, SUM(outcome != 'ok') FROM calls "
            "WHERE created_at >= ? GROUP BY who ORDER BY TOTAL(cost_usd) DESC, COUNT(*) DESC, who",
            (_iso(_first_day(days)),),
        )
        keys = ("user", "calls", "tokens", "cost_usd", "unpriced", "errors")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def records(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """The most recent calls (of one run, session, consensus or user, if given), newest first."""
        where, params = _where(run_id=run_id, session_id=session_id, consensus_id=consensus_id, user=user)
        rows = self.rows(
            f"SELECT {_COLUMNS} FROM calls{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)
        )
        return [_to_record(row) for row in rows]

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _where(
    *,
    since: datetime | None = None,
    run_id: str | None = None,
    agent: str | None = None,
    session_id: str | None = None,
    consensus_id: str | None = None,
    user: str | None = None,
) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if user is not None:
        clauses.append("user = ?")
        params.append(user)
    if consensus_id is not None:
        clauses.append("consensus_id = ?")
        params.append(consensus_id)
    if session_id is not None:
        clauses.append("session_id = ?")
        params.append(session_id)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(_iso(since))
    if run_id is not None:
        clauses.append("run_id = ?")
        params.append(run_id)
    if agent is not None:
        clauses.append("agent = ?")
        params.append(agent)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _to_record(row: tuple) -> UsageRecord:
    fields = dict(zip(_COLUMNS.split(", "), row, strict=True))
    fields["fallbacks"] = tuple(json.loads(fields["fallbacks"]))
    fields["created_at"] = datetime.strptime(fields["created_at"], _TIME_FORMAT).replace(tzinfo=UTC)
    return UsageRecord(**fields)


# --- budgets ---------------------------------------------------------------------------------------------


def day_scope(moment: datetime) -> str:
    """The budget scope of a UTC day: ``day:2026-11-30``."""
    return "day:" + moment.astimezone(UTC).date().isoformat()


def run_scope(run_id: str) -> str:
    return "run:" + run_id


def user_scope(day: str, user: str) -> str:
    """The budget scope of one user's UTC day (``day`` a ``day_scope``): ``user:2026-11-30:ada``."""
    return f"user:{day.removeprefix('day:')}:{user}"


def _scopes(day: str, run_id: str | None, user: str) -> tuple[str, ...]:
    return (day, run_scope(run_id), user_scope(day, user)) if run_id else (day, user_scope(day, user))


def scopes_of(rec: UsageRecord) -> tuple[str, ...]:
    """The scopes a call counts in: its UTC day, its run if it has one, and its user's day."""
    return _scopes(day_scope(rec.created_at or _now()), rec.run_id, rec.user or current_caller().user)


@dataclass(frozen=True)
class Claim:
    """One scope's limits a call must fit in (None: no limit of that kind). ``setting`` is where
    betty.yaml sets a user's limits (``llm_router.limits.budgets.per_user``, ``roles.<r>.budgets``)."""

    scope: str
    limit_usd: float | None
    limit_tokens: int | None
    setting: str | None = None

    def refuses(self, counted: Spend, reservation: Reservation) -> bool:
        """True when ``counted`` (spent plus reserved) and this call's estimate pass a limit."""
        return _over(self.limit_usd, counted.cost_usd, reservation.cost_usd) or _over(
            self.limit_tokens, counted.tokens, reservation.tokens
        )

    def names(self) -> tuple[str, str, str]:
        """(the budget's name in errors, whose spending it counts, its name for people)."""
        if self.scope.startswith("run:"):
            return "per_run", f"by run {self.scope.removeprefix('run:')}", "run"
        if self.scope.startswith("user:"):
            user = self.scope.split(":", 2)[2]
            return "per_user_day", f"by user {user} today (UTC)", "user's daily"
        return "per_day", "today (UTC)", "daily"

    def hint(self, tokens: bool) -> str:
        """Where betty.yaml sets the limit (of tokens, or of USD) this claim was refused by."""
        if self.setting is not None:
            return f"{self.setting}.{'day_tokens' if tokens else 'day_usd'}"
        budget = self.names()[0]
        return _hint(f"{budget}_tokens" if tokens else f"{budget}_usd")


@dataclass(frozen=True)
class Reservation:
    """A call's estimate, set aside in the ``claimed`` scopes before it is sent; ``scopes`` are all the
    scopes its row will count in (its day, its run, its user's day), chosen when it started."""

    scopes: tuple[str, ...]
    cost_usd: float
    tokens: int
    claimed: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        return bool(self.claimed)


@dataclass(frozen=True)
class Shortfall:
    """The claim a reservation did not fit in, with what was counted there (spent plus reserved)."""

    claim: Claim
    counted: Spend


@dataclass(frozen=True)
class Count:
    """What one call adds to one scope's counters, and what it releases there."""

    scope: str
    cost_usd: float
    tokens: int
    release_usd: float
    release_tokens: int


def _shortfall(db: sqlite3.Connection, claims: Sequence[Claim], reservation: Reservation) -> Shortfall | None:
    """The first claim ``reservation`` would pass, with what its scope counts now; None if none."""
    for claim in claims:
        row = db.execute(
            "SELECT calls, spent_tokens + reserved_tokens, spent_usd + reserved_usd "
            "FROM budget_counters WHERE scope = ?",
            (claim.scope,),
        ).fetchone()
        counted = Spend(*row) if row else Spend(0, 0, 0.0)
        if claim.refuses(counted, reservation):
            return Shortfall(claim, counted)
    return None


def _unhold(db: sqlite3.Connection, released: Sequence[tuple[str, float, int]]) -> None:
    """This process no longer holds these (scope, usd, tokens); rows emptied are dropped."""
    held = [(usd, tokens, this_process(), scope) for scope, usd, tokens in released if usd or tokens]
    if held:
        db.executemany(
            "UPDATE budget_holds SET reserved_usd = MAX(0, reserved_usd - ?), "
            "reserved_tokens = MAX(0, reserved_tokens - ?) WHERE holder = ? AND scope = ?",
            held,
        )
        db.execute(
            "DELETE FROM budget_holds WHERE holder = ? AND reserved_usd <= 1e-12 AND reserved_tokens <= 0",
            (this_process(),),
        )


def _give_back_the_dead(db: sqlite3.Connection) -> bool:
    """Release what processes that are gone (killed mid-call) still held; whether there was any."""
    holders = [row[0] for row in db.execute("SELECT DISTINCT holder FROM budget_holds")]
    dead = [holder for holder in holders if not alive(holder)]
    for holder in dead:
        held = db.execute(
            "SELECT scope, reserved_usd, reserved_tokens FROM budget_holds WHERE holder = ?", (holder,)
        ).fetchall()
        db.executemany(_RELEASE, [(usd, tokens, scope) for scope, usd, tokens in held])
        db.execute("DELETE FROM budget_holds WHERE holder = ?", (holder,))
        log.warning("budgets: gave back what a process that is gone still held (%s)", holder)
    return bool(dead)


def settlement(rec: UsageRecord, reservation: Reservation | None) -> list[Count]:
    """The counter changes a finished call makes: its cost in every scope, its estimate released where
    it was reserved."""
    scopes = reservation.scopes if reservation else scopes_of(rec)
    claimed = set(reservation.claimed) if reservation else set()
    return [
        Count(
            scope,
            rec.cost_usd or 0.0,
            rec.total_tokens,
            reservation.cost_usd if reservation and scope in claimed else 0.0,
            reservation.tokens if reservation and scope in claimed else 0,
        )
        for scope in scopes
    ]


class Accounts(Protocol):
    """What a storage backend does for the ledger and the budgets (see ``betty_mcp.store``)."""

    async def reserve(self, claims: Sequence[Claim], reservation: Reservation) -> Shortfall | None:
        """Hold ``reservation`` in every claim's scope atomically, or hold nothing and say which failed."""
        ...

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose call was never sent (may complete later, in the background)."""
        ...

    def settle(self, record: UsageRecord, reservation: Reservation | None) -> None:
        """Record a call and release its reservation (may complete later, in the background)."""
        ...

    async def counted(self, scopes: Sequence[str]) -> dict[str, Spend]:
        """Each scope's spent plus reserved totals."""
        ...

    async def spend(
        self,
        *,
        since: datetime | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
    ) -> Spend: ...


@dataclass(frozen=True)
class UserBudget:
    """What one user may spend in a UTC day; ``setting`` is where betty.yaml sets it (for messages)."""

    day_usd: float | None = None
    day_tokens: int | None = None
    setting: str = "llm_router.limits.budgets.per_user"


@dataclass(frozen=True)
class Budgets:
    """Spending limits; None means no limit. A limit already reached refuses every further call, even a
    free one, so a limit of 0 refuses all calls. Run budgets apply only to calls that carry a run id.
    The user budget is the current caller's (``core.identity``): their role's if it has one, else
    ``per_user``; it counts only that user's calls (their own day scope, ``user_scope``)."""

    per_call_usd: float | None = None
    per_run_usd: float | None = None
    per_day_usd: float | None = None
    per_run_tokens: int | None = None
    per_day_tokens: int | None = None
    per_user: UserBudget | None = None
    per_role: Mapping[str, UserBudget] = field(default_factory=dict)

    def user_budget(self, caller: Caller) -> UserBudget | None:
        """``caller``'s daily budget: their role's if it sets one, else ``per_user`` (None: no limit)."""
        budget = (self.per_role.get(caller.role) if caller.role else None) or self.per_user
        if budget is None or (budget.day_usd is None and budget.day_tokens is None):
            return None
        return budget

    def claims(self, run_id: str | None, day: str, caller: Caller | None = None) -> list[Claim]:
        """The scopes with a limit that a call of ``run_id`` on ``day`` (a ``day_scope``) draws on, for
        ``caller`` (default: the current one): the day, the run, the user's day."""
        caller = caller or current_caller()
        found = []
        if self.per_day_usd is not None or self.per_day_tokens is not None:
            found.append(Claim(day, self.per_day_usd, self.per_day_tokens))
        if run_id is not None and (self.per_run_usd is not None or self.per_run_tokens is not None):
            found.append(Claim(run_scope(run_id), self.per_run_usd, self.per_run_tokens))
        mine = self.user_budget(caller)
        if mine is not None:
            found.append(Claim(user_scope(day, caller.user), mine.day_usd, mine.day_tokens, mine.setting))
        return found

    def check_call(self, estimated_cost_usd: float) -> None:
        """The per-call budget, which needs no counter."""
        if self.per_call_usd is not None and estimated_cost_usd > self.per_call_usd + _EPSILON:
            raise BudgetExceeded(
                f"per-call budget of {_usd(self.per_call_usd)} exceeded: this call is estimated at "
                f"{_usd(estimated_cost_usd)}; raise {_hint('per_call_usd')}",
                budget="per_call",
            )


async def reserve(
    accounts: Accounts,
    budgets: Budgets,
    *,
    cost_usd: float = 0.0,
    tokens: int = 0,
    run_id: str | None = None,
) -> Reservation:
    """Set a call's estimate aside in every budget it draws on (the day, its run, the current caller's
    day), or raise BudgetExceeded naming the budget, the amounts and the setting to raise. No limits
    configured: no storage round trip at all."""
    budgets.check_call(cost_usd)
    caller = current_caller()
    day = day_scope(_now())
    claims = budgets.claims(run_id, day, caller)
    reservation = Reservation(
        _scopes(day, run_id, caller.user), cost_usd, tokens, tuple(c.scope for c in claims)
    )
    if claims and (short := await accounts.reserve(claims, reservation)) is not None:
        claim, counted = short.claim, short.counted
        budget, where, name = claim.names()
        _refuse_past(
            claim.limit_usd,
            counted.cost_usd,
            cost_usd,
            budget,
            f"{name} budget",
            where,
            setting=claim.hint(tokens=False),
        )
        _refuse_past(
            claim.limit_tokens,
            counted.tokens,
            tokens,
            f"{budget}_tokens",
            f"{name} token budget",
            where,
            setting=claim.hint(tokens=True),
        )
    return reservation


async def check_batch(
    accounts: Accounts,
    budgets: Budgets,
    *,
    call_costs: Sequence[float],
    estimated_tokens: int = 0,
    run_id: str | None = None,
    what: str = "these calls",
) -> None:
    """Raise BudgetExceeded if calls made together (a fan-out), each at its worst case, could pass a
    limit: the per-call budget against the costliest call, the run, day and user budgets against their
    sum (spent plus reserved by calls in flight). The message names the budget, by how much it would be
    passed, and the setting to raise. Each call still reserves its own estimate when it is sent."""
    total = sum(call_costs)
    worst = max(call_costs, default=0.0)
    if budgets.per_call_usd is not None and worst > budgets.per_call_usd + _EPSILON:
        raise BudgetExceeded(
            f"{what} refused: the per-call budget of {_usd(budgets.per_call_usd)} would be passed by "
            f"{_usd(worst - budgets.per_call_usd)} (its costliest call may cost up to {_usd(worst)}); "
            f"raise {_hint('per_call_usd')}",
            budget="per_call",
        )
    claims = budgets.claims(run_id, day_scope(_now()))
    counted = await accounts.counted([c.scope for c in claims]) if claims else {}
    for claim in claims:
        spend = counted[claim.scope]
        budget, where, name = claim.names()
        for tokens, limit in ((False, claim.limit_usd), (True, claim.limit_tokens)):
            spent, estimate = (spend.tokens, estimated_tokens) if tokens else (spend.cost_usd, total)
            if limit is None or not _over(limit, spent, estimate):
                continue

            def amount(value: float, tokens: bool = tokens) -> str:
                return f"{int(value):,} tokens" if tokens else _usd(value)

            raise BudgetExceeded(
                f"{what} refused: the {name}{' token' if tokens else ''} budget of {amount(limit)} would "
                f"be passed by {amount(spent + estimate - limit)} ({amount(spent)} used {where} + up to "
                f"{amount(estimate)} for {what}); raise {claim.hint(tokens)}",
                budget=f"{budget}_tokens" if tokens else budget,
            )


def _hint(field_name: str) -> str:
    return CONFIG_HINT.format(field=field_name)


def _refuse_past(
    limit: float | None,
    spent: float,
    estimate: float,
    budget: str,
    what: str,
    where: str,
    *,
    setting: str | None = None,
) -> None:
    """BudgetExceeded when ``spent`` plus this call's ``estimate`` passes ``limit`` (USD, or tokens for
    the ``*_tokens`` budgets), saying how much, by whom, and which setting to raise (default: the
    ``llm_router.limits.budgets`` field named after ``budget``)."""
    if not _over(limit, spent, estimate):
        return
    if budget.endswith("_tokens"):
        field_name = budget
        amount = f"of {limit:,} reached: {spent:,} tokens used {where} + ~{estimate:,} for this call"
    else:
        field_name = f"{budget}_usd"
        amount = (
            f"of {_usd(limit or 0)} reached: {_usd(spent)} spent {where} + ~{_usd(estimate)} for this call"
        )
    raise BudgetExceeded(f"{what} {amount}; raise {setting or _hint(field_name)}", budget=budget)


def _over(limit: float | None, spent: float, estimate: float) -> bool:
    if limit is None:
        return False
    return spent >= limit - _EPSILON or spent + estimate > limit + _EPSILON


def _usd(amount: float) -> str:
    if amount == 0 or abs(amount) >= 0.01:
        return f"${amount:,.2f}"
    return f"${amount:.4f}" if abs(amount) >= 0.0001 else "<$0.0001"


# --- reports ---------------------------------------------------------------------------------------------


USAGE_VIEWS = ("day", "model", "caller", "user")


def usage_report(ledger: Ledger, days: int = 30, by: str | None = None) -> dict:
    """The `betty-mcp usage --json` document: totals, then per day, model, caller and user (or only
    the one view ``by`` names, one of ``USAGE_VIEWS``)."""
    if by is not None and by not in USAGE_VIEWS:
        raise ValueError(f"by must be one of {', '.join(USAGE_VIEWS)}, got {by!r}")
    since = _first_day(days)
    total = ledger.spend(since=since)
    return {
        "days": days,
        "since": since.date().isoformat(),
        "total": {
            "calls": total.calls,
            "tokens": total.tokens,
            "cost_usd": total.cost_usd,
            "unpriced": total.unpriced,
        },
        **{f"by_{view}": getattr(ledger, f"by_{view}")(days) for view in USAGE_VIEWS if by in (None, view)},
    }


def format_usage(report: dict, where: str) -> str:
    """The `betty-mcp usage` text of a ``usage_report``: a table per day, per model, per caller and per
    user, columns aligned (only those the report has: ``by``); ``where`` names the database."""
    days = report["days"]
    span = "today" if days == 1 else f"the last {days} days"
    if not report["total"]["calls"]:
        return f"No LLM calls recorded in {span} (UTC), in {where}.\n"
    total = report["total"]
    tables = []
    if "by_day" in report:
        rows = [[d["day"], *_counts(d), _usd(d["cost_usd"]), f"{d['errors']:,}"] for d in report["by_day"]]
        rows.append(["total", *_counts(total), _usd(total["cost_usd"]), ""])
        tables.append(_table(["day", "calls", "tokens", "cost", "errors"], rows))
    if "by_model" in report:
        rows = [
            [m["model"], m["provider"], *_counts(m), _usd(m["cost_usd"]), f"{m['errors']:,}"]
            for m in report["by_model"]
        ]
        tables.append(_table(["model", "provider", "calls", "tokens", "cost", "errors"], rows, left=2))
    for view in ("caller", "user"):
        if f"by_{view}" not in report:
            continue
        shares = _shares(report[f"by_{view}"])
        rows = [
            [
                r[view],
                f"{r['calls']:,}",
                f"{share:.0%}",
                f"{r['tokens']:,}",
                _usd(r["cost_usd"]),
                f"{r['errors']:,}",
            ]
            for r, share in zip(report[f"by_{view}"], shares, strict=True)
        ]
        tables.append(_table([view, "calls", "share", "tokens", "cost", "errors"], rows))
    parts = [f"LLM usage in {span} (UTC days since {report['since']})"]
    for table in tables:
        parts += ["", table]
    if total["unpriced"]:
        parts += ["", f"{total['unpriced']:,} call(s) had no known price and count as $0."]
    return "\n".join(parts) + "\n"


def _shares(rows: list[dict]) -> list[float]:
    total = sum(r["calls"] for r in rows) or 1
    return [r["calls"] / total for r in rows]


def _counts(row: dict) -> list[str]:
    return [f"{row['calls']:,}", f"{row['tokens']:,}"]


def _table(headers: list[str], rows: list[list[str]], *, left: int = 1) -> str:
    """Plain-text columns: the first `left` columns left-aligned, the rest (numbers) right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
