"""Stateless HTTP instances of a team service: a 2026-07-28 client whose requests a round-robin balancer
spreads over two instances works as against one; a change seen by one instance reaches a client
listening on another (LISTEN/NOTIFY); request state sealed by one instance opens on another when they
share ``$BETTY_MCP_REQUEST_STATE_KEY``."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.request_state import InvalidRequestState

from betty_mcp.core.config import REQUEST_STATE_KEY_ENV
from betty_mcp.mcp.server import request_state_security
from tests.conftest import FIXTURE_SKILLS, http_server

pytestmark = pytest.mark.anyio


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without stickiness: each HTTP request goes to the next instance in turn."""

    def __init__(self, urls: list[str]) -> None:
        self.hosts = itertools.cycle([urlsplit(url).netloc for url in urls])
        self.served: Counter[str] = Counter()
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = next(self.hosts)
        self.served[host] += 1
        name, _, port = host.partition(":")
        request.url = request.url.copy_with(host=name, port=int(port))
        request.headers["Host"] = host
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_client_spread_over_two_instances_works_as_against_one(tmp_path: Path, pg_url: str) -> None:
    env = {"BETTY_MCP_DATABASE_URL": pg_url, REQUEST_STATE_KEY_ENV: "team-key-0123456789abcdef0123456789"}
    for workspace in (tmp_path / "a", tmp_path / "b"):
        workspace.mkdir()
    with http_server(tmp_path / "a", env=env) as a, http_server(tmp_path / "b", env=env) as b:
        balancer = RoundRobin([a, b])
        async with (
            httpx2.AsyncClient(transport=balancer) as http,
            Client(streamable_http_client(a, http_client=http), read_timeout_seconds=60) as client,
        ):
            assert client.protocol_version == "2026-07-28"
            names = {tool.name for tool in (await client.list_tools()).tools}
            for word in ("one", "two", "three", "four"):
                echoed = await client.call_tool("test_echo", {"message": word})
                assert not echoed.is_error and word in echoed.content[0].text
            unknown = await client.call_tool("run_status", {"run_id": "20261130-000000-00000000"})
            assert unknown.is_error and "unknown run" in unknown.content[0].text
            assert names == {tool.name for tool in (await client.list_tools()).tools}
    assert len(balancer.served) == 2 and min(balancer.served.values()) >= 3, balancer.served


async def test_a_change_on_one_instance_reaches_a_client_listening_on_another(
    tmp_path: Path, pg_url: str
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for workspace in (a, b):
        (workspace / "skills").mkdir(parents=True)
    env = {"BETTY_MCP_DATABASE_URL": pg_url}
    skills = ("--skills-dir", str(b / "skills"))
    with http_server(a, env=env, fixtures=False) as on_a, http_server(b, *skills, env=env, fixtures=False):
        async with Client(on_a) as client, client.listen(tools_list_changed=True) as events:
            await anyio.sleep(0.5)  # B's watcher is up
            source = FIXTURE_SKILLS / "test.echo"
            target = b / "skills" / "hot.echo"
            target.mkdir()
            manifest = (source / "skill.yaml").read_text().replace("test.echo", "hot.echo")
            (target / "skill.yaml").write_text(manifest)
            for handler in source.glob("*.py"):
                (target / handler.name).write_text(handler.read_text())
            with anyio.fail_after(15):
                await events.__anext__()  # seen by B, heard on A


def test_instances_sharing_the_key_open_each_others_request_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUEST_STATE_KEY_ENV, "team-key-0123456789abcdef0123456789")
    one, other = request_state_security(), request_state_security()
    assert other.codec.unseal(one.codec.seal(b"state")) == b"state"
    monkeypatch.delenv(REQUEST_STATE_KEY_ENV)
    with pytest.raises(InvalidRequestState):  # an instance with a key of its own refuses it
        request_state_security().codec.unseal(one.codec.seal(b"state"))
