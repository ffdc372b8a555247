"""Handlers forked from the zygote behave exactly as freshly spawned ones: results, failures,
timeouts (the whole group killed), secrets kept out, large output."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from betty_mcp.core.config import load_settings
from betty_mcp.services import Services
from tests.conftest import FIXTURE_SKILLS, alive

pytestmark = pytest.mark.anyio


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
async def warm_app(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Services:
    monkeypatch.setenv("SOME_API_KEY", "sk-zygote-secret-1234")
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False))
    zygote = app.runner._zygote
    assert zygote is not None
    await app.runner.run(app.catalog.skills["test.echo"], {"message": "start the zygote"})
    with anyio.fail_after(30):
        while not zygote._ready.is_set():
            await anyio.sleep(0.05)
    return app


async def test_forked_handlers_answer_like_fresh_ones(warm_app: Services) -> None:
    skills = warm_app.catalog.skills
    echo = await warm_app.runner.run(skills["test.echo"], {"message": "hi", "shout": True, "tags": ["a"]})
    assert echo.structured == {"ok": True, "status": "success", "message": "HI", "times": 1, "tags": ["a"]}
    logs = await warm_app.runner.run(skills["test.logs"], {"name": "ann"})
    assert logs.structured["greeting"] == "hello ann"
    crash = await warm_app.runner.run(skills["test.crash"], {})
    assert not crash.ok and crash.exit_code == 1
    assert "RuntimeError: boom: the handler crashed" in crash.structured["errors"][0]["message"]
    env = await warm_app.runner.run(skills["test.env"], {})
    assert "SOME_API_KEY" not in env.structured["visible"]
    big = await warm_app.runner.run(skills["test.big"], {"megabytes": 2})
    assert big.ok and big.structured["truncated"] is True and big.output_file is not None


async def test_a_forked_handler_is_killed_with_its_children_at_the_timeout(
    warm_app: Services, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("BETTY_TEST_PIDFILE", str(pidfile))
    warm_app.runner._base_env["BETTY_TEST_PIDFILE"] = str(pidfile)  # the environment is computed once
    zygote_pid = warm_app.runner._zygote._process.pid  # type: ignore[union-attr]
    seen_parent: list[int] = []

    async def watch() -> None:
        while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
            await anyio.sleep(0.02)
        seen_parent.append(parent_of(int(pidfile.read_text().split()[0])))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        result = await warm_app.runner.run(warm_app.catalog.skills["test.hang"], {})
    assert not result.ok and "timed out after 1.5s" in result.structured["errors"][0]["message"]
    assert time.monotonic() - started < 5
    assert seen_parent == [zygote_pid], "the handler was forked by the zygote"
    pids = [int(p) for p in pidfile.read_text().split()]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert os.path.exists(warm_app.runner._zygote.path)  # type: ignore[union-attr]
