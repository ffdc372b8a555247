"""The usage ledger: what it records, how it totals, the budgets it enforces, and its schema's history."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from betty_mcp.llm.ledger import (
    MIGRATIONS,
    Ledger,
    Spend,
    UsageRecord,
    connect,
    format_usage,
    migrate,
    usage_report,
)
from tests.conftest import ROOT

NOW = datetime.now(UTC)
YESTERDAY = NOW - timedelta(days=1)


@pytest.fixture(autouse=True)
def ledger_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's "now" is NOW (taken when this file is imported): its "today" and its windows stay the
    day these tests record on, even when the suite runs past midnight UTC."""
    monkeypatch.setattr("betty_mcp.llm.ledger._now", lambda: NOW)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "state" / "usage.db") as opened:
        yield opened


def call(**fields: object) -> UsageRecord:
    defaults: dict = {"caller": "llm_query", "model": "gpt-4", "provider": "openai"}
    return UsageRecord(**{**defaults, **fields})


# --- recording and totals --------------------------------------------------------------------------------


def test_a_new_ledger_creates_its_folder_and_starts_empty(tmp_path: Path) -> None:
    with Ledger(tmp_path / "a" / "b" / "usage.db") as ledger:
        assert ledger.spend() == Spend(calls=0, tokens=0, cost_usd=0.0, unpriced=0)
    assert (tmp_path / "a" / "b" / "usage.db").is_file()


def test_spend_totals_tokens_and_cost_and_an_unknown_cost_counts_as_zero_but_stays_null(
    ledger: Ledger,
) -> None:
    first = ledger.record(call(prompt_tokens=100, completion_tokens=20, cost_usd=0.25))
    second = ledger.record(call(model="local/gemma", provider="ollama", prompt_tokens=5, completion_tokens=5))
    assert second > first
    assert ledger.spend() == Spend(calls=2, tokens=130, cost_usd=0.25, unpriced=1)
    db = sqlite3.connect(ledger.path)
    assert db.execute("SELECT cost_usd FROM calls WHERE id = ?", (second,)).fetchone() == (None,)
    db.close()


def test_spend_can_be_narrowed_to_one_run_or_one_agent(ledger: Ledger) -> None:
    ledger.record(call(run_id="r1", agent="api.designer", prompt_tokens=10, cost_usd=0.1))
    ledger.record(call(run_id="r1", agent="api.designer", prompt_tokens=10, cost_usd=0.2))
    ledger.record(call(run_id="r2", agent="api.designer", prompt_tokens=10, cost_usd=0.4))
    ledger.record(call(run_id="r3", agent="reviewer", prompt_tokens=10, cost_usd=0.8))
    assert ledger.spend(run_id="r1") == Spend(calls=2, tokens=20, cost_usd=pytest.approx(0.3))
    assert ledger.spend(agent="api.designer").cost_usd == pytest.approx(0.7)
    assert ledger.spend(agent="api.designer", run_id="r2").calls == 1
    assert ledger.spend(run_id="nope").calls == 0


def test_spend_today_counts_only_the_current_utc_day(ledger: Ledger) -> None:
    ledger.record(call(cost_usd=1.0, prompt_tokens=7, created_at=YESTERDAY))
    ledger.record(call(cost_usd=0.5, prompt_tokens=3, created_at=NOW))
    assert ledger.spend_today() == Spend(calls=1, tokens=3, cost_usd=0.5)
    assert ledger.spend(since=YESTERDAY - timedelta(seconds=1)).calls == 2


def test_times_are_stored_as_sortable_utc_text_whatever_the_zone_given(ledger: Ledger) -> None:
    paris = datetime(2025, 3, 1, 12, 30, tzinfo=UTC).astimezone(timezone(timedelta(hours=1)))
    ledger.record(call(created_at=paris))
    db = sqlite3.connect(ledger.path)
    assert db.execute("SELECT created_at FROM calls").fetchone() == ("2025-03-01T12:30:00.000000Z",)
    db.close()
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.record(call(created_at=datetime(2025, 3, 1, 12, 30)))


def test_fallbacks_and_every_field_round_trip(ledger: Ledger) -> None:
    tried = ({"model": "gpt-4", "error_kind": "rate_limit"}, {"model": "claude", "error_kind": "timeout"})
    sent = call(
        model="local/gemma",
        provider="ollama",
        prompt_tokens=11,
        completion_tokens=4,
        latency_ms=812.5,
        agent="api.designer",
        run_id="r9",
        fallbacks=tried,
        error=None,
        created_at=datetime(2025, 3, 1, 8, 0, 0, 123456, tzinfo=UTC),
        user="ada",
    )
    ledger.record(sent)
    assert ledger.records(run_id="r9") == [sent]
    assert ledger.records()[0].fallbacks == tried


def test_records_lists_newest_first_and_honours_the_limit(ledger: Ledger) -> None:
    for minutes in (3, 1, 2):
        ledger.record(call(model=f"m{minutes}", created_at=NOW - timedelta(minutes=minutes)))
    assert [r.model for r in ledger.records()] == ["m1", "m2", "m3"]
    assert [r.model for r in ledger.records(limit=1)] == ["m1"]


# --- aggregation -----------------------------------------------------------------------------------------


def test_by_day_groups_utc_days_newest_first_within_the_window(ledger: Ledger) -> None:
    ledger.record(call(cost_usd=1.0, prompt_tokens=10, created_at=NOW))
    ledger.record(call(cost_usd=None, prompt_tokens=5, outcome="timeout", created_at=NOW))
    ledger.record(call(cost_usd=2.0, prompt_tokens=20, created_at=YESTERDAY))
    ledger.record(call(cost_usd=9.0, created_at=NOW - timedelta(days=40)))
    days = ledger.by_day(30)
    assert [d["day"] for d in days] == [NOW.date().isoformat(), YESTERDAY.date().isoformat()]
    assert {k: days[0][k] for k in ("calls", "tokens", "cost_usd", "errors", "unpriced")} == {
        "calls": 2,
        "tokens": 15,
        "cost_usd": 1.0,
        "errors": 1,
        "unpriced": 1,
    }
    assert ledger.by_day(1) == days[:1]


def test_by_model_totals_each_model_with_its_errors_costliest_first(ledger: Ledger) -> None:
    ledger.record(call(model="gpt-4", cost_usd=0.5, prompt_tokens=10))
    ledger.record(call(model="gpt-4", cost_usd=0.5, prompt_tokens=10, outcome="rate_limit"))
    ledger.record(call(model="local/gemma", provider="ollama", prompt_tokens=99))
    ledger.record(call(model="claude", provider="anthropic", cost_usd=2.0, outcome="auth"))
    rows = ledger.by_model()
    assert [(r["model"], r["provider"]) for r in rows] == [
        ("claude", "anthropic"),
        ("gpt-4", "openai"),
        ("local/gemma", "ollama"),
    ]
    assert rows[1] == {
        "model": "gpt-4",
        "provider": "openai",
        "calls": 2,
        "tokens": 20,
        "cost_usd": 1.0,
        "unpriced": 0,
        "errors": 1,
    }
    assert rows[2]["cost_usd"] == 0.0 and rows[2]["unpriced"] == 1 and rows[2]["errors"] == 0


def test_format_usage_is_an_aligned_table_per_day_then_per_model(ledger: Ledger) -> None:
    ledger.record(call(cost_usd=1.25, prompt_tokens=1000, created_at=NOW))
    ledger.record(call(model="local/gemma", provider="ollama", prompt_tokens=50, created_at=YESTERDAY))
    text = format_usage(usage_report(ledger, 7), str(ledger.path))
    lines = text.splitlines()
    assert lines[0].startswith("LLM usage in the last 7 days")
    day_header = lines.index(next(line for line in lines if line.startswith("day")))
    assert lines[day_header + 2].startswith(NOW.date().isoformat())
    assert any(line.startswith("total") and "$1.25" in line and "1,050" in line for line in lines)
    model_header = next(line for line in lines if line.startswith("model"))
    gemma = next(line for line in lines if line.startswith("local/gemma"))
    assert gemma.index("ollama") == model_header.index("provider")
    assert len(gemma) == len(next(line for line in lines if line.startswith("gpt-4")))  # right-aligned
    assert "1 call(s) had no known price" in text


def test_format_usage_says_so_when_nothing_was_recorded(ledger: Ledger) -> None:
    text = format_usage(usage_report(ledger, 30), str(ledger.path))
    assert text == f"No LLM calls recorded in the last 30 days (UTC), in {ledger.path}.\n"


def test_usage_report_is_json_ready_with_totals_days_and_models(ledger: Ledger) -> None:
    ledger.record(call(cost_usd=0.5, prompt_tokens=10))
    report = usage_report(ledger, 30)
    assert report["total"] == {"calls": 1, "tokens": 10, "cost_usd": 0.5, "unpriced": 0}
    assert report["since"] == (NOW - timedelta(days=29)).date().isoformat()
    assert len(report["by_day"]) == 1 and report["by_model"][0]["model"] == "gpt-4"


# Budgets: tests/test_store_contract.py, on SQLite and PostgreSQL alike.


# --- schema and migrations -------------------------------------------------------------------------------


def applied(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
    finally:
        db.close()


def test_a_fresh_ledger_applies_every_migration_in_order(ledger: Ledger) -> None:
    ledger.spend()
    assert applied(ledger.path) == [m.__name__ for m in MIGRATIONS]
    db = sqlite3.connect(ledger.path)
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    db.close()
    assert {"calls_created_at", "calls_run_id", "calls_agent"} <= indexes
    assert journal == "wal"


def test_reopening_applies_nothing_again(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    with Ledger(path) as first:
        first.record(call())
    db = connect(path)
    assert migrate(db) == []
    db.close()
    with Ledger(path) as second:
        assert second.spend().calls == 1
    assert applied(path) == [m.__name__ for m in MIGRATIONS]


def test_a_database_from_the_first_migration_upgrades_to_the_latest(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    db = connect(path)
    assert migrate(db, MIGRATIONS[:1]) == ["m001_calls"]
    db.execute(
        "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd) "
        "VALUES ('2025-01-01T00:00:00.000000Z', 'cli', 'gpt-4', 'openai', 42, 0.5)"
    )
    db.close()
    with Ledger(path) as ledger:
        old = ledger.records()[0]
        assert old.fallbacks == () and old.model == "gpt-4"
        ledger.record(call(fallbacks=({"model": "x", "error_kind": "auth"},)))
        assert ledger.spend() == Spend(calls=2, tokens=42, cost_usd=0.5, unpriced=1)
    assert applied(path) == [m.__name__ for m in MIGRATIONS]


def test_a_ledger_of_the_previous_version_keeps_todays_spend_for_its_budgets(tmp_path: Path) -> None:
    """m007 fills the budget counters from the calls already recorded: an upgrade forgets no spend."""
    path = tmp_path / "usage.db"
    db = connect(path)
    migrate(db, MIGRATIONS[:5])  # the version before the budget counters
    today = NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for created, run in (("2025-01-01T00:00:00.000000Z", None), (today, "r1"), (today, "r1")):
        db.execute(
            "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd, run_id) "
            "VALUES (?, 'cli', 'gpt-4', 'openai', 10, 0.5, ?)",
            (created, run),
        )
    db.close()
    with Ledger(path) as ledger:
        counted = ledger.counted([f"day:{NOW.date().isoformat()}", "run:r1", "day:2025-01-01"])
    found = [(s.calls, s.tokens, s.cost_usd) for s in counted.values()]
    assert found == [(2, 20, 1.0), (2, 20, 1.0), (1, 10, 0.5)]
    assert applied(path) == [m.__name__ for m in MIGRATIONS]


def test_a_ledger_with_the_budget_counters_but_not_users_gains_them(tmp_path: Path) -> None:
    """A file of the version before users (m007 and m008 applied, m006 not) gets m006 and m009 on its
    next open: its calls become the local user's, in that user's day too."""
    path = tmp_path / "usage.db"
    db = connect(path)
    names = [m.__name__ for m in MIGRATIONS]
    migrate(db, [m for m in MIGRATIONS if m.__name__ not in ("m006_users", "m009_user_budget_counters")])
    db.execute(
        "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd) "
        "VALUES (?, 'cli', 'gpt-4', 'openai', 10, 0.5)",
        (NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),),
    )
    db.close()
    with Ledger(path) as ledger:
        ledger.record(call(cost_usd=0.25, user="ada"))
        assert [r.user for r in ledger.records()] == ["ada", None]
        assert {r["user"]: r["calls"] for r in ledger.by_user()} == {"local": 1, "ada": 1}
        day = NOW.date().isoformat()
        counted = ledger.counted([f"user:{day}:local", f"user:{day}:ada"])
    assert [(s.calls, s.cost_usd) for s in counted.values()] == [(1, 0.5), (1, 0.25)]
    assert sorted(applied(path)) == sorted(names)
    assert applied(path)[-2:] == ["m006_users", "m009_user_budget_counters"]


def test_a_ledger_with_users_but_not_the_budget_counters_counts_each_users_day(tmp_path: Path) -> None:
    """A file of the identity branch's version (m001 to m006): m007 fills the day and run counters, m009
    each user's day, from the calls recorded."""
    path = tmp_path / "usage.db"
    db = connect(path)
    migrate(db, MIGRATIONS[:6])
    today = NOW.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for user, cost in (("ada", 0.5), ("ada", 0.25), ("bob", 1.0)):
        db.execute(
            "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd, user) "
            "VALUES (?, 'llm_query', 'gpt-4', 'openai', 10, ?, ?)",
            (today, cost, user),
        )
    db.close()
    day = NOW.date().isoformat()
    with Ledger(path) as ledger:
        counted = ledger.counted([f"day:{day}", f"user:{day}:ada", f"user:{day}:bob"])
    assert [(s.calls, s.cost_usd) for s in counted.values()] == [(3, 1.75), (2, 0.75), (1, 1.0)]
    assert applied(path) == [m.__name__ for m in MIGRATIONS]


def test_a_failing_migration_leaves_nothing_half_applied(tmp_path: Path) -> None:
    def m004_broken(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half (x)")
        db.execute("THIS IS NOT SQL")

    db = connect(tmp_path / "usage.db")
    migrate(db, MIGRATIONS[:1])
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, (*MIGRATIONS, m004_broken))
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    names = [row[0] for row in db.execute("SELECT name FROM _migrations")]
    db.close()
    assert "half" not in tables and names == ["m001_calls"]


# --- concurrency -----------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from betty_mcp.llm.ledger import Ledger, UsageRecord

    db, go, ready, worker = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    ready.touch()
    while not go.exists():
        time.sleep(0.001)
    ledger = Ledger(db)
    for i in range(25):
        ledger.record(UsageRecord(caller="test", model="m", provider="p", prompt_tokens=1, run_id=worker))
    ledger.close()
    """
)


def test_several_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    db, go = tmp_path / "usage.db", tmp_path / "go"
    ready = [tmp_path / f"ready{n}" for n in range(4)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(go), str(flag), f"w{n}"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, flag in enumerate(ready)
    ]
    deadline = time.monotonic() + 30
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()  # every worker opens the fresh file (and migrates it) at once, then writes
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
    with Ledger(db) as ledger:
        assert ledger.spend() == Spend(calls=100, tokens=100, cost_usd=0.0, unpriced=100)
        assert all(ledger.spend(run_id=f"w{n}").calls == 25 for n in range(4))
    assert applied(db) == [m.__name__ for m in MIGRATIONS]


def test_one_ledger_can_be_shared_by_threads(ledger: Ledger) -> None:
    def write() -> None:
        for _ in range(25):
            ledger.record(call(prompt_tokens=1))
            ledger.spend_today()

    threads = [threading.Thread(target=write) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.spend().calls == 200
