"""Who may use what, in-process: role tool and agent sets, per-user and per-role budgets, and the OAuth
settings that are refused before a server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from betty_mcp.core.access import Access
from betty_mcp.core.config import RoleConfig, Settings
from betty_mcp.core.errors import BudgetExceeded, ConfigError
from betty_mcp.core.identity import LOCAL, Caller, acting_as
from betty_mcp.core.llm_config import BudgetConfig
from betty_mcp.core.oauth import JwksCache
from betty_mcp.llm.ledger import UsageRecord, check_batch, reserve
from betty_mcp.llm.service import budgets_of
from betty_mcp.store import SqliteStore

ROLES = {
    "analyst": RoleConfig.model_validate(
        {"tools": {"include": ["api.*", "llm_query"], "exclude": ["api.define"]}}
    ),
    "admin": RoleConfig.model_validate({"tools": {"include": ["skills_list"]}}),
}


def test_a_role_allows_its_globs_over_tool_and_betty_names() -> None:
    access, ada = Access(ROLES), Caller("ada", "analyst")
    assert access.tool(ada, "api_validate", "api.validate") and access.tool(ada, "llm_query")
    assert not access.tool(ada, "api_define", "api.define"), "exclude wins"
    assert not access.tool(ada, "agent_run")
    assert access.agent(ada, "api.designer"), "agents default to all"


def test_no_role_and_the_local_user_may_use_everything_an_unknown_role_nothing() -> None:
    access = Access(ROLES)
    assert access.tool(Caller("default"), "agent_run")
    assert access.tool(LOCAL, "agent_run"), "stdio is unchanged even when roles.admin is set"
    assert not access.tool(Caller("root", "admin"), "agent_run"), "roles.admin applies over HTTP"
    assert not access.tool(Caller("eve", "analyts"), "llm_query") and not access.agent(
        Caller("eve", "x"), "a"
    )
    assert Access({}).tool(Caller("root", "admin"), "agent_run")


@pytest.mark.anyio
async def test_user_budgets_count_only_the_callers_own_calls(tmp_path: Path) -> None:
    config = BudgetConfig.model_validate({"per_user": {"day_usd": 0.10}})
    budgets = budgets_of(config, {"ops": None, "analyst": RoleConfig(budgets={"day_usd": 1.0}).budgets})
    store = SqliteStore(tmp_path / "state.sqlite", tmp_path / "runs")
    try:
        store.settle(
            UsageRecord(caller="llm_query", model="m", provider="p", cost_usd=0.10, user="bob"), None
        )
        store.settle(
            UsageRecord(caller="llm_query", model="m", provider="p", cost_usd=0.50, user="ada"), None
        )
        with acting_as(Caller("bob", "ops")), pytest.raises(BudgetExceeded) as refused:
            await reserve(store, budgets, cost_usd=0.01)
        assert refused.value.budget == "per_user_day" and "by user bob" in str(refused.value)
        assert "llm_router.limits.budgets.per_user.day_usd" in str(refused.value)
        with acting_as(Caller("ada", "analyst")):  # her role's $1 replaces per_user's $0.10
            await reserve(store, budgets, cost_usd=0.01)
            with pytest.raises(BudgetExceeded, match=r"roles\.analyst\.budgets\.day_usd"):
                await check_batch(store, budgets, call_costs=[0.3, 0.3], what="this fan-out")
        with acting_as(Caller("cy")):
            await reserve(store, budgets, cost_usd=0.05)
    finally:
        await store.aclose()


def test_oauth_settings_refuse_symmetric_algorithms_and_plain_http_keys() -> None:
    base = {"issuer": "https://idp.example", "audience": "https://mcp.example/mcp"}
    with pytest.raises(ValueError, match="never none or HS"):
        Settings.model_validate(
            {"auth": {**base, "jwks_url": "https://idp.example/k", "algorithms": ["HS256"]}}
        )
    with pytest.raises(ValueError, match="exactly one of jwks_url or jwks_file"):
        Settings.model_validate({"auth": base})
    with pytest.raises(ConfigError, match="must be https"):
        JwksCache(url="http://idp.example/jwks")
    JwksCache(url="http://127.0.0.1:9/jwks")  # loopback (tests, a sidecar) may be plain HTTP
