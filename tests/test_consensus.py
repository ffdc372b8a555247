"""llm_consensus: one question to several models at once, through the real LiteLLM HTTP path against the
scripted OpenAI-compatible server (models that answer, sleep, hang, fail with a 500 or a 401), in
process, through the real MCP server, the CLI, the bundled skill and an agent run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from betty_mcp.core.config import load_settings
from betty_mcp.core.errors import ArgumentsError, BudgetExceeded, ConfigError
from betty_mcp.services import Services
from tests.conftest import ERAS, stdio_client
from tests.fakes.scripted_llm import Error, Hang, Reply, ScriptedLLM, Slow, ToolCalls

pytestmark = pytest.mark.anyio

SECRET = "sk-consensus-secret-0123456789"
ENV = {"SCRIPTED_API_KEY": SECRET}
PRICE = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
MODELS = ["fast", "slow", "slower", "failing", "locked", "judge"]
VERDICT = {"agreement": "both like tabs", "disagreement": "width", "recommendation": "use tabs"}


@pytest.fixture
def llm():
    with ScriptedLLM() as server:
        yield server


def write_config(workspace: Path, llm: ScriptedLLM, **extra: Any) -> None:
    router = {
        "default_model": "scripted/fast",
        "embedded_fallback": False,
        "providers": {
            "scripted": {
                "type": "openai_compatible",
                "endpoint": llm.base_url,
                "api_key_env": "SCRIPTED_API_KEY",
                "models": [{"name": name, **PRICE} for name in MODELS]
                + [{"name": "main", "supports_tools": True}],
            },
        },
        **extra,
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))


@pytest.fixture
def services(workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch) -> Services:
    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm)
    return Services(load_settings(workspace / "betty.yaml", workspace=workspace))


def budgeted(workspace: Path, llm: ScriptedLLM, **budgets: float) -> Services:
    write_config(workspace, llm, limits={"budgets": budgets})
    return Services(load_settings(workspace / "betty.yaml", workspace=workspace))


async def warm(services: Services, *models: str) -> None:
    """LiteLLM loaded and each model's client made, so timings measure the calls alone."""
    for model in models:
        await services.query_llm({"prompt": "warm", "model": f"scripted/{model}"})


def ask(**arguments: Any) -> dict[str, Any]:
    return {"prompt": "Tabs or spaces?", "models": ["scripted/fast", "scripted/slow"], **arguments}


def ledger_rows(workspace: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(workspace / ".betty-mcp" / "usage.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM calls ORDER BY id")]
    finally:
        db.close()


# -- the fan-out ---------------------------------------------------------------------------------


async def test_three_one_second_models_answer_together_in_about_one_second(
    services: Services, llm: ScriptedLLM
) -> None:
    await warm(services, "fast", "slow", "slower")
    for model in ("fast", "slow", "slower"):
        llm.script(model, Slow(1.0, Reply(f"{model} says tabs")))
    started = time.monotonic()
    out = await services.consensus(ask(models=["scripted/fast", "scripted/slow", "scripted/slower"]))
    wall = time.monotonic() - started
    assert out["status"] == "completed" and [a["response"] for a in out["answers"]] == [
        "fast says tabs",
        "slow says tabs",
        "slower says tabs",
    ]
    assert 1.0 <= wall < 1.5, f"three 1 s models took {wall:.2f} s: they were not asked at once"
    arrivals = [r.time for r in llm.requests[-3:]]
    assert max(arrivals) - min(arrivals) < 0.3, "every request was sent before any answer came"
    assert out["totals"]["wall_ms"] < 1500 and out["totals"]["answered"] == 3


async def test_each_answer_has_tokens_cost_latency_and_the_totals_add_up(
    services: Services, llm: ScriptedLLM
) -> None:
    llm.script("fast", Reply("tabs", prompt_tokens=10, completion_tokens=4))
    llm.script("slow", Reply("spaces", prompt_tokens=20, completion_tokens=6))
    out = await services.consensus(ask())
    fast, slow = out["answers"]
    assert (fast["model_used"], fast["provider"], fast["response"]) == ("scripted/fast", "scripted", "tabs")
    assert fast["tokens"] == {"prompt": 10, "completion": 4, "total": 14}
    assert fast["cost_usd"] == pytest.approx(10e-6 + 8e-6) and fast["latency_ms"] > 0
    assert fast["fallbacks"] == [] and fast["error"] is None and slow["response"] == "spaces"
    totals = out["totals"]
    assert totals["tokens"] == 40 and totals["cost_usd"] == pytest.approx((10 + 8 + 20 + 12) * 1e-6)
    assert totals["calls"] == 2 and out["judge"] is None


async def test_stances_reach_each_models_own_prompt(services: Services, llm: ScriptedLLM) -> None:
    models = ["scripted/fast", "scripted/slow", "scripted/slower", "scripted/fast"]
    stances = ["for", "against", "argue for 8-space tabs", None]
    out = await services.consensus(ask(models=models, stances=stances, system_prompt="Be brief."))
    assert [a["stance"] for a in out["answers"]] == stances
    systems: dict[str, list[str]] = {}
    for request in llm.requests:
        assert request.messages[-1] == {"role": "user", "content": "Tabs or spaces?"}
        systems.setdefault(request.model or "", []).append(request.messages[0]["content"])
    assert sorted(systems["fast"]) == [
        "Be brief.",
        "Be brief.\n\nArgue FOR: make the strongest honest case "
        "in favour (of the proposal, or for answering yes), and say what would change your mind.",
    ]
    assert systems["slow"] == [systems["slow"][0]] and systems["slow"][0].startswith(
        "Be brief.\n\nArgue AGAINST"
    )
    assert systems["slower"] == ["Be brief.\n\nTake this stance: argue for 8-space tabs"]


async def test_stances_by_model_name_and_unknown_ones_refused(services: Services, llm: ScriptedLLM) -> None:
    out = await services.consensus(ask(stances={"scripted/slow": "against"}))
    assert [a["stance"] for a in out["answers"]] == [None, "against"]
    with pytest.raises(ArgumentsError, match="'gpt-9', which is not among the models"):
        await services.consensus(ask(stances={"gpt-9": "for"}))
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        await services.consensus(ask(models=["scripted/fast", "nope"]))
    assert len(llm.requests) == 2, "nothing is sent for a consensus refused at planning"


async def test_round_one_is_blind_and_round_two_quotes_the_others_answers(
    services: Services, llm: ScriptedLLM
) -> None:
    llm.script("fast", Reply("FAST-FIRST"), Reply("FAST-REVISED"))
    llm.script("slow", Reply("SLOW-FIRST"), Reply("SLOW-REVISED"))
    llm.script("slower", Reply("SLOWER-FIRST"), Error(503))
    models = ["scripted/fast", "scripted/slow", "scripted/slower"]
    out = await services.consensus(ask(models=models, rounds=2))
    first = {r.model: r for r in llm.requests[:3]}
    for model, request in first.items():
        text = json.dumps(request.messages)
        assert "FIRST" not in text, f"{model} saw an answer in round 1"
    second = {r.model: r for r in llm.requests[3:]}
    fast = second["fast"].messages
    assert fast[-2] == {"role": "assistant", "content": "FAST-FIRST"}
    assert "SLOW-FIRST" in fast[-1]["content"] and "SLOWER-FIRST" in fast[-1]["content"]
    assert "FAST-FIRST" not in fast[-1]["content"], "its own answer is not quoted as another's"
    assert "scripted/" not in fast[-1]["content"], "blind: the others are not named"
    assert [a["response"] for a in out["answers"]] == ["FAST-REVISED", "SLOW-REVISED", "SLOWER-FIRST"]
    assert [a["round"] for a in out["answers"]] == [2, 2, 1]
    assert out["answers"][2]["revision_error"] and "server" in out["answers"][2]["revision_error"]
    assert [a["response"] for a in out["first_round"]] == ["FAST-FIRST", "SLOW-FIRST", "SLOWER-FIRST"]
    assert out["totals"]["calls"] == 6


async def test_not_blind_names_the_other_models(services: Services, llm: ScriptedLLM) -> None:
    llm.script("fast", Reply("A1"), Reply("A2"))
    llm.script("slow", Reply("B1"), Reply("B2"))
    await services.consensus(ask(rounds=2, blind=False))
    revision = llm.requests_for("fast")[-1].messages[-1]["content"]
    assert "(from scripted/slow)" in revision and "B1" in revision


async def test_the_judge_answers_in_json_through_response_format(
    services: Services, llm: ScriptedLLM
) -> None:
    llm.script("fast", Reply("tabs"))
    llm.script("slow", Reply("spaces"))
    llm.script("judge", Reply(json.dumps(VERDICT)))
    out = await services.consensus(ask(judge="scripted/judge", stances=["for", "against"]))
    verdict = out["judge"]
    assert verdict["format"] == "json" and verdict["model_used"] == "scripted/judge"
    assert {k: verdict[k] for k in VERDICT} == VERDICT and out["answer"] == "use tabs"
    request = llm.requests_for("judge")[0]
    assert request.body["response_format"]["type"] == "json_schema"
    assert request.body["response_format"]["json_schema"]["schema"]["required"] == list(VERDICT)
    shown = request.messages[-1]["content"]
    assert "tabs" in shown and "spaces" in shown and "[stance: against]" in shown
    assert "scripted/fast" not in shown, "blind: the judge does not see who answered"
    assert out["totals"]["calls"] == 3


async def test_a_judge_answering_in_prose_falls_back_to_text(services: Services, llm: ScriptedLLM) -> None:
    llm.script("judge", Reply("Both are fine; pick tabs."))
    out = await services.consensus(ask(judge="scripted/judge"))
    verdict = out["judge"]
    assert verdict["format"] == "text" and verdict["recommendation"] == "Both are fine; pick tabs."
    assert verdict["agreement"] is None and "not valid JSON" in verdict["note"]


async def test_a_judge_refusing_response_format_is_asked_again_without_it(
    services: Services, llm: ScriptedLLM
) -> None:
    llm.script("judge", Error(400, message="response_format is not supported"), Reply(json.dumps(VERDICT)))
    out = await services.consensus(ask(judge="scripted/judge"))
    assert out["judge"]["format"] == "json" and out["judge"]["recommendation"] == "use tabs"
    assert "refused response_format" in out["judge"]["note"]
    first, again = llm.requests_for("judge")
    assert "response_format" in first.body and "response_format" not in again.body


async def test_a_failing_model_leaves_its_error_and_the_others_count(
    services: Services, llm: ScriptedLLM
) -> None:
    llm.script("failing", Error(500))
    llm.script("locked", Error(401))
    models = ["scripted/fast", "scripted/failing", "scripted/locked"]
    out = await services.consensus(ask(models=models))
    fast, failing, locked = out["answers"]
    assert out["status"] == "completed" and out["error"] is None
    assert fast["response"] == "ok" and fast["error"] is None
    assert failing["response"] is None and failing["error_kind"] == "server" and "server" in failing["error"]
    assert locked["error_kind"] == "auth" and locked["fallbacks"][0]["error_kind"] == "auth"
    assert out["totals"]["answered"] == 1 and out["totals"]["failed"] == 2


async def test_a_timed_out_model_is_a_failed_answer(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm, limits={"request_timeout_seconds": 1, "deadline_seconds": 1})
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace))
    await warm(services, "fast", "slow")
    llm.script("slow", Hang(seconds=10))
    started = time.monotonic()
    out = await services.consensus(ask())
    assert time.monotonic() - started < 4
    assert out["status"] == "completed" and out["answers"][1]["error_kind"] == "timeout"


async def test_every_model_failing_is_a_failure_with_each_error(services: Services, llm: ScriptedLLM) -> None:
    llm.script("failing", Error(500))
    llm.script("locked", Error(401))
    out = await services.consensus(
        ask(models=["scripted/failing", "scripted/locked"], judge="scripted/judge")
    )
    assert out["status"] == "failed"
    assert "every model failed" in out["error"] and "scripted/locked: auth" in out["error"]
    assert llm.requests_for("judge") == [], "no judge without answers"


# -- the cost pre-check ---------------------------------------------------------------------------


async def test_max_cost_refuses_the_whole_fan_out_before_any_request(
    services: Services, llm: ScriptedLLM, workspace: Path
) -> None:
    # Worst case: 2 answers of ~5 prompt tokens + 1000 out at $2/Mtok ($0.002 each), and the judge
    # reading both (~2,200 tokens in, $0.0022) + 1000 out: about $0.0082.
    with pytest.raises(BudgetExceeded) as refused:
        await services.consensus(ask(judge="scripted/judge", max_tokens=1000, max_cost_usd=0.008))
    assert refused.value.budget == "max_cost_usd"
    message = str(refused.value)
    assert "(3 calls) refused: max_cost_usd of $0.008 would be passed by $0.0002" in message
    assert "the worst case is $0.0082" in message
    assert llm.requests == [] and not (workspace / ".betty-mcp" / "usage.sqlite").exists()
    out = await services.consensus(ask(judge="scripted/judge", max_tokens=1000, max_cost_usd=0.0085))
    assert out["status"] == "completed" and out["estimate"]["calls"] == 3
    assert out["estimate"]["worst_case_usd"] == pytest.approx(0.0082, abs=0.0001)


async def test_ledger_budgets_refuse_the_fan_out_naming_the_budget_and_by_how_much(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    per_call = budgeted(workspace, llm, per_call_usd=0.0015)
    with pytest.raises(BudgetExceeded) as refused:  # one call's worst case: ~$0.002
        await per_call.consensus(ask(max_tokens=1000))
    assert refused.value.budget == "per_call" and "per-call budget of $0.0015 would be passed by" in str(
        refused.value
    )
    daily = budgeted(workspace, llm, per_day_usd=0.003)
    with pytest.raises(BudgetExceeded) as refused:  # each call fits, both do not
        await daily.consensus(ask(max_tokens=1000))
    message = str(refused.value)
    assert refused.value.budget == "per_day" and "daily budget of $0.0030 would be passed by $0.00" in message
    assert "per_day_usd" in message
    assert llm.requests == []
    tokens = budgeted(workspace, llm, per_run_tokens=1500)
    with pytest.raises(BudgetExceeded) as refused:
        await tokens.consensus(ask(max_tokens=1000))
    assert refused.value.budget == "per_run_tokens" and "would be passed by" in str(refused.value)
    assert llm.requests == [], "the scripted server saw no request at all"


async def test_unpriced_models_are_listed_in_the_estimate(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm)
    config = yaml.safe_load((workspace / "betty.yaml").read_text())
    config["llm_router"]["providers"]["paid"] = {
        "type": "openai",
        "endpoint": llm.base_url + "/v1",
        "api_key_env": "SCRIPTED_API_KEY",
        "models": ["mystery"],
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump(config))
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace))
    out = await services.consensus(ask(models=["scripted/fast", "paid/mystery"], max_cost_usd=1.0))
    assert out["estimate"]["unpriced"] == ["paid/mystery"] and out["status"] == "completed"


# -- the ledger ----------------------------------------------------------------------------------


async def test_each_call_is_a_ledger_row_carrying_one_consensus_id(
    services: Services, llm: ScriptedLLM, workspace: Path
) -> None:
    llm.script("failing", Error(500))
    llm.script("judge", Reply(json.dumps(VERDICT)))
    await services.query_llm({"prompt": "before", "model": "scripted/fast"})
    out = await services.consensus(
        ask(models=["scripted/fast", "scripted/slow", "scripted/failing"], judge="scripted/judge")
    )
    await services.query_llm({"prompt": "after", "model": "scripted/fast"})
    rows = ledger_rows(workspace)
    fan_out = [r for r in rows if r["consensus_id"] is not None]
    assert {r["consensus_id"] for r in fan_out} == {out["consensus_id"]}
    assert sorted((r["model"], r["outcome"]) for r in fan_out) == [
        ("scripted/failing", "server"),
        ("scripted/fast", "ok"),
        ("scripted/judge", "ok"),
        ("scripted/slow", "ok"),
    ]
    assert {r["caller"] for r in fan_out} == {"llm_consensus"}
    assert {r["run_id"] for r in fan_out} == {out["consensus_id"]}, "run budgets see the fan-out as one run"
    assert [r["consensus_id"] for r in rows if r["caller"] == "llm_query"] == [None, None]
    store = services.store
    assert len(await store.records(consensus_id=out["consensus_id"])) == 4
    spent = await store.spend(consensus_id=out["consensus_id"])
    assert spent.cost_usd == pytest.approx(out["totals"]["cost_usd"])


def test_an_old_ledger_gains_the_consensus_id_column(tmp_path: Path) -> None:
    from betty_mcp.llm.ledger import MIGRATIONS, Ledger, UsageRecord, connect, migrate, tagged

    path = tmp_path / "usage.sqlite"
    db = connect(path)
    assert migrate(db, MIGRATIONS[:4])[-1] == "m004_gateway_session_and_class"
    db.execute(
        "INSERT INTO calls (created_at, caller, model, provider, total_tokens, cost_usd) "
        "VALUES ('2025-01-01T00:00:00.000000Z', 'llm_query', 'gpt-4', 'openai', 42, 0.5)"
    )
    db.close()
    with Ledger(path) as ledger:
        (old,) = ledger.records()
        assert old.consensus_id is None and old.model == "gpt-4"
        with tagged(consensus_id="c-1"):
            ledger.record(UsageRecord(caller="llm_consensus", model="m", provider="p", cost_usd=0.25))
        ledger.record(UsageRecord(caller="llm_query", model="m", provider="p"))
        assert [r.consensus_id for r in ledger.records()] == [None, "c-1", None]
        assert ledger.spend(consensus_id="c-1").cost_usd == 0.25
    check = sqlite3.connect(path)
    names = [row[0] for row in check.execute("SELECT name FROM _migrations ORDER BY rowid")]
    indexes = {row[0] for row in check.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    check.close()
    assert names[4] == "m005_consensus_id" and "calls_consensus_id" in indexes


# -- cancellation ----------------------------------------------------------------------------------


async def test_cancelling_a_consensus_hangs_up_every_outstanding_call(
    services: Services, llm: ScriptedLLM, workspace: Path
) -> None:
    await warm(services, "fast", "slow", "slower")
    llm.script("slow", Hang())
    llm.script("slower", Hang())
    plan = await services.plan_consensus(ask(models=["scripted/fast", "scripted/slow", "scripted/slower"]))
    lines: list[str] = []

    async def observe(line: str, event: dict[str, Any]) -> None:
        lines.append(line)

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(services.run_consensus, plan, observe)
            with anyio.fail_after(10):
                while len(llm.requests) < 6 or not lines:  # 3 warm-ups, then all three asked, one answered
                    await anyio.sleep(0.02)
            scope.cancel()
    hung_up = await anyio.to_thread.run_sync(llm.wait_for_hang_ups, 2, 5.0)
    assert sorted(r.model for r in hung_up) == ["slow", "slower"]
    shown = plan.snapshot()
    assert shown["status"] == "cancelled" and [a["error"] for a in shown["answers"]] == [
        None,
        "cancelled",
        "cancelled",
    ]
    outcomes = {r["model"]: r["outcome"] for r in ledger_rows(workspace) if r["consensus_id"]}
    assert outcomes == {"scripted/fast": "ok", "scripted/slow": "cancelled", "scripted/slower": "cancelled"}
    trace = (workspace / ".betty-mcp" / "runs" / f"{plan.id}.jsonl").read_text().splitlines()
    assert json.loads(trace[-1])["event"] == "run_finished" and json.loads(trace[-1])["status"] == "cancelled"


async def test_a_background_consensus_is_waited_for_and_cancelled_like_a_run(
    services: Services, llm: ScriptedLLM
) -> None:
    await warm(services, "fast", "slow")
    llm.script("fast", Slow(0.3, Reply("quick")))
    llm.script("slow", Hang())
    async with anyio.create_task_group() as tg:
        services.serve_runs(tg)
        handle = await services.start_consensus(ask())
        progress: list[str] = []

        async def report(line: str) -> None:
            progress.append(line)

        partial = await services.runs.wait(handle, 1.0, report)
        assert partial["status"] == "running" and partial["run_id"] == handle.run_id
        assert [a["response"] for a in partial["answers"]] == ["quick", None]
        assert progress == ["1/2 answered: scripted/fast", "llm.consensus: running, 1/2 answered"]
        status = services.runs.get(handle.run_id).status()
        assert (status["status"], status["steps"], status["agent"]) == ("running", 1, "llm.consensus")
        cancelled = await services.runs.cancel(handle.run_id)
        assert cancelled["status"] == "cancelled"
        final = await services.runs.wait(handle, 0)
        assert final["status"] == "cancelled" and final["answers"][1]["error"] == "cancelled"
        tg.cancel_scope.cancel()
    await anyio.to_thread.run_sync(llm.wait_for_hang_ups, 1, 5.0)


# -- secrets --------------------------------------------------------------------------------------


async def test_a_key_echoed_by_a_401_is_nowhere_in_the_result_trace_or_ledger(
    services: Services, llm: ScriptedLLM, workspace: Path
) -> None:
    llm.script("locked", Error(401, echo_auth=True))
    llm.script("fast", Reply("fine {auth}", echo_auth=True))
    out = await services.consensus(ask(models=["scripted/fast", "scripted/locked"]))
    assert SECRET in llm.requests_for("locked")[0].headers["authorization"], "the provider did get the key"
    everything = [
        json.dumps(out),
        (workspace / ".betty-mcp" / "runs" / f"{out['consensus_id']}.jsonl").read_text(),
        (workspace / ".betty-mcp" / "usage.sqlite").read_bytes().decode("latin-1"),
    ]
    assert all(SECRET not in text for text in everything)
    assert "[REDACTED]" in out["answers"][1]["error"] and out["answers"][0]["response"].startswith("fine")


# -- defaults -------------------------------------------------------------------------------------


def test_default_models_take_one_ready_model_per_provider() -> None:
    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.consensus import default_models
    from betty_mcp.llm.models import ModelCatalog

    providers = {
        f"p{i}": {"endpoint": f"http://127.0.0.1:{9000 + i}", "models": [f"m{i}a", f"m{i}b"]}
        for i in range(7)
    }
    providers["keyless"] = {"type": "openai", "api_key_env": "NO_SUCH_KEY_SET", "models": ["gpt-x"]}
    catalog = ModelCatalog(LlmRouterConfig.model_validate({"providers": providers}))
    assert default_models(catalog) == ("p0/m0a", "p1/m1a", "p2/m2a", "p3/m3a", "p4/m4a")
    one = ModelCatalog(LlmRouterConfig.model_validate({"providers": {"p0": providers["p0"]}}))
    assert default_models(one) == ("p0/m0a", "p0/m0b"), "one provider: topped up to two models"
    assert default_models(catalog, ["p6/m6b", "p1/m1a"]) == ("p6/m6b", "p1/m1a")
    with pytest.raises(ConfigError, match="no models to ask"):
        default_models(ModelCatalog(LlmRouterConfig.model_validate({"providers": {}})))


async def test_without_models_one_per_provider_is_asked(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm)
    config = yaml.safe_load((workspace / "betty.yaml").read_text())
    config["llm_router"]["providers"]["other"] = {"endpoint": llm.base_url, "models": ["local-one"]}
    (workspace / "betty.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # providers in order
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace))
    out = await services.consensus({"prompt": "hi"})
    assert [a["model"] for a in out["answers"]] == ["scripted/fast", "other/local-one"]


async def test_a_configured_consensus_models_list_is_the_default(
    services: Services, llm: ScriptedLLM
) -> None:
    """``llm_router.consensus.models``, read as soon as the llm_router schema declares the block."""
    router = services.settings.router
    services.settings.__dict__["router"] = router.model_copy(
        update={"consensus": {"models": ["scripted/slower", "scripted/slow"]}}
    )
    out = await services.consensus({"prompt": "hi"})
    assert [a["model"] for a in out["answers"]] == ["scripted/slower", "scripted/slow"]


# -- through the MCP server -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_the_tool_reports_each_model_as_it_answers_and_traces_the_run(
    workspace: Path, llm: ScriptedLLM, mode: str
) -> None:
    write_config(workspace, llm)
    llm.script("fast", Reply("warm"), Reply("tabs"))
    llm.script("slow", Slow(1.0, Reply("spaces")))
    llm.script("failing", Slow(0.5, Error(500)))
    llm.script("judge", Reply(json.dumps(VERDICT)))
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    arguments = ask(models=["scripted/fast", "scripted/slow", "scripted/failing"], judge="scripted/judge")
    async with stdio_client(workspace, mode=mode, env=ENV) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["llm_consensus"].title == "llm.consensus"
        await client.call_tool("llm_query", {"prompt": "warm", "model": "scripted/fast"})  # LiteLLM loaded
        result = await client.call_tool("llm_consensus", arguments, progress_callback=on_progress)
        out = result.structured_content
        trace = await client.read_resource(f"betty://runs/{out['run_id']}")
    assert not result.is_error, result.content[0].text
    assert out["status"] == "completed" and out["judge"]["recommendation"] == "use tabs"
    assert [a["error_kind"] for a in out["answers"]] == [None, None, "server"]
    assert messages == [
        "1/3 answered: scripted/fast",
        "2/3 answered: scripted/failing (failed: server)",
        "3/3 answered: scripted/slow",
        "judge: scripted/judge (json)",
    ]
    events = [json.loads(line) for line in trace.contents[0].text.splitlines()]
    assert events[0]["event"] == "run_started" and events[0]["agent"] == "llm.consensus"
    assert [e["event"] for e in events[1:]] == [
        "llm_response",
        "llm_error",
        "llm_response",
        "llm_response",
        "run_finished",
    ]
    assert events[-1]["status"] == "completed" and events[-1]["answer"] == "use tabs"


async def test_the_tool_refuses_errors_and_runs_in_the_background(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm, limits={"budgets": {"per_call_usd": 0.0001}})
    llm.script("slow", Slow(1.0, Reply("late")))
    async with stdio_client(workspace, env=ENV) as client:
        refused = await client.call_tool("llm_consensus", ask(max_tokens=1000))
        assert refused.is_error and refused.structured_content["errors"][0]["budget"] == "per_call"
        assert "would be passed by" in refused.content[0].text and llm.requests == []
        started = await client.call_tool("llm_consensus", ask(max_tokens=10, wait=False))
        run_id = started.structured_content["run_id"]
        assert started.structured_content["status"] == "running"
        status = (await client.call_tool("run_status", {"run_id": run_id})).structured_content
        assert status["status"] == "running" and status["agent"] == "llm.consensus"
        result = await client.call_tool("run_result", {"run_id": run_id, "wait_seconds": 30})
        assert result.structured_content["status"] == "completed"
        assert [a["response"] for a in result.structured_content["answers"]] == ["ok", "late"]
        llm.script("failing", Error(500))
        llm.script("locked", Error(401, echo_auth=True))
        failed = await client.call_tool(
            "llm_consensus", ask(models=["scripted/failing", "scripted/locked"], max_tokens=10)
        )
    assert failed.is_error and failed.structured_content["status"] == "failed"
    assert SECRET not in failed.content[0].text and SECRET not in json.dumps(failed.structured_content)


async def test_a_wait_that_runs_out_leaves_a_run_that_run_cancel_stops(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_config(workspace, llm)
    llm.script("fast", Reply("warm"), Reply("quick"))
    llm.script("slow", Hang())
    async with stdio_client(workspace, env=ENV) as client:
        await client.call_tool("llm_query", {"prompt": "warm", "model": "scripted/fast"})  # LiteLLM loaded
        partial = await client.call_tool("llm_consensus", ask(wait_seconds=1))
        out = partial.structured_content
        assert not partial.is_error and out["status"] == "running", out
        assert [a["response"] for a in out["answers"]] == ["quick", None]
        cancelled = (await client.call_tool("run_cancel", {"run_id": out["run_id"]})).structured_content
        assert cancelled["status"] == "cancelled"
        await anyio.to_thread.run_sync(llm.wait_for_hang_ups, 1, 5.0)
        final = (await client.call_tool("run_result", {"run_id": out["run_id"]})).structured_content
    assert final["status"] == "cancelled" and final["answers"][1]["error"] == "cancelled"


async def test_the_bundled_skill_runs_the_same_code(workspace: Path, llm: ScriptedLLM) -> None:
    write_config(workspace, llm)
    llm.script("fast", Reply("from the skill"))
    async with stdio_client(workspace, env=ENV) as client:
        found = (await client.call_tool("skills_list", {"query": "consensus"})).structured_content
        result = await client.call_tool(
            "skill_run",
            {"name": "llm.consensus", "arguments": {**ask(), "stances": {"scripted/slow": "against"}}},
        )
    assert [s["name"] for s in found["skills"]] == ["llm.consensus"]
    assert not result.is_error, result.content[0].text
    out = result.structured_content
    assert [a["response"] for a in out["answers"]] == ["from the skill", "ok"]
    assert out["answers"][1]["stance"] == "against" and out["consensus_status"] == "completed"
    assert llm.requests_for("fast")[0].headers["authorization"] == f"Bearer {SECRET}"


# -- agents ---------------------------------------------------------------------------------------


def write_agent(workspace: Path) -> Path:
    folder = workspace / "agents" / "demo.second"
    folder.mkdir(parents=True)
    (folder / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "demo.second",
                "version": "0.1.0",
                "description": "Asks a panel for a second opinion.",
                "capabilities": ["second opinions"],
                "skills_available": ["llm.consensus"],
                "reasoning_mode": "iterative",
                "status": "active",
                "llm_config": {"primary_provider": "scripted", "primary_model": "main"},
            }
        )
    )
    return workspace / "agents"


async def test_an_agent_asks_for_a_second_opinion_within_its_run(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from betty_mcp.agent import RunLimits, RunRequest

    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm)
    agents = write_agent(workspace)
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace, agents_dirs=[agents]))
    opinion = {"prompt": "Is eval() safe here?", "models": ["scripted/fast", "scripted/slow"]}
    llm.script("main", ToolCalls([("llm_consensus", opinion)]), Reply("The panel says no."))
    llm.script("fast", Reply("no"))
    llm.script("slow", Reply("never"))
    result = await services.run_agent(
        RunRequest("demo.second", "Review eval use", limits=RunLimits(max_cost_usd=1.0))
    )
    assert result.status == "completed" and result.answer == "The panel says no."
    assert [(s.kind, s.name, s.ok) for s in result.steps][1] == ("skill", "llm.consensus", True)
    fed_back = json.loads(llm.requests_for("main")[1].messages[-1]["content"])
    assert [a["response"] for a in fed_back["answers"]] == ["no", "never"]
    rows = [r for r in ledger_rows(workspace) if r["consensus_id"]]
    assert {(r["run_id"], r["agent"], r["caller"]) for r in rows} == {
        (result.run_id, "demo.second", "llm_consensus")
    }, "the panel's calls count against the agent's run"


async def test_an_agents_second_opinion_must_fit_what_is_left_of_its_budget(
    workspace: Path, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    from betty_mcp.agent import RunLimits, RunRequest

    monkeypatch.setenv("SCRIPTED_API_KEY", SECRET)
    write_config(workspace, llm)
    agents = write_agent(workspace)
    services = Services(load_settings(workspace / "betty.yaml", workspace=workspace, agents_dirs=[agents]))
    opinion = {
        "prompt": "Is eval() safe here?",
        "models": ["scripted/fast", "scripted/slow"],
        "max_tokens": 1000,
    }
    llm.script("main", ToolCalls([("llm_consensus", opinion)]), Reply("No panel, then."))
    limits = RunLimits(max_cost_usd=0.001)
    result = await services.run_agent(RunRequest("demo.second", "Review eval use", limits=limits))
    step = result.steps[1]
    assert (step.kind, step.name, step.ok) == ("skill", "llm.consensus", False)
    assert "max_cost_usd" in (step.error or "")
    assert llm.requests_for("fast") == [] and llm.requests_for("slow") == []
    refusal = json.loads(llm.requests_for("main")[1].messages[-1]["content"])
    assert refusal["errors"][0]["budget"] == "max_cost_usd"


# -- the CLI --------------------------------------------------------------------------------------


def test_the_consensus_command_shows_answers_side_by_side_and_the_verdict(
    workspace: Path, llm: ScriptedLLM
) -> None:
    write_config(workspace, llm)
    llm.script("fast", Reply("TABS-ANSWER"), Reply("FAST-JSON"))
    llm.script("slow", Reply("SPACES-ANSWER"), Reply("SLOW-JSON"))
    llm.script("judge", Reply(json.dumps(VERDICT)))
    llm.script("failing", Error(500), Error(500))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "betty_mcp", "consensus", "Tabs or spaces?", *args],
            capture_output=True,
            text=True,
            cwd=workspace,
            env={**os.environ, **ENV, "COLUMNS": "160"},
            timeout=120,
        )

    shown = cli(
        "--models",
        "scripted/fast,scripted/slow",
        "--stance",
        "scripted/fast=for",
        "--judge",
        "scripted/judge",
    )
    assert shown.returncode == 0, shown.stderr
    assert "TABS-ANSWER" in shown.stdout and "SPACES-ANSWER" in shown.stdout
    assert "recommendation: use tabs" in shown.stdout and "verdict of scripted/judge" in shown.stdout
    assert "answered by scripted/fast" in shown.stderr and "judge" in shown.stderr
    assert "2/2 answered" in shown.stderr
    assert "Argue FOR" in llm.requests_for("fast")[0].messages[0]["content"]
    as_json = cli("--models", "scripted/fast,scripted/slow", "--json")
    out = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and [a["response"] for a in out["answers"]] == ["FAST-JSON", "SLOW-JSON"]
    failed = cli("--models", "scripted/failing", "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "failed"
    refused = cli("--models", "scripted/fast", "--max-cost", "0.0000001")
    assert refused.returncode == 1 and "max_cost_usd" in refused.stderr
    bad = cli("--stance", "for")
    assert bad.returncode == 2 and "MODEL=STANCE" in bad.stderr
