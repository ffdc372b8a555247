"""The usage ledger: every LLM call written to a local SQLite file, and the budgets enforced from it.

    ledger = Ledger(Path("~/.local/share/betty-mcp/usage.db").expanduser())
    Budgets(per_day_usd=5.0).check(ledger, estimated_cost_usd=0.02)   # raises BudgetExceeded
    ledger.record(UsageRecord(caller="llm_query", model="gpt-4", provider="openai", cost_usd=0.02))

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
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from betty_mcp.core.errors import BudgetExceeded
from betty_mcp.core.identity import current_caller

__all__ = [
    "MIGRATIONS",
    "Budgets",
    "Ledger",
    "Spend",
    "UsageRecord",
    "UserBudget",
    "connect",
    "format_usage",
    "migrate",
    "tagged",
    "usage_report",
]

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


# Applied in this order, each once, recorded by function name. Append only: never rename or reorder.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    m001_calls,
    m002_call_fallbacks,
    m003_run_and_agent_indexes,
    m004_gateway_session_and_class,
    m005_consensus_id,
    m006_users,
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


@contextmanager
def tagged(*, consensus_id: str) -> Iterator[None]:
    """Rows recorded within the block (in this task and the tasks it starts) carry ``consensus_id``."""
    token = _CONSENSUS_ID.set(consensus_id)
    try:
        yield
    finally:
        _CONSENSUS_ID.reset(token)


class Ledger:
    """The SQLite file of LLM calls. Opened and migrated on first use; safe to share between threads."""

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

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._connection() as db:
            return db.execute(sql, params).fetchall()

    def record(self, rec: UsageRecord) -> int:
        """Write one call; return its row id."""
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
        with self._connection() as db:
            return db.execute(sql, values).lastrowid

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
        calls, tokens, cost, unpriced = self._rows(f"SELECT {_SPEND} FROM calls{where}", params)[0]
        return Spend(calls=calls, tokens=tokens, cost_usd=cost, unpriced=unpriced)

    def spend_today(self, user: str | None = None) -> Spend:
        """Totals since midnight UTC (of one user's calls, if given)."""
        return self.spend(since=_start_of_day(_now()), user=user)

    def by_day(self, days: int = 30) -> list[dict]:
        """One row per UTC day with calls, newest first: {day, calls, tokens, cost_usd, unpriced, errors}."""
        rows = self._rows(
            f"SELECT substr(created_at, 1, 10) AS day, {_SPEND}, SUM(outcome != 'ok') FROM calls "
            "WHERE created_at >= ? GROUP BY day ORDER BY day DESC",
            (_iso(_first_day(days)),),
        )
        keys = ("day", "calls", "tokens", "cost_usd", "unpriced", "errors")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def by_model(self, days: int = 30) -> list[dict]:
        """One row per (model, provider), costliest first: {model, provider, calls, tokens, cost_usd,
        unpriced, errors}."""
        rows = self._rows(
            f"SELECT model, provider, {_SPEND}, SUM(outcome != 'ok') FROM calls WHERE created_at >= ? "
            "GROUP BY model, provider ORDER BY TOTAL(cost_usd) DESC, COUNT(*) DESC, model, provider",
            (_iso(_first_day(days)),),
        )
        keys = ("model", "provider", "calls", "tokens", "cost_usd", "unpriced", "errors")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def by_caller(self, days: int = 30) -> list[dict]:
        """One row per caller (llm_query, agent_run, gateway, ...), costliest first: {caller, calls, tokens,
        cost_usd, unpriced, errors, share} where share is the caller's fraction of the calls."""
        rows = self._rows(
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
        rows = self._rows(
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
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM calls{where} ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)
        )
        return [_to_record(row) for row in rows]

    def close(self) -> None:
        """Close the connection; a later call opens it again."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

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
    ``per_user``; it counts only that user's calls."""

    per_call_usd: float | None = None
    per_run_usd: float | None = None
    per_day_usd: float | None = None
    per_run_tokens: int | None = None
    per_day_tokens: int | None = None
    per_user: UserBudget | None = None
    per_role: Mapping[str, UserBudget] = field(default_factory=dict)

    def _user_budget(self) -> tuple[str, UserBudget] | None:
        caller = current_caller()
        budget = (self.per_role.get(caller.role) if caller.role else None) or self.per_user
        if budget is None or (budget.day_usd is None and budget.day_tokens is None):
            return None
        return caller.user, budget

    def check(
        self,
        ledger: Ledger,
        *,
        estimated_cost_usd: float = 0.0,
        estimated_tokens: int = 0,
        run_id: str | None = None,
    ) -> None:
        """Raise BudgetExceeded if a call of the estimated size would pass any limit; else return."""
        if self.per_call_usd is not None and estimated_cost_usd > self.per_call_usd + _EPSILON:
            raise BudgetExceeded(
                f"per-call budget of {_usd(self.per_call_usd)} exceeded: this call is estimated at "
                f"{_usd(estimated_cost_usd)}; raise {CONFIG_HINT.format(field='per_call_usd')}",
                budget="per_call",
            )
        if run_id is not None and (self.per_run_usd is not None or self.per_run_tokens is not None):
            run = ledger.spend(run_id=run_id)
            where = f"by run {run_id}"
            _refuse_past(self.per_run_usd, run.cost_usd, estimated_cost_usd, "per_run", "run budget", where)
            _refuse_past(
                self.per_run_tokens, run.tokens, estimated_tokens, "per_run_tokens", "run token budget", where
            )
        if self.per_day_usd is not None or self.per_day_tokens is not None:
            today = ledger.spend_today()
            where = "today (UTC)"
            _refuse_past(
                self.per_day_usd, today.cost_usd, estimated_cost_usd, "per_day", "daily budget", where
            )
            _refuse_past(
                self.per_day_tokens,
                today.tokens,
                estimated_tokens,
                "per_day_tokens",
                "daily token budget",
                where,
            )
        mine = self._user_budget()
        if mine is not None:
            user, budget = mine
            spent = ledger.spend_today(user)
            where = f"by user {user} today (UTC)"
            _refuse_past(
                budget.day_usd,
                spent.cost_usd,
                estimated_cost_usd,
                "per_user_day",
                "user's daily budget",
                where,
                setting=f"{budget.setting}.day_usd",
            )
            _refuse_past(
                budget.day_tokens,
                spent.tokens,
                estimated_tokens,
                "per_user_day_tokens",
                "user's daily token budget",
                where,
                setting=f"{budget.setting}.day_tokens",
            )

    def check_batch(
        self,
        ledger: Ledger,
        *,
        call_costs: Sequence[float],
        estimated_tokens: int = 0,
        run_id: str | None = None,
        what: str = "these calls",
    ) -> None:
        """Raise BudgetExceeded if calls made together (a fan-out), each at its worst case, could pass a
        limit: the per-call budget against the costliest call, the run and day budgets against their sum.
        The message names the budget and by how much it would be passed."""
        total = sum(call_costs)
        worst = max(call_costs, default=0.0)
        if self.per_call_usd is not None and worst > self.per_call_usd + _EPSILON:
            raise BudgetExceeded(
                f"{what} refused: the per-call budget of {_usd(self.per_call_usd)} would be passed by "
                f"{_usd(worst - self.per_call_usd)} (its costliest call may cost up to {_usd(worst)}); "
                f"raise {CONFIG_HINT.format(field='per_call_usd')}",
                budget="per_call",
            )
        # (limit, spent so far, budget, whose spending, where betty.yaml sets it)
        checks: list[tuple[float | None, Spend, str, str, str]] = []
        if run_id is not None and (self.per_run_usd is not None or self.per_run_tokens is not None):
            run, where = ledger.spend(run_id=run_id), f"by run {run_id}"
            checks += [
                (self.per_run_usd, run, "per_run", where, _hint("per_run_usd")),
                (self.per_run_tokens, run, "per_run_tokens", where, _hint("per_run_tokens")),
            ]
        if self.per_day_usd is not None or self.per_day_tokens is not None:
            today, where = ledger.spend_today(), "today (UTC)"
            checks += [
                (self.per_day_usd, today, "per_day", where, _hint("per_day_usd")),
                (self.per_day_tokens, today, "per_day_tokens", where, _hint("per_day_tokens")),
            ]
        mine = self._user_budget()
        if mine is not None:
            user, limits = mine
            spent_by_user, where = ledger.spend_today(user), f"by user {user} today (UTC)"
            checks += [
                (limits.day_usd, spent_by_user, "per_user_day", where, f"{limits.setting}.day_usd"),
                (
                    limits.day_tokens,
                    spent_by_user,
                    "per_user_day_tokens",
                    where,
                    f"{limits.setting}.day_tokens",
                ),
            ]
        for limit, spend, budget, where, setting in checks:
            tokens = budget.endswith("_tokens")
            spent, estimate = (spend.tokens, estimated_tokens) if tokens else (spend.cost_usd, total)
            if limit is None or not _over(limit, spent, estimate):
                continue
            name = _BATCH_NAMES[budget]

            def amount(value: float, tokens: bool = tokens) -> str:
                return f"{int(value):,} tokens" if tokens else _usd(value)

            raise BudgetExceeded(
                f"{what} refused: the {name} budget of {amount(limit)} would be passed by "
                f"{amount(spent + estimate - limit)} ({amount(spent)} used {where} + up to "
                f"{amount(estimate)} for {what}); raise {setting}",
                budget=budget,
            )


def _hint(field_name: str) -> str:
    return CONFIG_HINT.format(field=field_name)


_BATCH_NAMES = {
    "per_run": "run",
    "per_run_tokens": "run token",
    "per_day": "daily",
    "per_day_tokens": "daily token",
    "per_user_day": "user's daily",
    "per_user_day_tokens": "user's daily token",
}


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
    the one view ``by`` names)."""
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


def format_usage(ledger: Ledger, days: int = 30, by: str | None = None) -> str:
    """The `betty-mcp usage` text: a table per day, per model, per caller and per user, columns aligned
    (or the one table ``by`` names)."""
    report = usage_report(ledger, days, by)
    span = "today" if days == 1 else f"the last {days} days"
    if not report["total"]["calls"]:
        return f"No LLM calls recorded in {span} (UTC), in {ledger.path}.\n"
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
