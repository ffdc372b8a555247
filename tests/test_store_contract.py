"""The storage contract: the same behaviour from the SQLite store (the default) and the PostgreSQL store.

Every test runs on both: the ledger, budgets by reservation (per-user and per-role ones too), runs, run
events (traces) and whose they are, and the users of the HTTP front end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from betty_mcp.core.errors import BettyError, BudgetExceeded, ConfigError
from betty_mcp.core.identity import Caller, acting_as
from betty_mcp.llm.ledger import (
    Budgets,
    Spend,
    UsageRecord,
    UserBudget,
    check_batch,
    format_usage,
    reserve,
    tagged,
)
from betty_mcp.llm.users import Users, token_sha256
from betty_mcp.store import RunRecord, SqliteStore, Store

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)
YESTERDAY = NOW - timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened: Store = SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs")
    else:
        from betty_mcp.store.postgres import PostgresStore

        opened = PostgresStore(request.getfixturevalue("pg_url"))
    try:
        yield opened
    finally:
        await opened.aclose()


def call(**fields: object) -> UsageRecord:
    defaults: dict = {"caller": "llm_query", "model": "gpt-4", "provider": "openai"}
    return UsageRecord(**{**defaults, **fields})


async def recorded(store: Store, *records: UsageRecord) -> None:
    """Calls made before the test's (settled without a reservation, and written)."""
    for record in records:
        store.settle(record, None)
    await store.flush()


# --- the ledger ------------------------------------------------------------------------------------------


async def test_a_new_store_is_migrated_and_empty(store: Store) -> None:
    assert await store.spend() == Spend(calls=0, tokens=0, cost_usd=0.0, unpriced=0)
    status = await store.status()
    assert status.current and status.applied
    assert await store.upgrade() == []  # twice: nothing more to do


async def test_every_field_round_trips_and_totals_count_unknown_costs_as_zero(store: Store) -> None:
    hops = ({"model": "gpt-4o", "error_kind": "rate_limit", "message": "429"},)
    store.settle(
        call(
            prompt_tokens=100,
            completion_tokens=20,
            cost_usd=0.25,
            latency_ms=12.5,
            agent="api.analyzer",
            run_id="r1",
            fallbacks=hops,
            session_id="s1",
            request_class="think",
            created_at=NOW,
        ),
        None,
    )
    with tagged(consensus_id="c-1"):
        store.settle(call(model="local/gemma", provider="ollama", prompt_tokens=5, outcome="timeout"), None)
    assert await store.spend() == Spend(calls=2, tokens=125, cost_usd=0.25, unpriced=1)
    assert (await store.spend(run_id="r1")).calls == 1
    assert (await store.spend(agent="api.analyzer")).tokens == 120
    assert (await store.spend(consensus_id="c-1")).calls == 1
    newest, oldest = await store.records()
    assert newest.consensus_id == "c-1" and newest.cost_usd is None and newest.outcome == "timeout"
    assert oldest.fallbacks == hops and oldest.session_id == "s1" and oldest.request_class == "think"
    assert oldest.created_at is not None and abs(oldest.created_at - NOW) < timedelta(milliseconds=1)
    assert [r.run_id for r in await store.records(run_id="r1")] == ["r1"]
    assert len(await store.records(limit=1)) == 1


async def test_the_usage_report_groups_by_day_model_and_caller(store: Store) -> None:
    store.settle(call(cost_usd=1.25, prompt_tokens=1000, created_at=NOW), None)
    store.settle(call(model="local/gemma", provider="ollama", prompt_tokens=50, created_at=YESTERDAY), None)
    store.settle(call(caller="gateway", cost_usd=0.5, outcome="server", created_at=NOW), None)
    report = await store.usage(7)
    assert report["total"] == {"calls": 3, "tokens": 1050, "cost_usd": 1.75, "unpriced": 1}
    assert [d["day"] for d in report["by_day"]] == [NOW.date().isoformat(), YESTERDAY.date().isoformat()]
    assert report["by_day"][0] == {
        "day": NOW.date().isoformat(),
        "calls": 2,
        "tokens": 1000,
        "cost_usd": 1.75,
        "unpriced": 0,
        "errors": 1,
    }
    assert [m["model"] for m in report["by_model"]] == ["gpt-4", "local/gemma"]
    assert [(c["caller"], c["share"]) for c in report["by_caller"]] == [
        ("llm_query", 2 / 3),
        ("gateway", 1 / 3),
    ]
    text = format_usage(report, store.where)
    assert text.startswith("LLM usage in the last 7 days") and "1 call(s) had no known price" in text


async def test_every_call_is_someones_and_the_report_groups_by_user(store: Store) -> None:
    store.settle(call(cost_usd=1.0, user="ada"), None)
    with acting_as(Caller("bob", "ops")):  # no user on the record: the current caller's
        store.settle(call(cost_usd=0.25, prompt_tokens=10), None)
    store.settle(call(cost_usd=0.5, outcome="timeout"), None)  # stdio and the CLI: the local user
    assert [r.user for r in await store.records()] == ["local", "bob", "ada"]
    assert [r.user for r in await store.records(user="bob")] == ["bob"]
    assert (await store.spend(user="ada")).cost_usd == 1.0
    assert (await store.spend(user="bob")).tokens == 10
    report = await store.usage(7)
    assert [(u["user"], u["calls"], u["cost_usd"], u["errors"]) for u in report["by_user"]] == [
        ("ada", 1, 1.0, 0),
        ("local", 1, 0.5, 1),
        ("bob", 1, 0.25, 0),
    ]
    only = await store.usage(7, by="user")
    assert set(only) == {"days", "since", "total", "by_user"} and only["by_user"] == report["by_user"]
    text = format_usage(only, store.where)
    assert "user" in text and "ada" in text and "model" not in text and "caller" not in text
    with pytest.raises(ValueError, match="by must be one of"):
        await store.usage(7, by="nobody")


# --- budgets, by reservation ---------------------------------------------------------------------------


async def test_no_budgets_never_refuse_and_need_no_reservation(store: Store) -> None:
    await recorded(store, call(cost_usd=1000.0, prompt_tokens=10**9, run_id="r1"))
    held = await reserve(store, Budgets(), cost_usd=1000.0, tokens=10**9, run_id="r1")
    assert not held.held


async def test_calls_within_every_budget_pass(store: Store) -> None:
    await recorded(store, call(cost_usd=1.0, prompt_tokens=100, run_id="r1"))
    budgets = Budgets(
        per_call_usd=1.0, per_run_usd=2.0, per_day_usd=2.0, per_run_tokens=200, per_day_tokens=200
    )
    held = await reserve(store, budgets, cost_usd=1.0, tokens=100, run_id="r1")
    assert held.held and len(held.claimed) == 2


async def test_spending_exactly_up_to_the_limit_passes_despite_float_rounding(store: Store) -> None:
    for _ in range(3):
        await recorded(store, call(cost_usd=0.1))
    await reserve(store, Budgets(per_day_usd=0.4), cost_usd=0.1)  # 0.1 * 4 is 0.4000000000000001


async def test_a_per_call_budget_refuses_a_call_estimated_above_it(store: Store) -> None:
    with pytest.raises(BudgetExceeded) as caught:
        await reserve(store, Budgets(per_call_usd=0.10), cost_usd=0.25)
    assert caught.value.budget == "per_call"
    assert str(caught.value) == (
        "per-call budget of $0.10 exceeded: this call is estimated at $0.25; "
        "raise llm_router.limits.budgets.per_call_usd in betty.yaml"
    )
    with pytest.raises(
        BudgetExceeded, match=r"budget of \$0\.0010 exceeded: this call is estimated at \$0\.0042"
    ):
        await reserve(store, Budgets(per_call_usd=0.001), cost_usd=0.0042)


async def test_a_per_run_budget_counts_only_that_run(store: Store) -> None:
    await recorded(store, call(cost_usd=0.90, run_id="r1"))
    await recorded(store, call(cost_usd=5.00, run_id="other"))
    budgets = Budgets(per_run_usd=1.0)
    store.release(await reserve(store, budgets, cost_usd=0.05, run_id="r1"))
    await store.flush()  # a release, like a settlement, may be written in the background
    await reserve(store, budgets, cost_usd=5.0)  # a call outside any run has no run budget
    with pytest.raises(BudgetExceeded) as caught:
        await reserve(store, budgets, cost_usd=0.20, run_id="r1")
    assert caught.value.budget == "per_run"
    message = str(caught.value)
    assert "run budget of $1.00" in message and "$0.90 spent by run r1" in message
    assert "~$0.20 for this call" in message and "limits.budgets.per_run_usd" in message


async def test_a_daily_budget_counts_today_only_and_names_the_amounts(store: Store) -> None:
    await recorded(store, call(cost_usd=100.0, created_at=YESTERDAY))
    await recorded(store, call(cost_usd=4.98, created_at=NOW))
    with pytest.raises(BudgetExceeded) as caught:
        await reserve(store, Budgets(per_day_usd=5.0), cost_usd=0.05)
    assert caught.value.budget == "per_day"
    assert str(caught.value) == (
        "daily budget of $5.00 reached: $4.98 spent today (UTC) + ~$0.05 for this call; "
        "raise llm_router.limits.budgets.per_day_usd in betty.yaml"
    )


async def test_a_budget_already_used_up_refuses_even_a_free_call(store: Store) -> None:
    await recorded(store, call(cost_usd=5.0))
    with pytest.raises(BudgetExceeded, match=r"daily budget of \$5\.00 reached: \$5\.00 spent"):
        await reserve(store, Budgets(per_day_usd=5.0), cost_usd=0.0)


async def test_token_budgets_per_run_and_per_day(store: Store) -> None:
    await recorded(store, call(prompt_tokens=9000, completion_tokens=500, run_id="r1"))
    with pytest.raises(BudgetExceeded) as caught:
        await reserve(store, Budgets(per_run_tokens=10_000), tokens=1000, run_id="r1")
    assert caught.value.budget == "per_run_tokens"
    assert "run token budget of 10,000 reached: 9,500 tokens used by run r1 + ~1,000" in str(caught.value)
    await recorded(store, call(prompt_tokens=50_000, created_at=YESTERDAY))
    await reserve(store, Budgets(per_day_tokens=10_000), tokens=400)  # 9,500 + 400 in flight
    with pytest.raises(BudgetExceeded) as caught:
        await reserve(store, Budgets(per_day_tokens=10_000), tokens=101)
    assert caught.value.budget == "per_day_tokens"
    assert "daily token budget of 10,000 reached: 9,900 tokens used today (UTC) + ~101" in str(caught.value)


async def test_a_reservation_counts_until_settled_at_what_the_call_really_cost(store: Store) -> None:
    budgets = Budgets(per_day_usd=1.0)
    first = await reserve(store, budgets, cost_usd=0.6)
    with pytest.raises(BudgetExceeded):  # 0.6 is in flight: another 0.6 cannot fit
        await reserve(store, budgets, cost_usd=0.6)
    store.settle(call(cost_usd=0.1), first)  # the call ended costing less than its estimate
    await store.flush()
    second = await reserve(store, budgets, cost_usd=0.6)
    store.release(second)  # never sent: nothing spent
    await store.flush()
    counted = await store.counted(list(second.claimed))
    assert counted[second.claimed[0]].cost_usd == pytest.approx(0.1)
    assert (await store.spend()).calls == 1


async def test_concurrent_reservations_never_pass_the_limit(store: Store) -> None:
    budgets, granted, refused = Budgets(per_day_usd=0.70), [], []

    async def one() -> None:
        try:
            granted.append(await reserve(store, budgets, cost_usd=0.1))
        except BudgetExceeded:
            refused.append(1)

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(one)
    assert (len(granted), len(refused)) == (7, 13)


async def test_a_fan_out_is_checked_against_spent_plus_reserved(store: Store) -> None:
    budgets = Budgets(per_day_usd=1.0, per_call_usd=0.5)
    await reserve(store, budgets, cost_usd=0.5)  # in flight
    await check_batch(store, budgets, call_costs=[0.2, 0.2], what="this consensus (2 calls)")
    with pytest.raises(BudgetExceeded) as caught:
        await check_batch(store, budgets, call_costs=[0.3, 0.3], what="this consensus (2 calls)")
    assert caught.value.budget == "per_day"
    assert "would be passed by $0.10 ($0.50 used today (UTC) + up to $0.60" in str(caught.value)
    with pytest.raises(BudgetExceeded, match=r"per-call budget of \$0\.50 would be passed by \$0\.10"):
        await check_batch(store, budgets, call_costs=[0.6])


# --- per-user and per-role budgets -----------------------------------------------------------------


PER_USER = Budgets(
    per_user=UserBudget(day_usd=1.0, day_tokens=1000),
    per_role={"ops": UserBudget(day_usd=5.0, setting="roles.ops.budgets")},
)


async def test_a_users_budget_counts_only_their_own_calls_today(store: Store) -> None:
    await recorded(
        store,
        call(cost_usd=0.95, user="ada"),
        call(cost_usd=100.0, user="ada", created_at=YESTERDAY),
        call(cost_usd=50.0, user="cy"),
    )
    with acting_as(Caller("ada")):
        await reserve(store, PER_USER, cost_usd=0.05)  # 0.95 + 0.05: exactly the limit
        with pytest.raises(BudgetExceeded) as caught:
            await reserve(store, PER_USER, cost_usd=0.01)
    assert caught.value.budget == "per_user_day"
    assert str(caught.value) == (
        "user's daily budget of $1.00 reached: $1.00 spent by user ada today (UTC) + ~$0.01 for this "
        "call; raise llm_router.limits.budgets.per_user.day_usd"
    )
    with acting_as(Caller("dan")):  # another user's day is untouched
        held = await reserve(store, PER_USER, cost_usd=0.5, tokens=10)
    assert held.claimed == (f"user:{NOW.date().isoformat()}:dan",)


async def test_a_roles_budget_replaces_the_per_user_one_and_names_its_setting(store: Store) -> None:
    await recorded(store, call(cost_usd=4.5, user="bob"), call(prompt_tokens=990, user="ann"))
    with acting_as(Caller("bob", "ops")):
        await reserve(store, PER_USER, cost_usd=0.4)
        with pytest.raises(BudgetExceeded, match=r"raise roles\.ops\.budgets\.day_usd$"):
            await reserve(store, PER_USER, cost_usd=0.2)
        with pytest.raises(BudgetExceeded) as batch:
            await check_batch(store, PER_USER, call_costs=[0.1, 0.1], what="this consensus (2 calls)")
    assert batch.value.budget == "per_user_day"
    assert "the user's daily budget of $5.00 would be passed by $0.10 ($4.90 used by user bob" in str(
        batch.value
    )
    with acting_as(Caller("ann", "analyst")), pytest.raises(BudgetExceeded) as tokens:
        await reserve(store, PER_USER, tokens=20)  # no budgets for analyst: per_user's tokens
    assert tokens.value.budget == "per_user_day_tokens"
    assert "user's daily token budget of 1,000 reached: 990 tokens used by user ann" in str(tokens.value)
    assert str(tokens.value).endswith("raise llm_router.limits.budgets.per_user.day_tokens")


async def test_a_settled_call_counts_in_its_users_day_whoever_settles_it(store: Store) -> None:
    with acting_as(Caller("eve")):
        held = await reserve(store, PER_USER, cost_usd=0.9)
    store.settle(call(cost_usd=0.3, user="eve"), held)  # written later, outside eve's context
    await store.flush()
    with acting_as(Caller("eve")):
        await reserve(store, PER_USER, cost_usd=0.7)
        with pytest.raises(BudgetExceeded):
            await reserve(store, PER_USER, cost_usd=0.01)


async def test_concurrent_reservations_never_pass_a_users_limit(store: Store) -> None:
    budgets, granted, refused = Budgets(per_user=UserBudget(day_usd=0.5)), [], []

    async def one(user: str) -> None:
        with acting_as(Caller(user)):
            try:
                granted.append((user, await reserve(store, budgets, cost_usd=0.1)))
            except BudgetExceeded:
                refused.append(user)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, "ada" if i % 2 else "bob")
    assert sorted(u for u, _ in granted) == ["ada"] * 5 + ["bob"] * 5 and len(refused) == 10


def test_budget_exceeded_is_a_betty_error() -> None:
    assert issubclass(BudgetExceeded, BettyError)


# --- runs and traces -----------------------------------------------------------------------------------


async def test_runs_are_kept_updated_and_listed_newest_first(store: Store) -> None:
    older = RunRecord("r-old", "agent", "api.analyzer", "review", created_at=YESTERDAY, owner="ada")
    await store.save_run(older)
    run = RunRecord("r-new", "consensus", "llm.consensus", "tabs?", status_doc={"status": "running"})
    await store.save_run(run)
    run.status, run.error = "failed", "every model failed"
    run.result_doc = {"status": "failed", "answers": [{"model": "m", "response": None}]}
    await store.save_run(run)
    found = await store.get_run("r-new")
    assert found is not None and found.finished and found.error == "every model failed"
    assert found.result_doc["answers"][0]["model"] == "m" and found.kind == "consensus"
    assert [r.run_id for r in await store.list_runs()] == ["r-new", "r-old"]
    assert (await store.get_run("r-old")).owner == "ada"  # type: ignore[union-attr]
    assert await store.get_run("nope") is None


HOLD_A_RUN = """
import asyncio, sys
from pathlib import Path
from betty_mcp.store import RunRecord, SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]) / "usage.sqlite", Path(sys.argv[1]) / "runs")
    run = RunRecord("r-held", "agent", "demo.waiter", "wait", status_doc={"status": "running"})
    await store.save_run(run)
    print("saved", flush=True)
    sys.stdin.readline()  # until the test has looked

asyncio.run(main())
"""


async def test_a_run_whose_sqlite_process_died_is_worker_lost_once_and_for_all(tmp_path: Path) -> None:
    """Without a shared database, a run held by a process that is gone (kill -9) reads as failed."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RUN, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"saved\n"
        store = SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs")
        running = await store.get_run("r-held")
        assert running is not None and running.status == "running", "its process is alive: it runs"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        lost = await store.get_run("r-held")
        assert lost is not None and lost.status == "failed" and lost.error.startswith("worker_lost")  # type: ignore[union-attr]
        assert lost.status_doc["status"] == lost.result_doc["status"] == "failed"
        again = SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs")
        assert [r.status for r in await again.list_runs()] == ["failed"], "marked in the file, for everyone"
        mine = RunRecord("r-mine", "agent", "demo.waiter", "wait")
        await again.save_run(mine)
        assert (await again.get_run("r-mine")).status == "running"  # type: ignore[union-attr]
        reused = f"{socket.gethostname()}:{os.getpid()}:1"  # this pid, but a process that started at boot
        again.ledger.execute("UPDATE runs SET holder = ? WHERE run_id = 'r-mine'", (reused,))
        assert (await again.get_run("r-mine")).status == "failed", "a pid reused by another process"  # type: ignore[union-attr]
    finally:
        if holder.poll() is None:
            holder.kill()


async def test_run_events_come_back_in_order(store: Store) -> None:
    assert await store.events("r1") is None
    for i in range(5):
        store.append_event("r1", {"event": "step", "i": i, "text": "é"})
    store.append_event("r2", {"event": "run_started"})
    events = await store.events("r1")
    assert [e["i"] for e in events or []] == [0, 1, 2, 3, 4] and events[0]["text"] == "é"  # type: ignore[index]
    assert set(await store.traced_runs()) == {"r1", "r2"}
    assert "r1" in store.trace_location("r1")


async def test_a_traces_user_is_its_first_events_and_lists_filter_by_it(store: Store) -> None:
    store.append_event("r-ada", {"event": "run_started", "user": "ada"})
    store.append_event("r-ada", {"event": "run_finished", "user": "bob"})
    store.append_event("r-bob", {"event": "run_started", "user": "bob"})
    store.append_event("r-old", {"event": "run_started"})  # before runs had users
    assert await store.trace_user("r-ada") == "ada"
    assert await store.trace_user("r-old") == "local"
    assert await store.trace_user("r-none") is None
    assert await store.traced_runs(user="ada") == ["r-ada"]
    assert await store.traced_runs(user="local") == ["r-old"]
    assert set(await store.traced_runs()) == {"r-ada", "r-bob", "r-old"}


# --- users ---------------------------------------------------------------------------------------------


async def test_users_are_added_found_by_token_revoked_and_added_again(store: Store) -> None:
    users = Users(store)
    assert not await users.any_active() and await users.list() == []
    token = await users.add("ada", "analyst")
    assert token.startswith("bmcp_") and await users.any_active()
    found = await users.find(token)
    assert found is not None and (found.name, found.role, found.active) == ("ada", "analyst", True)
    assert await users.find(token + "x") is None
    with pytest.raises(ConfigError, match="user 'ada' exists; revoke it first"):
        await users.add("ada")
    for name in ("local", "default", "a b", ""):
        with pytest.raises(ConfigError):
            await users.add(name)
    assert await users.revoke("ada") and not await users.revoke("ada") and not await users.revoke("zed")
    assert await users.find(token) is None and not await users.any_active()
    (listed,) = await users.list()
    assert listed.name == "ada" and not listed.active and listed.revoked_at is not None
    assert listed.created_at.endswith("Z") and listed.revoked_at.endswith("Z")  # type: ignore[union-attr]
    again = await users.add("ada", "ops")  # a revoked name gets a new life and a new token
    assert again != token and await users.find(token) is None
    assert (await users.find(again)).role == "ops"  # type: ignore[union-attr]
    await store.add_user("bob", None, token_sha256("bob-token"))
    assert [u.name for u in await users.list()] == ["ada", "bob"]
    assert (await users.find("bob-token")).role is None  # type: ignore[union-attr]


HOLD_A_RESERVATION = """
import asyncio, sys
from pathlib import Path
from betty_mcp.llm.ledger import Budgets, reserve
from betty_mcp.store import SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]) / "usage.sqlite", Path(sys.argv[1]) / "runs")
    held = await reserve(store, Budgets(per_day_usd=1.0), cost_usd=0.6)
    print(held.claimed[0], flush=True)
    sys.stdin.readline()  # a call in flight, until kill -9

asyncio.run(main())
"""


async def test_what_a_killed_sqlite_process_reserved_is_given_back_when_it_is_needed(tmp_path: Path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_RESERVATION, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    store = SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs")
    try:
        assert holder.stdout is not None
        scope = holder.stdout.readline().decode().strip()
        budgets = Budgets(per_day_usd=1.0)
        with pytest.raises(BudgetExceeded):  # its process is alive: its 0.6 is in flight
            await reserve(store, budgets, cost_usd=0.6)
        holder.kill()
        holder.wait(timeout=10)
        mine = await reserve(store, budgets, cost_usd=0.6)  # the dead process's 0.6 is given back
        assert (await store.counted([scope]))[scope].cost_usd == pytest.approx(0.6)
        store.settle(call(cost_usd=0.5), mine)
        assert (await store.counted([scope]))[scope].cost_usd == pytest.approx(0.5)
        assert store.ledger.rows("SELECT count(*) FROM budget_holds") == [(0,)], "settled: nothing held"
    finally:
        if holder.poll() is None:
            holder.kill()
        await store.aclose()
