"""A team service: several ``betty-mcp serve --http`` instances on one PostgreSQL database hold one
budget between them, whatever the concurrency, and every call is in the shared ledger."""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import anyio
import psycopg
import pytest
import yaml
from mcp.client import Client

from tests.conftest import http_server
from tests.fakes.scripted_llm import Reply, ScriptedLLM

pytestmark = pytest.mark.anyio

KEY_ENV = {"SCRIPTED_API_KEY": "sk-team-0123456789"}
# One call: the prompt "q" is estimated at 1 token and max_tokens is 10, so 11 tokens at $1 each; the
# scripted model reports exactly that, so a call's cost is its estimate and $445 a day pays for 40 calls.
CALL_USD = 11.0
ALLOWED = 40


def team_workspace(root: Path, name: str, llm: ScriptedLLM, budget_usd: float) -> Path:
    workspace = root / name
    workspace.mkdir()
    router = {
        "default_model": "scripted/main",
        "embedded_fallback": False,
        "providers": {
            "scripted": {
                "type": "openai_compatible",
                "endpoint": llm.base_url,
                "api_key_env": "SCRIPTED_API_KEY",
                "models": [{"name": "main", "input_cost_per_mtok": 1e6, "output_cost_per_mtok": 1e6}],
            }
        },
        "limits": {"budgets": {"per_day_usd": budget_usd}},
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump({"llm_router": router}))
    return workspace


async def test_three_instances_under_150_concurrent_calls_spend_exactly_the_daily_budget(
    tmp_path: Path, pg_url: str
) -> None:
    outcomes: list[str] = []
    with (
        ScriptedLLM(default=Reply("ok", prompt_tokens=1, completion_tokens=10, delay=0.05)) as llm,
        ExitStack() as stack,
    ):
        env = {**KEY_ENV, "BETTY_MCP_DATABASE_URL": pg_url}
        budget = ALLOWED * CALL_USD + CALL_USD / 2
        urls = [
            stack.enter_context(
                http_server(team_workspace(tmp_path, f"i{n}", llm, budget), env=env, fixtures=False)
            )
            for n in range(3)
        ]

        async def ask(client: Client) -> None:
            result = await client.call_tool("llm_query", {"prompt": "q", "max_tokens": 10})
            text = result.content[0].text
            assert not result.is_error or "daily budget of $445.50 reached" in text, text
            outcomes.append("refused" if result.is_error else "answered")

        async with AsyncExitStack() as clients:
            opened = [await clients.enter_async_context(Client(url, read_timeout_seconds=60)) for url in urls]
            async with anyio.create_task_group() as tg:
                for client in opened:
                    for _ in range(50):
                        tg.start_soon(ask, client)
        assert (outcomes.count("answered"), outcomes.count("refused")) == (ALLOWED, 150 - ALLOWED)
        assert len(llm.requests) == ALLOWED, "a refused call never reaches the provider"
    # Every instance has stopped: whatever each had queued is written.
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT count(*), sum(cost_usd) FROM calls WHERE outcome = 'ok'").fetchone()
        held = conn.execute(
            "SELECT split_part(scope, ':', 1), sum(reserved_usd), sum(spent_usd) FROM budget_counters "
            "GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert rows == (ALLOWED, ALLOWED * CALL_USD)
    # The day's counter, and the caller's day (loopback, nothing configured: the local user's).
    assert held == [("day", 0.0, ALLOWED * CALL_USD), ("user", 0.0, ALLOWED * CALL_USD)], (
        "every reservation was settled"
    )
