"""Hot reload: adding, editing and removing a skill folder changes tools/list and notifies clients."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from tests.conftest import FIXTURE_SKILLS, stdio_client

pytestmark = pytest.mark.anyio


def _add_skill(skills: Path, name: str, description: str = "Echo, hot-added.") -> None:
    folder = skills / name
    shutil.copytree(FIXTURE_SKILLS / "test.echo", folder)
    manifest = (folder / "skill.yaml").read_text()
    manifest = manifest.replace("name: test.echo", f"name: {name}")
    manifest = manifest.replace(
        "description: Echo the inputs back (test fixture).", f"description: {description}"
    )
    (folder / "skill.yaml").write_text(manifest)


async def _tool_names(client: object) -> set[str]:
    return {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}  # type: ignore[attr-defined]


async def test_legacy_clients_get_tools_list_changed(workspace: Path) -> None:
    skills = workspace / "skills"
    skills.mkdir()
    changed = anyio.Event()

    async def on_message(message: object) -> None:
        nonlocal changed
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()
            changed = anyio.Event()

    async with stdio_client(
        workspace, "--skills-dir", str(skills), mode="legacy", fixtures=False, message_handler=on_message
    ) as client:
        assert client.server_capabilities.tools.list_changed is True
        assert "hot_echo" not in await _tool_names(client)
        _add_skill(skills, "hot.echo")
        with anyio.fail_after(10):  # other changes may be announced too (handler interfaces read)
            while "hot_echo" not in await _tool_names(client):
                await changed.wait()
        result = await client.call_tool("hot_echo", {"message": "new"})
        assert result.structured_content["message"] == "new"


async def test_modern_clients_get_events_on_add_edit_and_remove(workspace: Path) -> None:
    skills = workspace / "skills"
    skills.mkdir()
    async with stdio_client(workspace, "--skills-dir", str(skills), mode="auto", fixtures=False) as client:
        assert client.protocol_version == "2026-07-28"
        async with client.listen(tools_list_changed=True) as events:
            _add_skill(skills, "hot.echo")
            with anyio.fail_after(10):
                while "hot_echo" not in await _tool_names(client):
                    await events.__anext__()

            _add_skill(skills, "hot.other")
            shutil.rmtree(skills / "hot.other")  # a flurry of changes settles into one consistent state
            manifest = skills / "hot.echo" / "skill.yaml"
            manifest.write_text(manifest.read_text().replace("Echo, hot-added.", "Edited description."))
            with anyio.fail_after(10):
                while True:
                    await events.__anext__()
                    tools = {t.name: t for t in (await client.list_tools(cache_mode="bypass")).tools}
                    if tools["hot_echo"].description == "Edited description." and "hot_other" not in tools:
                        break

            shutil.rmtree(skills / "hot.echo")
            with anyio.fail_after(10):
                while "hot_echo" in await _tool_names(client):
                    await events.__anext__()


async def test_a_broken_edit_keeps_the_server_up_and_drops_the_skill(workspace: Path) -> None:
    skills = workspace / "skills"
    skills.mkdir()
    _add_skill(skills, "hot.echo")
    async with stdio_client(workspace, "--skills-dir", str(skills), fixtures=False) as client:
        assert "hot_echo" in await _tool_names(client)
        async with client.listen(tools_list_changed=True) as events:
            (skills / "hot.echo" / "skill.yaml").write_text("name: [unclosed\n")
            with anyio.fail_after(10):
                while "hot_echo" in await _tool_names(client):
                    await events.__anext__()
        assert {"skills_list", "skill_run"} <= await _tool_names(client)


async def test_an_alias_bomb_or_a_huge_manifest_at_reload_is_refused_fast(workspace: Path) -> None:
    """542 bytes of YAML aliases used to cost 10 s and 2.5 GB at the next reload (and could kill the
    server); a 40 MB description made every tools/list slow. Both are refused; the rest stays served."""
    import time

    skills = workspace / "skills"
    skills.mkdir()
    _add_skill(skills, "hot.echo")
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefghij":
        previous = chr(ord(level) - 1)
        bomb.append(f"{level}: &{level} [{', '.join(['*' + previous] * 9)}]")
    async with stdio_client(workspace, "--skills-dir", str(skills), fixtures=False) as client:
        async with client.listen(tools_list_changed=True) as events:
            started = time.monotonic()
            _add_skill(skills, "hot.bomb")
            manifest = skills / "hot.bomb" / "skill.yaml"
            manifest.write_text(
                manifest.read_text() + "unknown_field:\n" + "\n".join(f"  {b}" for b in bomb) + "\n"
            )
            _add_skill(skills, "hot.huge")
            huge = skills / "hot.huge" / "skill.yaml"
            huge.write_text(
                huge.read_text().replace("description: Echo, hot-added.", "description: " + "x" * 40_000_000)
            )
            _add_skill(skills, "hot.after")
            with anyio.fail_after(20):
                while "hot_after" not in await _tool_names(client):
                    await events.__anext__()
            tools = await _tool_names(client)
            assert time.monotonic() - started < 10
        assert {"hot_echo", "hot_after"} <= tools and not {"hot_bomb", "hot_huge"} & tools
        assert (await client.call_tool("hot_echo", {"message": "still here"})).structured_content[
            "message"
        ] == "still here"
