"""Who is calling, over real HTTP with the SDK client sending each user's bearer token: per-user tokens
(two users, a revoked one, the shared --token), each role's own tools and agents, budgets and ledger rows
per user, and runs no one else can see."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import yaml
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from betty_mcp.llm.ledger import Ledger
from betty_mcp.llm.users import UserStore
from tests.conftest import http_server
from tests.fakes.scripted_llm import Reply, ScriptedLLM
from tests.test_server_http import ACCEPT, INIT

pytestmark = pytest.mark.anyio

SHARED_TOKEN = "shared-t0ken-for-identity-tests"
ANALYST_TOOLS = ["test_echo", "skills_list", "skill_run", "llm_query", "agent_run", "agents_list", "run_*"]
OPS_TOOLS = ["test.*", "skills_list", "skill_run", "llm_query", "run_*", "agents_list"]
# Each answer costs 1000 * $1/M + 100 * $2/M = $0.0012: past a user's $0.001 day after one call.
ANSWER = Reply("ok", prompt_tokens=1000, completion_tokens=100)


@dataclass
class Team:
    url: str
    workspace: Path
    log: Path
    tokens: dict[str, str]
    llm: ScriptedLLM


def write_config(workspace: Path, llm: ScriptedLLM) -> None:
    priced = {"name": "main", "supports_tools": True, "input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
    config = {
        "llm_router": {
            "embedded_fallback": False,
            "default_provider": "scripted",
            "providers": {"scripted": {"endpoint": llm.base_url, "models": [priced]}},
            "limits": {"budgets": {"per_user": {"day_usd": 0.001}}},
        },
        "roles": {
            "analyst": {"tools": {"include": ANALYST_TOOLS}, "agents": ["demo.*"]},
            "ops": {
                "tools": {"include": OPS_TOOLS, "exclude": ["test.sleep"]},
                "agents": [],
                "budgets": {"day_usd": 1.0},
            },
        },
    }
    (workspace / "betty.yaml").write_text(yaml.safe_dump(config))
    agent = workspace / "agents" / "demo.echoer"
    agent.mkdir(parents=True)
    (agent / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "demo.echoer",
                "version": "0.1.0",
                "description": "Echoes.",
                "skills_available": ["test.echo"],
                "reasoning_mode": "iterative",
                "status": "active",
                "llm_config": {"primary_provider": "scripted", "primary_model": "main"},
            }
        )
    )


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    workspace = tmp_path_factory.mktemp("team")
    with ScriptedLLM(default=ANSWER) as llm:
        write_config(workspace, llm)
        added = subprocess.run(
            [sys.executable, "-m", "betty_mcp", "users", "add", "alice", "--role", "analyst"],
            cwd=workspace,
            capture_output=True,
            text=True,
            check=True,
        )
        tokens = {"alice": added.stdout.strip()}
        store = UserStore(workspace / ".betty-mcp" / "usage.sqlite")
        for name, role in (("bob", "ops"), ("carol", "analyst"), ("dave", "analyst"), ("erin", "admin")):
            tokens[name] = store.add(name, role)
        store.revoke("carol")
        store.close()
        log = workspace / "server.log"
        flags = ("--agents-dir", str(workspace / "agents"), "--token", SHARED_TOKEN, "--log-level", "info")
        with http_server(workspace, *flags, stderr=log) as url:
            yield Team(url, workspace, log, {**tokens, "default": SHARED_TOKEN}, llm)


@asynccontextmanager
async def as_user(team: Team, user: str, mode: str = "auto") -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {team.tokens[user]}"}, timeout=30)
    async with http, Client(streamable_http_client(team.url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
        yield client


async def tool_names(client: Client) -> set[str]:
    return {t.name for t in (await client.list_tools()).tools}


async def unknown_tool_error(client: Client, name: str) -> str:
    with pytest.raises(MCPError) as refused:
        await client.call_tool(name, {"message": "hi"})
    return str(refused.value).replace(name, "<tool>")


def test_users_add_prints_the_token_once_and_list_never_shows_it(team: Team) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "users", "list", "--json"],
        cwd=team.workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    users = {u["name"]: u for u in json.loads(listed.stdout)}
    assert users["alice"]["role"] == "analyst" and users["carol"]["revoked_at"] is not None
    assert team.tokens["alice"].startswith("bmcp_")
    stored = (team.workspace / ".betty-mcp" / "usage.sqlite").read_bytes()
    assert not any(token.encode() in stored or token in listed.stdout for token in team.tokens.values())


async def test_missing_unknown_and_revoked_tokens_get_401(team: Team) -> None:
    async with httpx2.AsyncClient() as http:
        for token in (None, "nope", team.tokens["carol"]):
            headers = {**ACCEPT, **({"authorization": f"Bearer {token}"} if token else {})}
            refused = await http.post(team.url, json=INIT, headers=headers)
            assert refused.status_code == 401
            challenge = refused.headers["www-authenticate"]
            if token is None:
                assert challenge == 'Bearer realm="betty-mcp"'
            else:
                assert challenge.startswith('Bearer error="invalid_token"'), challenge
                assert token not in refused.text and token not in challenge


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_each_role_sees_only_its_tools_and_others_do_not_exist(team: Team, mode: str) -> None:
    async with as_user(team, "alice", mode) as alice, as_user(team, "bob", mode) as bob:
        assert await tool_names(alice) == {
            "test_echo", "skills_list", "skill_run", "llm_query", "agent_run", "agents_list",
            "run_status", "run_result", "run_cancel",
        }  # fmt: skip
        seen_by_bob = await tool_names(bob)
        assert {"test_echo", "skill_run"} <= seen_by_bob
        assert "test_sleep" not in seen_by_bob and "agent_run" not in seen_by_bob
        assert not (await bob.call_tool("test_echo", {"message": "hi"})).is_error
        nothing = await unknown_tool_error(bob, "no_such_tool")
        assert await unknown_tool_error(bob, "test_sleep") == nothing
        assert await unknown_tool_error(bob, "agent_run") == nothing
        assert await unknown_tool_error(alice, "test_sleep") == nothing
    async with as_user(team, "default", mode) as shared:  # the shared token: no role, every tool
        assert {"test_sleep", "agent_run", "models_list"} <= await tool_names(shared)


async def test_skill_and_agent_catalogs_follow_the_role(team: Team) -> None:
    async with as_user(team, "bob") as bob, as_user(team, "alice") as alice:
        listed = (await bob.call_tool("skills_list", {"include_schemas": False})).structured_content
        names = {s["name"] for s in listed["skills"]}
        assert "test.echo" in names and "test.sleep" not in names
        hidden = await bob.call_tool("skill_run", {"name": "test.sleep", "arguments": {"seconds": 0}})
        missing = await bob.call_tool("skill_run", {"name": "test.zzz", "arguments": {"seconds": 0}})
        assert hidden.is_error and missing.is_error
        assert hidden.content[0].text.replace("test.sleep", "X") == missing.content[0].text.replace(
            "test.zzz", "X"
        )
        assert (await bob.call_tool("agents_list", {})).structured_content["agents"] == []
        theirs = [a["name"] for a in (await alice.call_tool("agents_list", {})).structured_content["agents"]]
        assert theirs == ["demo.echoer"]
        resources = {str(r.uri) for r in (await bob.list_resources()).resources}
        assert "betty://skills/test.echo" in resources and "betty://skills/test.sleep" not in resources
        assert "betty://agents/demo.echoer" not in resources


async def test_ledger_rows_and_budgets_are_per_user(team: Team) -> None:
    async with as_user(team, "dave") as dave, as_user(team, "bob") as bob:
        first = await dave.call_tool("llm_query", {"prompt": "one"})
        assert not first.is_error, first.content[0].text
        refused = await dave.call_tool("llm_query", {"prompt": "two"})
        assert refused.is_error
        text = refused.content[0].text
        assert "user's daily budget" in text and "by user dave" in text
        assert "llm_router.limits.budgets.per_user.day_usd" in text
        for prompt in ("one", "two", "three"):  # ops' own budget ($1/day) replaces per_user's
            assert not (await bob.call_tool("llm_query", {"prompt": prompt})).is_error
    with Ledger(team.workspace / ".betty-mcp" / "usage.sqlite") as ledger:
        assert [r.user for r in ledger.records(user="dave")] == ["dave"]
        assert len(ledger.records(user="bob")) == 3
        by_user = {r["user"]: r["calls"] for r in ledger.by_user()}
    assert by_user["dave"] == 1 and by_user["bob"] == 3
    usage = subprocess.run(
        [sys.executable, "-m", "betty_mcp", "usage", "--by", "user"],
        cwd=team.workspace,
        capture_output=True,
        text=True,
        check=True,
    )
    assert re.search(r"^bob\s+3\s", usage.stdout, re.M) and re.search(r"^dave\s+1\s", usage.stdout, re.M)
    assert "model" not in usage.stdout


async def test_another_users_run_answers_like_a_run_that_does_not_exist(team: Team) -> None:
    async with (
        as_user(team, "alice") as alice,
        as_user(team, "bob") as bob,
        as_user(team, "default") as shared,
        as_user(team, "erin") as admin,
    ):
        started = await alice.call_tool("agent_run", {"agent": "demo.echoer", "task": "echo", "wait": False})
        run_id = started.structured_content["run_id"]
        done = await alice.call_tool("run_result", {"run_id": run_id, "wait_seconds": 30})
        assert done.structured_content["status"] == "completed", done.content[0].text
        fake = "20250101-000000-deadbeef"
        for tool, extra in (("run_status", {}), ("run_result", {"wait_seconds": 0}), ("run_cancel", {})):
            theirs = await bob.call_tool(tool, {"run_id": run_id, **extra})
            nobodys = await bob.call_tool(tool, {"run_id": fake, **extra})
            assert theirs.is_error and nobodys.is_error
            assert theirs.content[0].text.replace(run_id, "ID") == nobodys.content[0].text.replace(fake, "ID")
            assert run_id not in theirs.content[0].text.replace(f"'{run_id}'", "")
        with pytest.raises(MCPError) as hidden:
            await bob.read_resource(f"betty://runs/{run_id}")
        with pytest.raises(MCPError) as absent:
            await bob.read_resource(f"betty://runs/{fake}")
        assert str(hidden.value).replace(run_id, "ID") == str(absent.value).replace(fake, "ID")
        assert f"betty://runs/{run_id}" not in {str(r.uri) for r in (await bob.list_resources()).resources}
        trace = await alice.read_resource(f"betty://runs/{run_id}")
        assert json.loads(trace.contents[0].text.splitlines()[0])["user"] == "alice"
        assert f"betty://runs/{run_id}" in {str(r.uri) for r in (await alice.list_resources()).resources}
        # The shared token has no role: it sees its own runs only. Admin is a role, and sees them all.
        assert (await shared.call_tool("run_status", {"run_id": run_id})).is_error
        assert (await admin.call_tool("run_status", {"run_id": run_id})).structured_content[
            "status"
        ] == "completed"
    with Ledger(team.workspace / ".betty-mcp" / "usage.sqlite") as ledger:
        assert {r.user for r in ledger.records(run_id=run_id)} == {"alice"}, (
            "the background run stays alice's"
        )


def test_tokens_never_reach_the_log_the_workspace_or_the_provider(team: Team) -> None:
    files = [p for p in team.workspace.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json", ".log")]
    upstream = json.dumps([r.to_json() for r in team.llm.requests])
    assert team.llm.requests, "the provider was asked"
    for token in team.tokens.values():
        assert all(token not in p.read_text(errors="replace") for p in files)
        assert token not in upstream
