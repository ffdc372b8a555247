"""Stateless HTTP instances of a team service: a change seen by one instance reaches a 2026-07-28
client listening on another (LISTEN/NOTIFY), and request state sealed by one instance opens on another
when they share ``$BETTY_MCP_REQUEST_STATE_KEY``."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.server.request_state import InvalidRequestState

from betty_mcp.core.config import REQUEST_STATE_KEY_ENV
from betty_mcp.mcp.server import request_state_security
from tests.conftest import FIXTURE_SKILLS, http_server

pytestmark = pytest.mark.anyio


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
