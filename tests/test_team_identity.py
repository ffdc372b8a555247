"""Who is calling, across the instances of a team service (one PostgreSQL database): users added once
are known to every instance and a revoked one refused by all; a user's daily budget holds between
instances under concurrent calls; a run started on one instance is its owner's on every other (anyone
else gets exactly the answer a nonexistent run gets; admin sees it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import psycopg
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.fakes.scripted_llm import Reply, ScriptedLLM
from tests.test_server_http import ACCEPT, INIT
from tests.test_team_runs import call, instance, wait_for

pytestmark = pytest.mark.anyio

# llm_query of "q" with max_tokens 10 on "main" is estimated, and costs, 11 tokens at $1 each: a user's
# $60.50 a day pays for 5 calls. "quick" has no price: the agent's calls cost nothing.
CALL_USD, ALLOWED = 11.0, 5


def team_workspace(root: Path, name: str, llm: ScriptedLLM) -> Path:
    workspace = root / name
    (workspace / "agents" / "demo.waiter").mkdir(parents=True)
    main = {"name": "main", "input_cost_per_mtok": 1e6, "output_cost_per_mtok": 1e6}
    router = {
        "embedded_fallback": False,
        "providers": {"scripted": {"endpoint": llm.base_url, "models": ["quick", main]}},
        "limits": {"budgets": {"per_user": {"day_usd": ALLOWED * CALL_USD + CALL_USD / 2}}},
    }
    config = {"llm_router": router, "roles": {"analyst": {}}}
    (workspace / "betty.yaml").write_text(yaml.safe_dump(config))
    agent = {
        "name": "demo.waiter",
        "version": "0.1.0",
        "description": "Answers.",
        "capabilities": ["wait"],
        "skills_available": [],
        "reasoning_mode": "oneshot",
        "status": "active",
    }
    (workspace / "agents" / "demo.waiter" / "agent.yaml").write_text(yaml.safe_dump(agent))
    return workspace


def users(workspace: Path, pg_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "betty_mcp", "users", *args, "--workspace", str(workspace)],
        cwd=workspace,
        env={**os.environ, "BETTY_MCP_DATABASE_URL": pg_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )


@asynccontextmanager
async def as_user(url: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=60)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:  # type: ignore[arg-type]
        yield client


async def test_users_budgets_and_runs_hold_across_instances(tmp_path: Path, pg_url: str) -> None:
    with ScriptedLLM(default=Reply("ok", prompt_tokens=1, completion_tokens=10)) as llm:
        spaces = [team_workspace(tmp_path, name, llm) for name in "ab"]
        tokens = {
            name: json.loads(users(spaces[0], pg_url, "add", name, "--role", role, "--json").stdout)["token"]
            for name, role in (
                ("alice", "analyst"),
                ("bob", "analyst"),
                ("dave", "analyst"),
                ("erin", "admin"),
            )
        }
        users(spaces[1], pg_url, "revoke", "bob")  # from the other workspace: the same users
        with instance(spaces[0], pg_url) as (_, a), instance(spaces[1], pg_url) as (_, b):
            async with httpx2.AsyncClient() as http:
                for url in (a, b):
                    refused = await http.post(
                        url, json=INIT, headers={**ACCEPT, "authorization": f"Bearer {tokens['bob']}"}
                    )
                    assert refused.status_code == 401, "a revoked user is refused by every instance"
            async with AsyncExitStack() as stack:
                clients = {
                    (who, where): await stack.enter_async_context(as_user(url, tokens[who]))
                    for who in ("alice", "dave", "erin")
                    for where, url in (("a", a), ("b", b))
                }
                outcomes: list[str] = []

                async def ask(client: Client) -> None:
                    result = await client.call_tool(
                        "llm_query", {"prompt": "q", "model": "scripted/main", "max_tokens": 10}
                    )
                    text = result.content[0].text
                    assert not result.is_error or "user's daily budget" in text, text
                    outcomes.append("refused" if result.is_error else "answered")

                async with anyio.create_task_group() as tg:
                    for i in range(20):
                        tg.start_soon(ask, clients[("dave", "ab"[i % 2])])
                assert (outcomes.count("answered"), outcomes.count("refused")) == (ALLOWED, 20 - ALLOWED)
                # Another user's day is their own.
                assert not (await clients[("alice", "b")].call_tool("llm_query", {"prompt": "q"})).is_error

                started = await call(
                    clients[("alice", "a")],
                    "agent_run",
                    agent="demo.waiter",
                    task="t",
                    model="scripted/quick",
                )
                run_id = started["run_id"]
                assert started["status"] == "completed"
                fake = "20250101-000000-deadbeef"
                for tool in ("run_status", "run_result", "run_cancel"):
                    theirs = await clients[("dave", "b")].call_tool(tool, {"run_id": run_id})
                    nobodys = await clients[("dave", "b")].call_tool(tool, {"run_id": fake})
                    assert theirs.is_error and nobodys.is_error
                    assert theirs.content[0].text.replace(run_id, "ID") == nobodys.content[0].text.replace(
                        fake, "ID"
                    )
                assert (await wait_for(clients[("alice", "b")], run_id, "completed"))["run_id"] == run_id
                assert (await call(clients[("erin", "b")], "run_status", run_id=run_id))[
                    "status"
                ] == "completed"
                uri = f"betty://runs/{run_id}"
                with pytest.raises(MCPError) as hidden:
                    await clients[("dave", "b")].read_resource(uri)
                with pytest.raises(MCPError) as absent:
                    await clients[("dave", "b")].read_resource(f"betty://runs/{fake}")
                assert str(hidden.value).replace(run_id, "ID") == str(absent.value).replace(fake, "ID")
                listed = {str(r.uri) for r in (await clients[("dave", "b")].list_resources()).resources}
                assert uri not in listed
                assert uri in {str(r.uri) for r in (await clients[("alice", "b")].list_resources()).resources}
                trace = await clients[("alice", "b")].read_resource(uri)
                assert json.loads(trace.contents[0].text.splitlines()[0])["user"] == "alice"
    with psycopg.connect(pg_url) as conn:
        rows = dict(conn.execute('SELECT "user", count(*) FROM calls GROUP BY 1').fetchall())
        (owner,) = conn.execute("SELECT owner FROM runs WHERE run_id = %s", (run_id,)).fetchone() or (None,)
        stored = conn.execute(
            "SELECT count(*) FROM users WHERE token_sha256 = ANY (%s)", (list(tokens.values()),)
        )
        (raw,) = stored.fetchone() or (0,)
    assert rows["dave"] == ALLOWED and rows["alice"] == 2 and owner == "alice"
    assert raw == 0, "only the tokens' hashes are stored"
