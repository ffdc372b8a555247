"""The PostgreSQL schema: named migrations, applied in order, once per database.

An upgrade runs in one transaction holding a transaction-level advisory lock (``MIGRATION_LOCK``), so
instances starting together migrate a database exactly once and a failing migration leaves nothing
half applied. Each migration's name is recorded in ``betty_migrations``. Append only: never rename,
edit or reorder a migration that has shipped.

    applied = await upgrade(connection)     # [] when the database is current
    done, pending = await migration_status(connection)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import AsyncConnection

# A fixed key for pg_advisory_xact_lock: "betty-mcp migrations".
MIGRATION_LOCK = 0x6265_7474_796D
EPSILON = 1e-9  # as llm.ledger's: $4.98 + $0.02 against $5.00 is not refused by float rounding

M001_CALLS = """
CREATE TABLE calls (
    id BIGSERIAL PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL,
    caller TEXT NOT NULL,
    agent TEXT,
    run_id TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION,
    latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
    outcome TEXT NOT NULL DEFAULT 'ok',
    error TEXT,
    fallbacks JSONB NOT NULL DEFAULT '[]',
    session_id TEXT,
    request_class TEXT,
    consensus_id TEXT,
    "user" TEXT
);
CREATE INDEX calls_created_at ON calls (created_at);
CREATE INDEX calls_run_id ON calls (run_id, created_at);
CREATE INDEX calls_agent ON calls (agent, created_at);
CREATE INDEX calls_caller ON calls (caller, created_at);
CREATE INDEX calls_consensus_id ON calls (consensus_id);
CREATE INDEX calls_user ON calls ("user", created_at);
"""

# Budget counters per scope (day:YYYY-MM-DD, run:<id>) and the one-statement reservation: rows locked
# in scope order (no deadlock between two reservations), all or nothing. Returns no row when the
# estimate was reserved, else the scope that refused it with its spent-plus-reserved totals.
M002_BUDGETS = f"""
CREATE TABLE budget_counters (
    scope TEXT PRIMARY KEY,
    calls BIGINT NOT NULL DEFAULT 0,
    spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    spent_tokens BIGINT NOT NULL DEFAULT 0,
    reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0
);
INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens)
    SELECT 'day:' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), count(*),
           coalesce(sum(cost_usd), 0), coalesce(sum(total_tokens), 0)
    FROM calls GROUP BY 1;
INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens)
    SELECT 'run:' || run_id, count(*), coalesce(sum(cost_usd), 0), coalesce(sum(total_tokens), 0)
    FROM calls WHERE run_id IS NOT NULL GROUP BY 1;
CREATE FUNCTION betty_reserve(
    p_scopes TEXT[], p_limit_usd DOUBLE PRECISION[], p_limit_tokens BIGINT[],
    p_usd DOUBLE PRECISION, p_tokens BIGINT
) RETURNS TABLE (refused TEXT, refused_calls BIGINT, counted_tokens BIGINT, counted_usd DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    i INT;
BEGIN
    INSERT INTO budget_counters AS c (scope) SELECT s FROM unnest(p_scopes) AS s ORDER BY s
        ON CONFLICT (scope) DO NOTHING;
    FOR r IN
        SELECT c.scope, c.calls, c.spent_tokens + c.reserved_tokens AS tok,
               c.spent_usd + c.reserved_usd AS usd
        FROM budget_counters c WHERE c.scope = ANY (p_scopes) ORDER BY c.scope FOR UPDATE
    LOOP
        i := array_position(p_scopes, r.scope);
        IF (p_limit_usd[i] IS NOT NULL
                AND (r.usd >= p_limit_usd[i] - {EPSILON} OR r.usd + p_usd > p_limit_usd[i] + {EPSILON}))
           OR (p_limit_tokens[i] IS NOT NULL
                AND (r.tok >= p_limit_tokens[i] OR r.tok + p_tokens > p_limit_tokens[i])) THEN
            refused := r.scope; refused_calls := r.calls; counted_tokens := r.tok; counted_usd := r.usd;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
    UPDATE budget_counters c SET reserved_usd = c.reserved_usd + p_usd,
                                 reserved_tokens = c.reserved_tokens + p_tokens
        WHERE c.scope = ANY (p_scopes);
END
$$;
"""

M003_RUNS = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    agent TEXT NOT NULL,
    task TEXT NOT NULL,
    owner TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    status_doc JSONB NOT NULL DEFAULT '{}',
    result_doc JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_created_at ON runs (created_at);
CREATE TABLE run_events (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    event JSONB NOT NULL
);
CREATE INDEX run_events_run_id ON run_events (run_id, id);
"""

# Which instance holds a running run, and when it last said it still does (worker_lost past that).
M004_RUN_HOLDERS = """
ALTER TABLE runs ADD COLUMN holder TEXT;
ALTER TABLE runs ADD COLUMN heartbeat_at TIMESTAMPTZ;
CREATE INDEX runs_running ON runs (heartbeat_at) WHERE status = 'running';
"""

# The HTTP front end's per-user tokens (only their SHA-256; ``llm.users``), and each user's UTC day as a
# budget scope (user:YYYY-MM-DD:<name>) filled from the calls already recorded, so per-user budgets
# keep today's spend (a call without a user counts as ``local``'s, as in the usage report).
M005_USERS = """
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
INSERT INTO budget_counters (scope, calls, spent_usd, spent_tokens)
    SELECT 'user:' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') || ':'
               || coalesce("user", 'local'),
           count(*), coalesce(sum(cost_usd), 0), coalesce(sum(total_tokens), 0)
    FROM calls GROUP BY 1
    ON CONFLICT (scope) DO NOTHING;
"""

# Who holds which reservations (``budget_holds``) and whether they are alive (``betty_instances``): the
# reservations of an instance that fell silent are given back by any live one (``PostgresStore``).
M007_RESERVATION_HOLDS = """
CREATE TABLE budget_holds (
    holder TEXT NOT NULL,
    scope TEXT NOT NULL,
    reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (holder, scope)
);
CREATE TABLE betty_instances (
    holder TEXT PRIMARY KEY,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
CREATE FUNCTION betty_reserve_held(
    p_holder TEXT, p_scopes TEXT[], p_limit_usd DOUBLE PRECISION[], p_limit_tokens BIGINT[],
    p_usd DOUBLE PRECISION, p_tokens BIGINT
) RETURNS TABLE (refused TEXT, refused_calls BIGINT, counted_tokens BIGINT, counted_usd DOUBLE PRECISION)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM betty_reserve(p_scopes, p_limit_usd, p_limit_tokens, p_usd, p_tokens);
    IF NOT FOUND THEN  -- reserved: this holder holds it until the call settles or releases it
        INSERT INTO budget_holds AS h (holder, scope, reserved_usd, reserved_tokens)
            SELECT p_holder, s, p_usd, p_tokens FROM unnest(p_scopes) AS s ORDER BY s
            ON CONFLICT (holder, scope) DO UPDATE
            SET reserved_usd = h.reserved_usd + excluded.reserved_usd,
                reserved_tokens = h.reserved_tokens + excluded.reserved_tokens;
    END IF;
END
$$;
"""


def m006_run_queue() -> str:
    """The run queue's tables and functions: procrastinate's own schema, at the version pinned in the
    ``postgres`` extra (read from its package only when this migration is applied)."""
    from importlib import resources

    return (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")


MIGRATIONS: tuple[tuple[str, str | Callable[[], str]], ...] = (
    ("001_calls", M001_CALLS),
    ("002_budget_counters", M002_BUDGETS),
    ("003_runs_and_events", M003_RUNS),
    ("004_run_holders", M004_RUN_HOLDERS),
    ("005_users", M005_USERS),
    ("006_run_queue", m006_run_queue),
    ("007_reservation_holds", M007_RESERVATION_HOLDS),
)
NAMES = tuple(name for name, _ in MIGRATIONS)


async def applied(conn: AsyncConnection) -> list[str]:
    """The migrations this database has, in the order they were applied ([] for an empty database)."""
    cur = await conn.execute("SELECT to_regclass('betty_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return []
    cur = await conn.execute("SELECT name FROM betty_migrations ORDER BY applied_at, name")
    return [r[0] for r in await cur.fetchall()]


async def migration_status(conn: AsyncConnection) -> tuple[list[str], list[str]]:
    done = await applied(conn)
    return done, [name for name in NAMES if name not in done]


async def upgrade(conn: AsyncConnection, upto: int | None = None) -> list[str]:
    """Apply the pending migrations (the first ``upto`` only, for tests of older versions); the names
    applied. ``conn`` must be in autocommit mode: the upgrade is its own transaction."""
    wanted = MIGRATIONS[:upto] if upto is not None else MIGRATIONS
    if {name for name, _ in wanted} <= set(await applied(conn)):
        return []  # the common case: no lock taken
    names: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS betty_migrations ("
            "name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
        )
        done = set(await applied(conn))
        for name, sql in wanted:
            if name in done:
                continue
            await conn.execute(sql() if callable(sql) else sql)  # no parameters: several statements at once
            await conn.execute("INSERT INTO betty_migrations (name) VALUES (%s)", (name,))
            names.append(name)
    return names
