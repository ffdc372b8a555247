"""The PostgreSQL store's own concerns: migrations (from empty, twice, at once, from the previous version),
passwords never shown, and no driver loaded by a server that has no database_url."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import psycopg
import pytest

from betty_mcp.core.errors import BudgetExceeded, StorageError
from betty_mcp.store import pg_schema
from betty_mcp.store.postgres import PostgresStore
from betty_mcp.store.urls import is_postgres, password, redact

pytestmark = pytest.mark.anyio


async def test_migrations_apply_from_empty_once_and_then_nothing(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    before = await store.status()
    assert (before.applied, before.pending) == ((), pg_schema.NAMES)
    assert await store.upgrade() == list(pg_schema.NAMES)
    assert await store.upgrade() == []
    after = await store.status()
    assert after.current and after.applied == pg_schema.NAMES


async def test_instances_starting_together_migrate_the_database_once(pg_url: str) -> None:
    applied: list[list[str]] = []

    async def upgrade() -> None:
        applied.append(await PostgresStore(pg_url).upgrade())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(upgrade)
    assert sorted(applied, key=len) == [[], [], [], list(pg_schema.NAMES)]


async def test_a_database_of_the_previous_version_upgrades_and_keeps_its_rows(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        assert await pg_schema.upgrade(conn, upto=len(pg_schema.NAMES) - 1) == list(pg_schema.NAMES[:-1])
        await conn.execute(
            "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd, run_id) "
            "VALUES (now(), 'cli', 'gpt-4', 'openai', 42, 0.5, 'r1')"
        )
    store = PostgresStore(pg_url)
    try:
        assert await store.upgrade() == [pg_schema.NAMES[-1]]
        assert (await store.spend()).tokens == 42
        assert await store.get_run("r1") is None  # the runs table is there, empty
    finally:
        await store.aclose()


async def test_the_users_migration_counts_each_users_day_from_the_calls_recorded(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await pg_schema.upgrade(conn, upto=pg_schema.NAMES.index("005_users"))
        for user in ("ada", "ada", None):
            await conn.execute(
                'INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd, "user") '
                "VALUES (now(), 'llm_query', 'gpt-4', 'openai', 10, 0.5, %s)",
                (user,),
            )
    store = PostgresStore(pg_url)
    try:
        day = datetime.now(UTC).date().isoformat()
        counted = await store.counted([f"user:{day}:ada", f"user:{day}:local"])
        assert [(s.calls, s.cost_usd) for s in counted.values()] == [(2, 1.0), (1, 0.5)]
        assert await store.list_users() == []
    finally:
        await store.aclose()


async def test_counters_are_filled_from_the_calls_already_recorded(pg_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await pg_schema.upgrade(conn, upto=1)
        await conn.execute(
            "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd, run_id) "
            "VALUES (now(), 'cli', 'gpt-4', 'openai', 42, 0.5, 'r1')"
        )
    store = PostgresStore(pg_url)
    try:
        counted = await store.counted(["run:r1"])
        assert (counted["run:r1"].tokens, counted["run:r1"].cost_usd) == (42, 0.5)
    finally:
        await store.aclose()


async def test_a_password_never_appears_in_an_error() -> None:
    url = "postgresql://betty:hunter2-secret@127.0.0.1:9/betty"  # nothing listens on port 9
    with pytest.raises(StorageError) as caught:
        await PostgresStore(url).status()
    message = str(caught.value)
    assert "hunter2-secret" not in message and "postgresql://betty:***@127.0.0.1:9/betty" in message
    assert "check that PostgreSQL runs there" in message


def test_urls_are_redacted_whatever_form_the_password_takes() -> None:
    assert redact("postgresql://ann:s3cr3t@db:5432/betty") == "postgresql://ann:***@db:5432/betty"
    assert redact("postgres://db/betty?password=s3cr3t&sslmode=require") == (
        "postgres://db/betty?password=***&sslmode=require"
    )
    assert redact("postgresql://ann@db/betty") == "postgresql://ann@db/betty"
    assert password("postgresql://ann:s3cr3t@db/betty") == "s3cr3t"
    assert is_postgres("postgresql://db/x") and not is_postgres("sqlite:///x.db") and not is_postgres(None)


def test_no_database_driver_is_imported_without_a_database_url(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from betty_mcp.core.config import load_settings\n"
        "from betty_mcp.services import Services\n"
        f"services = Services(load_settings(workspace={str(tmp_path)!r}))\n"
        "print(services.store.backend)\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'psycopg', 'psycopg_pool', 'procrastinate'}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == ["sqlite", "[]"]


HOLD_A_RESERVATION = """
import asyncio, sys
from betty_mcp.llm.ledger import Budgets, reserve
from betty_mcp.store.postgres import PostgresStore

async def main():
    store = PostgresStore(sys.argv[1], alive_every=0.2, lost_after=2.0)
    held = await reserve(store, Budgets(per_day_usd=1.0), cost_usd=0.6)
    print(held.claimed[0], flush=True)
    await asyncio.sleep(3600)  # a call in flight, until kill -9

asyncio.run(main())
"""


async def test_the_reservations_of_a_killed_instance_are_given_back_once(pg_url: str) -> None:
    """An instance killed mid-call leaves its reservation; live instances give it back (exactly once)
    within ``lost_after`` + one heartbeat, and the budget is whole again."""
    from betty_mcp.llm.ledger import Budgets, reserve

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RESERVATION, pg_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    live = [PostgresStore(pg_url, alive_every=0.2, lost_after=2.0) for _ in range(2)]
    try:
        assert holder.stdout is not None
        scope = holder.stdout.readline().decode().strip()
        assert scope.startswith("day:"), holder.stderr.read() if holder.stderr else ""  # type: ignore[union-attr]
        budgets = Budgets(per_day_usd=1.0)
        with pytest.raises(BudgetExceeded):  # 0.6 is held by the other process
            await reserve(live[0], budgets, cost_usd=0.6)
        small = [await reserve(store, budgets, cost_usd=0.1) for store in live]  # both keep saying alive
        holder.kill()
        holder.wait(timeout=10)
        with anyio.fail_after(2.0 + 0.2 + 4.0):
            while (await live[0].counted([scope]))[scope].cost_usd > 0.2 + 1e-9:
                await anyio.sleep(0.1)
        await anyio.sleep(0.5)  # both live stores have swept by now: what was lost is given back once
        assert (await live[1].counted([scope]))[scope].cost_usd == pytest.approx(0.2)
        for store, held in zip(live, small, strict=True):
            store.release(held)
            await store.flush()
        assert (await live[0].counted([scope]))[scope].cost_usd == pytest.approx(0.0)
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            rows = await (await conn.execute("SELECT sum(reserved_usd) FROM budget_holds")).fetchone()
        assert rows is not None and rows[0] == pytest.approx(0.0), "settled: nothing left to give back twice"
        await reserve(live[1], budgets, cost_usd=1.0)  # the whole budget is there again
    finally:
        if holder.poll() is None:
            holder.kill()
        for store in live:
            await store.aclose()
