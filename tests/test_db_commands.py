"""``betty-mcp db status | upgrade`` and the doctor's database checks, on SQLite and PostgreSQL, with the
database's password never shown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from betty_mcp.cli.doctor import database_findings
from betty_mcp.store import pg_schema
from betty_mcp.store.postgres import PostgresStore

pytestmark = pytest.mark.anyio

PASSWORD = "pw-never-shown-0123"  # trust auth on the test server takes any password


def betty(workspace: Path, *args: str, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BETTY_MCP_DATABASE_URL"}
    if database_url:
        env["BETTY_MCP_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "betty_mcp", *args, "--workspace", str(workspace)],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def with_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    user, _, host = rest.partition("@")
    return f"{scheme}://{user}:{PASSWORD}@{host}"


def test_status_then_upgrade_then_status_on_postgresql(workspace: Path, pg_url: str) -> None:
    url = with_password(pg_url)
    before = betty(workspace, "db", "status", "--json", database_url=url)
    assert before.returncode == 1, before.stderr
    shown = json.loads(before.stdout)
    assert shown["backend"] == "postgresql" and shown["pending"] == list(pg_schema.NAMES)
    assert ":***@" in shown["where"]
    first = betty(workspace, "db", "upgrade", database_url=url)
    after = betty(workspace, "db", "status", database_url=url)
    assert first.returncode == after.returncode == 0, first.stderr
    assert (
        first.stdout.startswith("applied: 001_calls, 002_budget_counters") and "pending: none" in after.stdout
    )
    for run in (before, first, after):
        assert PASSWORD not in run.stdout + run.stderr


async def test_the_doctor_checks_the_database_and_its_clock(pg_url: str) -> None:
    store = PostgresStore(with_password(pg_url))
    fresh = {f.check: f for f in await database_findings(store)}
    assert fresh["database"].ok and "postgresql at postgresql://root:***@" in fresh["database"].detail
    schema = fresh["database schema"]  # a new database: the doctor reports, and changes nothing
    assert not schema.ok and "pending: 001_calls" in schema.detail and "db upgrade" in schema.fix
    assert fresh["database clock"].ok and "the database server's" in fresh["database clock"].detail
    await store.upgrade()
    assert all(f.ok for f in await database_findings(store))
    assert PASSWORD not in repr(fresh)


async def test_an_unreachable_database_is_a_finding_with_a_fix(workspace: Path) -> None:
    url = f"postgresql://betty:{PASSWORD}@127.0.0.1:9/betty"
    (found,) = await database_findings(PostgresStore(url))
    assert (
        not found.ok and "cannot connect to the database postgresql://betty:***@127.0.0.1:9" in found.detail
    )
    assert PASSWORD not in found.detail
    failed = betty(workspace, "db", "status", database_url=url)
    assert failed.returncode != 0 and "cannot connect" in failed.stderr and PASSWORD not in failed.stderr


def test_the_default_sqlite_file_has_the_same_commands(workspace: Path) -> None:
    up = betty(workspace, "db", "upgrade", "--json")
    assert up.returncode == 0, up.stderr
    shown = json.loads(up.stdout)
    assert shown["backend"] == "sqlite" and shown["where"].endswith(".betty-mcp/usage.sqlite")
    assert shown["pending"] == [] and "m008_runs" in shown["applied_now"]


def test_users_and_usage_by_user_work_on_postgresql(workspace: Path, pg_url: str) -> None:
    """``betty-mcp users`` keeps its tokens in the shared database (any instance checks them there),
    never in the workspace's file; ``usage --by user`` reads the shared ledger."""
    url = with_password(pg_url)
    added = betty(workspace, "users", "add", "ada", "--role", "admin", "--json", database_url=url)
    assert added.returncode == 0, added.stderr
    token = json.loads(added.stdout)["token"]
    taken = betty(workspace, "users", "add", "ada", database_url=url)
    assert taken.returncode == 2 and "user 'ada' exists" in taken.stderr
    assert betty(workspace, "users", "revoke", "ada", database_url=url).returncode == 0
    listed = betty(workspace, "users", "list", "--json", database_url=url)
    (ada,) = json.loads(listed.stdout)
    assert ada["name"] == "ada" and ada["role"] == "admin" and ada["revoked_at"] is not None
    assert token not in listed.stdout and not (workspace / ".betty-mcp" / "usage.sqlite").exists()
    usage = betty(workspace, "usage", "--by", "user", "--json", database_url=url)
    assert usage.returncode == 0, usage.stderr
    assert json.loads(usage.stdout)["by_user"] == []
    for run in (added, taken, listed, usage):
        assert PASSWORD not in run.stdout + run.stderr


def test_a_worker_needs_a_shared_database_and_says_which(workspace: Path, pg_url: str) -> None:
    alone = betty(workspace, "worker")
    assert alone.returncode == 2 and "database_url" in alone.stderr and not alone.stdout
    unreachable = betty(
        workspace, "worker", database_url=with_password(pg_url).rsplit("/", 1)[0] + "/nowhere"
    )
    assert unreachable.returncode == 2 and "nowhere" in unreachable.stderr
    assert PASSWORD not in unreachable.stdout + unreachable.stderr
