"""The shared store: PostgreSQL through psycopg 3 and a connection pool, for several instances at once.

Only imported when ``database_url`` names PostgreSQL, so a server without one loads no driver.

The hot path of an LLM call costs at most one round trip: the reservation (``betty_reserve``, one
statement, rows locked in scope order), and only when a day or run budget is configured. Everything
nothing waits for (ledger rows, budget settlements, trace events) is queued and written in the
background, a batch per transaction; ``flush`` waits for it, and every read flushes first, so this
process always reads its own writes. The schema is migrated on first connection (``pg_schema``),
under an advisory lock.

    store = PostgresStore("postgresql://betty@db/betty")
    held = await reserve(store, budgets, cost_usd=0.01, tokens=500)
    store.settle(record, held)
    await store.aclose()
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from betty_mcp.core.errors import StorageError
from betty_mcp.core.identity import current_caller
from betty_mcp.core.secrets import register_secret_value, scrub
from betty_mcp.llm.ledger import (
    USAGE_VIEWS,
    Claim,
    Count,
    Reservation,
    Shortfall,
    Spend,
    UsageRecord,
    current_consensus_id,
    settlement,
)
from betty_mcp.llm.users import TIME_FORMAT, StoredUser, already_active
from betty_mcp.store import pg_schema
from betty_mcp.store.base import LEGACY_USER, MigrationStatus, RunRecord
from betty_mcp.store.urls import password, redact

log = logging.getLogger(__name__)

POOL_MAX = 8  # connections per instance: reservations, reads and the background writer share them
CONNECT_TIMEOUT_S = 5
WRITE_ATTEMPTS = 3

_CALL_COLUMNS = (
    "created_at, caller, agent, run_id, model, provider, prompt_tokens, completion_tokens, total_tokens, "
    'cost_usd, latency_ms, outcome, error, fallbacks, session_id, request_class, consensus_id, "user"'
)
_INSERT_CALL = f"INSERT INTO calls ({_CALL_COLUMNS}) VALUES ({', '.join(['%s'] * 18)})"
_COUNT = (
    "INSERT INTO budget_counters AS c (scope, calls, spent_usd, spent_tokens) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (scope) DO UPDATE SET calls = c.calls + excluded.calls, "
    "spent_usd = c.spent_usd + excluded.spent_usd, spent_tokens = c.spent_tokens + excluded.spent_tokens, "
    "reserved_usd = greatest(0, c.reserved_usd - %s), reserved_tokens = greatest(0, c.reserved_tokens - %s)"
)
_RESERVE = "SELECT * FROM betty_reserve_held(%s, %s::text[], %s::float8[], %s::bigint[], %s, %s)"
_UNHOLD = (
    "UPDATE budget_holds SET reserved_usd = greatest(0, reserved_usd - %s), "
    "reserved_tokens = greatest(0, reserved_tokens - %s) WHERE holder = %s AND scope = %s"
)
_SPEND = "count(*), coalesce(sum(total_tokens), 0), coalesce(sum(cost_usd), 0), count(*) - count(cost_usd)"
_RECORD_FIELDS = (
    *("caller", "model", "provider", "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms"),
    *("outcome", "agent", "run_id", "fallbacks", "error", "created_at", "session_id", "request_class"),
    *("consensus_id", "user"),
)
_RECORD_COLUMNS = ", ".join(f'"{name}"' for name in _RECORD_FIELDS)  # "user" is a keyword: quoted
_RUN_COLUMNS = (
    "run_id, kind, agent, task, owner, status, error, created_at, updated_at, status_doc, result_doc"
)


@dataclass(frozen=True)
class _Write:
    """One queued write: a call's row and its counter changes, counter changes alone (a release), or a
    trace event."""

    call: tuple | None = None
    counts: tuple[Count, ...] = ()
    event: tuple[str, Jsonb] | None = None


class PostgresStore:
    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        pool_max: int = POOL_MAX,
        migrate: bool = True,
        alive_every: float = 2.0,
        lost_after: float = 15.0,
    ) -> None:
        register_secret_value(password(url))  # scrubbed from every log line, error and result
        self.url = url
        self.where = redact(url)
        self.pool_max = pool_max
        self.migrate = migrate
        self.holder = f"{socket.gethostname()}:{os.getpid()}"  # this instance, in the runs it holds
        # ... and in the reservations it holds (a restarted container may reuse host and pid)
        self.instance = f"{self.holder}:{secrets.token_hex(4)}"
        self.alive_every = alive_every
        self.lost_after = lost_after
        self._alive: asyncio.Task[None] | None = None
        self._pool: AsyncConnectionPool | None = None
        self._opening: asyncio.Lock | None = None
        self._pending: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None

    # -- connections

    async def _connect(self) -> psycopg.AsyncConnection:
        """One connection outside the pool, or StorageError saying why not (password redacted)."""
        try:
            return await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to the database {self.where}: {self._clean(exc)}; check that PostgreSQL "
                "runs there and accepts this user (database_url in betty.yaml or $BETTY_MCP_DATABASE_URL)"
            ) from None

    async def _ready(self) -> AsyncConnectionPool:
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                conn = await self._connect()  # a clear error now, rather than a pool timeout later
                try:
                    if self.migrate:
                        await self._upgrade(conn)
                finally:
                    await conn.close()
                pool = AsyncConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_max,
                    # A reservation commits without waiting for its WAL flush (~3 ms a call here): on a
                    # database crash the last moment's reservations are lost, never double counted.
                    # Ledger rows are written with synchronous_commit on (``_write``).
                    kwargs={"autocommit": True, "options": "-c synchronous_commit=off"},
                    open=False,
                    name="betty",
                )
                await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
                self._pool = pool
        return self._pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        pool = await self._ready()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StorageError(f"database {self.where}: {self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        return scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    # -- lifecycle and schema

    async def _upgrade(self, conn: psycopg.AsyncConnection) -> list[str]:
        try:
            names = await pg_schema.upgrade(conn)
        except psycopg.Error as exc:
            raise StorageError(f"migrating the database {self.where} failed: {self._clean(exc)}") from None
        if names:
            log.info("database %s migrated: %s", self.where, ", ".join(names))
        return names

    async def upgrade(self) -> list[str]:
        conn = await self._connect()
        try:
            return await self._upgrade(conn)
        finally:
            await conn.close()

    async def status(self) -> MigrationStatus:
        conn = await self._connect()
        try:
            done, pending = await pg_schema.migration_status(conn)
        finally:
            await conn.close()
        return MigrationStatus(self.backend, self.where, tuple(done), tuple(pending))

    async def server_clock(self) -> datetime:
        """The database server's time (for the doctor's clock-skew check; nothing is migrated)."""
        conn = await self._connect()
        try:
            row = await (await conn.execute("SELECT now()")).fetchone()
        finally:
            await conn.close()
        assert row is not None
        return row[0]

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)
        if self._pending:  # queued where no event loop ran (nothing could start the writer)
            self._writer = asyncio.get_running_loop().create_task(self._drain())
            await asyncio.shield(self._writer)

    async def aclose(self) -> None:
        if self._alive is not None:
            self._alive.cancel()
        try:
            if self._pool is not None or self._pending:
                await self.flush()
        finally:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    # -- the background writer

    def _queue(self, write: _Write) -> None:
        self._pending.append(write)
        if self._writer is None or self._writer.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # written by the next flush
            self._writer = loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    await self._write(batch)
                    break
                except (StorageError, psycopg.Error) as exc:
                    if attempt == WRITE_ATTEMPTS:
                        log.error(
                            "%d ledger/trace write(s) to %s lost after %d attempts: %s",
                            len(batch),
                            self.where,
                            attempt,
                            self._clean(exc),
                        )
                    else:
                        await asyncio.sleep(0.2 * attempt)

    async def _write(self, batch: list[_Write]) -> None:
        calls = [w.call for w in batch if w.call is not None]
        events = [w.event for w in batch if w.event is not None]
        totals: dict[str, list[float]] = {}
        for write in batch:
            for c in write.counts:
                row = totals.setdefault(c.scope, [0, 0.0, 0, 0.0, 0])
                row[0] += 1 if write.call is not None else 0
                row[1] += c.cost_usd
                row[2] += c.tokens
                row[3] += c.release_usd
                row[4] += c.release_tokens
        counts = [(scope, *row) for scope, row in sorted(totals.items())]  # scope order: no deadlocks
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor()
            await cur.execute("SET LOCAL synchronous_commit = on")  # the ledger is durable
            if calls:
                await cur.executemany(_INSERT_CALL, calls)
            if events:
                await cur.executemany("INSERT INTO run_events (run_id, event) VALUES (%s, %s)", events)
            if counts:  # last: the counters' row locks (which reservations wait for) held until COMMIT
                await cur.executemany(_COUNT, counts)
                unheld = [(c[4], c[5], self.instance, c[0]) for c in counts if c[4] or c[5]]
                if unheld:  # after the counters, as reservations lock them: no deadlock
                    await cur.executemany(_UNHOLD, unheld)

    # -- accounts

    async def reserve(self, claims: Sequence[Claim], reservation: Reservation) -> Shortfall | None:
        if self._alive is None or self._alive.done():
            await self._say_alive()  # before the first reservation: it is never held by an unknown holder
            self._alive = asyncio.get_running_loop().create_task(self._keep_alive())
        args = (
            self.instance,
            [c.scope for c in claims],
            [c.limit_usd for c in claims],
            [c.limit_tokens for c in claims],
            reservation.cost_usd,
            reservation.tokens,
        )
        async with self._connection() as conn:
            row = await (await conn.execute(_RESERVE, args)).fetchone()
        if row is None:
            return None
        claim = next(c for c in claims if c.scope == row[0])
        return Shortfall(claim, Spend(calls=row[1], tokens=row[2], cost_usd=row[3]))

    def release(self, reservation: Reservation) -> None:
        if reservation.held:
            counts = tuple(
                Count(scope, 0.0, 0, reservation.cost_usd, reservation.tokens)
                for scope in reservation.claimed
            )
            self._queue(_Write(counts=counts))

    def settle(self, record: UsageRecord, reservation: Reservation | None) -> None:
        call = (
            record.created_at or datetime.now(UTC),
            record.caller,
            record.agent,
            record.run_id,
            record.model,
            record.provider,
            record.prompt_tokens,
            record.completion_tokens,
            record.total_tokens,
            record.cost_usd,
            record.latency_ms,
            record.outcome,
            record.error,
            Jsonb(list(record.fallbacks)),
            record.session_id,
            record.request_class,
            record.consensus_id or current_consensus_id(),
            record.user or current_caller().user,
        )
        self._queue(_Write(call=call, counts=tuple(settlement(record, reservation))))

    # -- reservations of instances that died

    async def _say_alive(self) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "INSERT INTO betty_instances (holder, heartbeat_at) VALUES (%s, now()) "
                "ON CONFLICT (holder) DO UPDATE SET heartbeat_at = now()",
                (self.instance,),
            )

    async def _keep_alive(self) -> None:
        """While this process holds reservations: say so every ``alive_every`` seconds, and give back the
        reservations of instances silent for ``lost_after`` seconds (killed mid-call)."""
        while True:
            await asyncio.sleep(self.alive_every)
            try:
                await self._say_alive()
                for scope, usd, tokens in await self.give_back_lost():
                    log.warning(
                        "budget %s: gave back $%.6f and %d tokens reserved by an instance that stopped",
                        scope,
                        usd,
                        tokens,
                    )
            except StorageError as exc:
                log.warning("reservations: the database did not answer: %s", exc)

    async def give_back_lost(self) -> list[tuple[str, float, int]]:
        """Release what instances silent for ``lost_after`` seconds still held, exactly once whoever else
        does the same; the scopes and amounts given back."""
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM betty_instances WHERE heartbeat_at < now() - make_interval(secs => %s) "
                "RETURNING holder",
                (self.lost_after,),
            )
            lost = [row[0] for row in await cur.fetchall()]
            if not lost:
                return []
            cur = await conn.execute(
                "DELETE FROM budget_holds WHERE holder = ANY (%s) "
                "RETURNING scope, reserved_usd, reserved_tokens",
                (lost,),
            )
            held: dict[str, list[float]] = {}
            for scope, usd, tokens in await cur.fetchall():
                row = held.setdefault(scope, [0.0, 0])
                row[0] += usd
                row[1] += tokens
            freed = [
                (scope, usd, int(tokens)) for scope, (usd, tokens) in sorted(held.items()) if usd or tokens
            ]
            if freed:
                await conn.execute(  # in scope order, as reservations lock them
                    "SELECT 1 FROM budget_counters WHERE scope = ANY (%s) ORDER BY scope FOR UPDATE",
                    ([f[0] for f in freed],),
                )
                await conn.cursor().executemany(
                    "UPDATE budget_counters SET reserved_usd = greatest(0, reserved_usd - %s), "
                    "reserved_tokens = greatest(0, reserved_tokens - %s) WHERE scope = %s",
                    [(usd, tokens, scope) for scope, usd, tokens in freed],
                )
            return freed

    async def counted(self, scopes: Sequence[str]) -> dict[str, Spend]:
        await self.flush()
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT scope, calls, spent_tokens + reserved_tokens, spent_usd + reserved_usd "
                "FROM budget_counters WHERE scope = ANY (%s)",
                (list(scopes),),
            )
            found = {r[0]: Spend(r[1], r[2], r[3]) for r in await cur.fetchall()}
        return {scope: found.get(scope, Spend(0, 0, 0.0)) for scope in scopes}

    async def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        await self.flush()
        async with self._connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    async def spend(
        self,
        *,
        since: datetime | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
    ) -> Spend:
        where, params = _where(since=since, run_id=run_id, agent=agent, consensus_id=consensus_id, user=user)
        calls, tokens, cost, unpriced = (await self._query(f"SELECT {_SPEND} FROM calls{where}", params))[0]
        return Spend(calls=calls, tokens=int(tokens), cost_usd=float(cost), unpriced=unpriced)

    async def records(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        consensus_id: str | None = None,
        user: str | None = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        where, params = _where(run_id=run_id, session_id=session_id, consensus_id=consensus_id, user=user)
        rows = await self._query(
            f"SELECT {_RECORD_COLUMNS} FROM calls{where} ORDER BY created_at DESC, id DESC LIMIT %s",
            [*params, limit],
        )
        found = []
        for row in rows:
            fields = dict(zip(_RECORD_FIELDS, row, strict=True))
            fields["fallbacks"] = tuple(fields["fallbacks"])
            found.append(UsageRecord(**fields))
        return found

    async def usage(self, days: int = 30, by: str | None = None) -> dict[str, Any]:
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        if by is not None and by not in USAGE_VIEWS:
            raise ValueError(f"by must be one of {', '.join(USAGE_VIEWS)}, got {by!r}")
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=days - 1)
        total = await self.spend(since=since)
        report: dict[str, Any] = {
            "days": days,
            "since": since.date().isoformat(),
            "total": {
                "calls": total.calls,
                "tokens": total.tokens,
                "cost_usd": total.cost_usd,
                "unpriced": total.unpriced,
            },
        }
        for view in USAGE_VIEWS:
            if by in (None, view):
                report[f"by_{view}"] = await self._usage_view(view, since)
        return report

    async def _usage_view(self, view: str, since: datetime) -> list[dict[str, Any]]:
        """One table of the usage report: its rows since ``since``, as ``llm.ledger``'s ``by_*`` give."""
        errors = "count(*) FILTER (WHERE outcome <> 'ok')"
        costliest = "coalesce(sum(cost_usd), 0) DESC, count(*) DESC"
        keys: tuple[str, ...]
        if view == "day":
            keys, select = ("day",), "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day"
            group, order = "day", "day DESC"
        elif view == "model":
            keys, select = ("model", "provider"), "model, provider"
            group, order = "model, provider", f"{costliest}, model, provider"
        elif view == "caller":
            keys, select, group, order = ("caller",), "caller", "caller", f"{costliest}, caller"
        else:  # calls recorded without a user count as the local user's
            keys, select = ("user",), f"coalesce(\"user\", '{LEGACY_USER}') AS who"
            group, order = "who", f"{costliest}, who"
        rows = await self._query(
            f"SELECT {select}, {_SPEND}, {errors} FROM calls WHERE created_at >= %s "
            f"GROUP BY {group} ORDER BY {order}",
            (since,),
        )
        found = [_totals(keys, row) for row in rows]
        if view == "caller":
            share = sum(c["calls"] for c in found) or 1
            found = [{**c, "share": c["calls"] / share} for c in found]
        return found

    # -- runs and traces

    async def save_run(self, run: RunRecord) -> None:
        values = (
            run.run_id,
            run.kind,
            run.agent,
            run.task,
            run.owner,
            run.status,
            run.error,
            run.created_at,
            run.updated_at,
            Jsonb(run.status_doc, dumps=_dumps),
            Jsonb(run.result_doc, dumps=_dumps),
        )
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*_RUN_COLUMNS.split(", ")[4:], "holder"])
        async with self._connection() as conn:
            await conn.execute(
                f"INSERT INTO runs ({_RUN_COLUMNS}, holder, heartbeat_at) "
                f"VALUES ({', '.join(['%s'] * 12)}, now()) "
                f"ON CONFLICT (run_id) DO UPDATE SET {updates}, heartbeat_at = now() "
                "WHERE runs.status IN ('queued', 'running')",  # lost, or cancelled while queued: stays so
                (*values, self.holder),
            )

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._query(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = %s", (run_id,))
        return _run(rows[0]) if rows else None

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        rows = await self._query(
            f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY created_at DESC LIMIT %s", (limit,)
        )
        return [_run(row) for row in rows]

    def append_event(self, run_id: str, event: dict[str, Any]) -> None:
        self._queue(_Write(event=(run_id, Jsonb(event, dumps=_dumps))))

    async def events(self, run_id: str) -> list[dict[str, Any]] | None:
        rows = await self._query("SELECT event FROM run_events WHERE run_id = %s ORDER BY id", (run_id,))
        return [row[0] for row in rows] if rows else None

    async def traced_runs(self, limit: int = 50, *, user: str | None = None) -> list[str]:
        if user is None:
            rows = await self._query(
                "SELECT run_id FROM run_events GROUP BY run_id ORDER BY max(id) DESC LIMIT %s", (limit,)
            )
        else:  # whose run it is: its first event's user (run_started comes first)
            rows = await self._query(
                "SELECT e.run_id FROM run_events e GROUP BY e.run_id HAVING coalesce("
                "(SELECT f.event ->> 'user' FROM run_events f WHERE f.id = min(e.id)), %s) = %s "
                "ORDER BY max(e.id) DESC LIMIT %s",
                (LEGACY_USER, user, limit),
            )
        return [row[0] for row in rows]

    async def trace_user(self, run_id: str) -> str | None:
        rows = await self._query(
            "SELECT event ->> 'user' FROM run_events WHERE run_id = %s ORDER BY id LIMIT 1", (run_id,)
        )
        return (rows[0][0] or LEGACY_USER) if rows else None

    def trace_location(self, run_id: str) -> str:
        return f"betty://runs/{run_id}"

    # -- users (no flush first: nothing queued writes them)

    async def add_user(self, name: str, role: str | None, token_sha256: str) -> None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO users AS u (name, role, token_sha256, created_at) VALUES (%s, %s, %s, now()) "
                "ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
                "token_sha256 = excluded.token_sha256, created_at = excluded.created_at, revoked_at = NULL "
                "WHERE u.revoked_at IS NOT NULL RETURNING name",
                (name, role, token_sha256),
            )
            added = await cur.fetchone()
        if added is None:
            raise already_active(name)

    async def revoke_user(self, name: str) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE users SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL", (name,)
            )
            return cur.rowcount == 1

    async def list_users(self) -> list[StoredUser]:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT name, role, created_at, revoked_at FROM users ORDER BY name")
            rows = await cur.fetchall()
        return [StoredUser(name, role, _stamp(added), _stamp(revoked)) for name, role, added, revoked in rows]

    async def find_user(self, token_sha256: str) -> StoredUser | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT name, role, created_at, token_sha256 FROM users "
                "WHERE token_sha256 = %s AND revoked_at IS NULL",
                (token_sha256,),
            )
            row = await cur.fetchone()
        if row is None or not hmac.compare_digest(row[3], token_sha256):
            return None
        return StoredUser(row[0], row[1], _stamp(row[2]))

    async def any_active_user(self) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute("SELECT 1 FROM users WHERE revoked_at IS NULL LIMIT 1")
            return await cur.fetchone() is not None

    # -- runs shared by instances

    def shared_runs(self) -> PostgresStore:
        return self

    async def heartbeat(self, run_ids: Sequence[str]) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE runs SET heartbeat_at = now() WHERE run_id = ANY (%s) AND status = 'running'",
                (list(run_ids),),
            )

    async def claim(self, run_id: str) -> bool:
        """Take a queued run to run it here: True once, for one taker; False if it was cancelled or
        taken (a run is never run twice)."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = 'running', holder = %s, heartbeat_at = now(), updated_at = now(), "
                'status_doc = status_doc || \'{"status": "running"}\', '
                'result_doc = result_doc || \'{"status": "running"}\' '
                "WHERE run_id = %s AND status = 'queued' RETURNING run_id",
                (self.holder, run_id),
            )
            return await cur.fetchone() is not None

    async def cancel_queued(self, run_id: str) -> RunRecord | None:
        """Cancel a run nobody has taken yet; its row, or None if it is no longer queued."""
        why = "the run was cancelled before it started"
        cancelled = Jsonb({"status": "cancelled", "error": why})
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = 'cancelled', error = %s, updated_at = now(), "
                "status_doc = status_doc || %s, result_doc = result_doc || %s "
                f"WHERE run_id = %s AND status = 'queued' RETURNING {_RUN_COLUMNS}",
                (why, cancelled, cancelled, run_id),
            )
            row = await cur.fetchone()
            return _run(row) if row else None

    async def reap(self, lost_after: float) -> list[str]:
        why = (
            f"worker_lost: the betty-mcp instance running it stopped answering (no heartbeat for "
            f"{lost_after:g}s); it was not run again"
        )
        lost = Jsonb({"status": "failed", "error": why, "reason": "worker_lost"})
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE runs SET status = 'failed', error = %s, updated_at = now(), "
                "status_doc = status_doc || %s, result_doc = result_doc || %s "
                "WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => %s) "
                "RETURNING run_id",
                (why, lost, lost, lost_after),
            )
            return [row[0] for row in await cur.fetchall()]

    async def notify(self, channel: str, payload: str) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    async def listen(self, channel: str, heard: Callable[[str], None]) -> None:
        """A connection of its own, LISTENing; reconnects (after a pause) when the database goes away."""
        while True:
            try:
                conn = await self._connect()
                try:
                    await conn.execute(f'LISTEN "{channel}"')
                    async for note in conn.notifies():
                        heard(note.payload)
                finally:
                    await conn.close()
            except (StorageError, psycopg.Error) as exc:
                log.warning("listening on %s at %s: %s; again in 1s", channel, self.where, self._clean(exc))
                await asyncio.sleep(1.0)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _where(**filters: Any) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column, value in filters.items():
        if value is None:
            continue
        clauses.append("created_at >= %s" if column == "since" else f'"{column}" = %s')
        params.append(value)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _totals(keys: tuple[str, ...], row: tuple) -> dict[str, Any]:
    names = (*keys, "calls", "tokens", "cost_usd", "unpriced", "errors")
    found = dict(zip(names, row, strict=True))
    found["tokens"], found["cost_usd"] = int(found["tokens"]), float(found["cost_usd"])
    return found


def _stamp(moment: datetime | None) -> str | None:
    """A time as ``StoredUser`` shows it (the SQLite table's text: ISO 8601 UTC, to the second)."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT) if moment is not None else None


def _run(row: tuple) -> RunRecord:
    return RunRecord(**dict(zip(_RUN_COLUMNS.split(", "), row, strict=True)))
