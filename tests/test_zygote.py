"""Handlers forked from the zygote behave exactly as freshly spawned ones: results, failures,
timeouts (the whole group killed), secrets kept out, large output. Arguments of any size reach
them; a malformed job or a dying zygote costs no call its result, and the zygote comes back. Its
socket's folder exists only while it runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from betty_mcp.core.config import load_settings
from betty_mcp.run.zygote import ZYGOTE_ENV
from betty_mcp.services import Services
from tests.conftest import FIXTURE_SKILLS, alive

pytestmark = pytest.mark.anyio


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.fixture
async def warm_app(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Services]:
    monkeypatch.setenv("SOME_API_KEY", "sk-zygote-secret-1234")
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False))
    zygote = app.runner._zygote
    assert zygote is not None
    await app.runner.run(app.catalog.skills["test.echo"], {"message": "start the zygote"})
    with anyio.fail_after(30):
        while not zygote._ready.is_set():
            await anyio.sleep(0.05)
    yield app
    app.close()


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


# -- large arguments, malformed jobs, a zygote that dies --------------------------------------------


async def test_large_arguments_go_through_the_zygote_and_do_not_hurt_it(warm_app: Services) -> None:
    """An argument of 100 KB used to kill the zygote (one partial read, then json.loads), taking the
    exit status of a call running meanwhile with it; one of 1 MB failed with E2BIG."""
    skills = warm_app.catalog.skills
    zygote = warm_app.runner._zygote._process  # type: ignore[union-attr]
    results = {}

    async def sleep() -> None:
        results["sleep"] = await warm_app.runner.run(skills["test.sleep"], {"seconds": 0.5})

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep)
        await anyio.sleep(0.1)
        results["100k"] = await warm_app.runner.run(skills["test.echo"], {"message": "x" * 100_000})
    assert results["sleep"].ok and results["sleep"].exit_code == 0, results["sleep"].text
    for size in (100_000, 1_000_000):
        result = results.get(f"{size // 1000}k") or await warm_app.runner.run(
            skills["test.echo"], {"message": "y" * size}
        )
        assert result.ok and result.output_file is not None, result.text
        assert len(json.loads(result.output_file.read_text())["message"]) == size
    assert zygote.poll() is None and warm_app.runner._zygote._process is zygote  # type: ignore[union-attr]


async def test_a_call_keeps_its_exit_status_when_the_zygote_dies_under_it(
    warm_app: Services, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    warm_app.runner._base_env["BETTY_TEST_PIDFILE"] = str(pidfile)
    zygote = warm_app.runner._zygote._process  # type: ignore[union-attr]
    results = {}

    async def sleep() -> None:
        results["sleep"] = await warm_app.runner.run(warm_app.catalog.skills["test.sleep"], {"seconds": 0.8})

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep)
        with anyio.fail_after(10):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await anyio.sleep(0.02)
        assert parent_of(int(pidfile.read_text())) == zygote.pid
        zygote.kill()
    result = results["sleep"]
    assert result.ok and result.exit_code == 0, result.text  # not -9: the handler finished normally
    assert result.structured["slept"] == 0.8


async def test_a_handler_killed_after_its_zygote_died_is_reported_without_a_made_up_status(
    warm_app: Services, tmp_path: Path
) -> None:
    """Died by a signal with nobody left to reap it: its status is unknown, and said to be."""
    pidfile = tmp_path / "pids"
    warm_app.runner._base_env["BETTY_TEST_PIDFILE"] = str(pidfile)
    zygote = warm_app.runner._zygote._process  # type: ignore[union-attr]
    results = {}

    async def sleep() -> None:
        results["sleep"] = await warm_app.runner.run(warm_app.catalog.skills["test.sleep"], {"seconds": 30})

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(sleep)
        with anyio.fail_after(10):
            while not pidfile.exists() or not pidfile.read_text().strip():
                await anyio.sleep(0.02)
        zygote.kill()
        zygote.wait()
        os.kill(int(pidfile.read_text()), 9)
    result = results["sleep"]
    assert time.monotonic() - started < 10
    assert not result.ok and result.exit_code is None
    (error,) = result.structured["errors"]
    assert error["code"] == "status_lost" and "ended without an exit status" in error["message"]


async def test_the_zygote_is_restarted_after_it_dies(warm_app: Services, tmp_path: Path) -> None:
    runner = warm_app.runner
    zygote = runner._zygote
    assert zygote is not None
    old = zygote._process
    old.kill()  # type: ignore[union-attr]
    old.wait()  # type: ignore[union-attr]
    echo = warm_app.catalog.skills["test.echo"]
    with anyio.fail_after(30):
        while True:  # calls meanwhile start a fresh interpreter; the zygote comes back after its backoff
            result = await runner.run(echo, {"message": "still served"})
            assert result.ok and result.structured["message"] == "still served"
            if zygote._process not in (None, old) and zygote._ready.is_set():
                break
            await anyio.sleep(0.05)
    pidfile = tmp_path / "pids"
    runner._base_env["BETTY_TEST_PIDFILE"] = str(pidfile)
    seen: list[int] = []

    async def watch() -> None:
        while not pidfile.exists() or not pidfile.read_text().strip():
            await anyio.sleep(0.02)
        seen.append(parent_of(int(pidfile.read_text())))

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        assert (await runner.run(warm_app.catalog.skills["test.sleep"], {"seconds": 0.3})).ok
    assert seen == [zygote._process.pid]  # type: ignore[union-attr]
    assert os.path.exists(zygote.path)


async def test_a_malformed_job_only_closes_its_connection(warm_app: Services) -> None:
    zygote = warm_app.runner._zygote
    assert zygote is not None and zygote._process is not None

    def send(data: bytes, fds: int = 0) -> bytes:
        opened = [os.open(os.devnull, os.O_RDWR) for _ in range(fds)]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(zygote.path)
            socket.send_fds(conn, [data], opened) if opened else conn.sendall(data)
            for fd in opened:
                os.close(fd)
            if data.startswith(b"partial"):
                return b""
            conn.shutdown(socket.SHUT_WR)
            return conn.recv(64)

    header = struct.Struct("!I")
    garbage = b"{not json"
    assert send(garbage) == b""
    assert send(header.pack(len(garbage)) + garbage, fds=4) == b""
    assert send(header.pack(len(garbage)) + garbage, fds=3) == b""
    assert send(header.pack(2**31) + b"{}", fds=4) == b""
    wrong = json.dumps({"argv": "not a list", "cwd": "/", "env": {}}).encode()
    assert send(header.pack(len(wrong)) + wrong, fds=4) == b""
    assert send(b"partial" + header.pack(1000) + b'{"argv":', fds=4) == b""
    bad_utf8 = b'{"argv": ["\xff"]}'
    assert send(header.pack(len(bad_utf8)) + bad_utf8, fds=4) == b""
    assert zygote._process.poll() is None, "the zygote survives every one"
    result = await warm_app.runner.run(warm_app.catalog.skills["test.echo"], {"message": "after"})
    assert result.ok and result.structured["message"] == "after"


async def test_a_command_line_too_large_to_exec_is_refused_clearly(workspace: Path) -> None:
    """Without the zygote, a handler is exec'd: one argument of 128 KiB or more cannot be."""
    settings = load_settings(
        None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False, limits={"fork_server": False}
    )
    app = Services(settings)
    try:
        echo = app.catalog.skills["test.echo"]
        fits = await app.runner.run(echo, {"message": "z" * 100_000})
        assert fits.ok, fits.text
        result = await app.runner.run(echo, {"message": "z" * 200_000})
        assert not result.ok
        (error,) = result.structured["errors"]
        assert error["code"] == "arguments_too_large"
        assert error["message"].startswith(
            "skill 'test.echo': argument 'message' is 200000 bytes; "
            "too large for a command line (limit 131071"
        )
        assert error["message"].endswith("; pass it in a file")
    finally:
        app.close()


async def test_a_large_argument_before_the_zygote_is_ready_waits_for_it(workspace: Path) -> None:
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False))
    try:
        assert app.runner._zygote is not None and app.runner._zygote._process is None
        result = await app.runner.run(app.catalog.skills["test.echo"], {"message": "w" * 300_000})
        assert result.ok and result.output_file is not None, result.text
        assert len(json.loads(result.output_file.read_text())["message"]) == 300_000
    finally:
        app.close()


# -- the socket's folder ---------------------------------------------------------------------------


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary directory of our own (short: it holds a Unix socket's path), for the runner."""
    folder = Path(tempfile.mkdtemp(prefix="bz-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder  # type: ignore[misc]
    shutil.rmtree(folder, ignore_errors=True)


async def test_no_socket_folder_before_the_zygote_starts_and_none_after_close(
    workspace: Path, temp_dir: Path
) -> None:
    settings = load_settings(None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False)
    idle = Services(settings)
    runner = idle.runner
    assert runner._zygote is not None
    assert runner._base_env[ZYGOTE_ENV] == runner._zygote.path  # handlers are told where it will be
    assert list(temp_dir.iterdir()) == [], "no folder for a runner that has started no zygote"
    idle.close()
    assert list(temp_dir.iterdir()) == []

    used = Services(settings)
    assert (await used.runner.run(used.catalog.skills["test.echo"], {"message": "hi"})).ok
    zygote = used.runner._zygote
    assert zygote is not None and zygote._process is not None
    folder = Path(zygote.path).parent
    assert list(temp_dir.iterdir()) == [folder] and folder.stat().st_mode & 0o777 == 0o700
    with anyio.fail_after(30):
        while not zygote._ready.is_set():
            await anyio.sleep(0.05)
    process = zygote._process
    used.close()
    assert process.poll() is not None, "the zygote is stopped"
    assert list(temp_dir.iterdir()) == []


LEARNS = """\
import json, os, sys
had = {name: name in sys.modules for name in ("jsonschema", "wave")}
if os.environ.get("LEARN_HOSTILE"):
    os.write(4, b"wave\\nos\\n" * 10)  # only the zygote's own list is ever learned
else:
    import jsonschema  # noqa: F401
print(json.dumps({"ok": True, "had": had}))
"""


async def test_the_zygote_learns_heavy_imports_from_handlers_and_nothing_else(
    workspace: Path, tmp_path: Path
) -> None:
    """A lean zygote: jsonschema is not preloaded; once a handler imported it, later forks have it.
    A handler writing other names on the learning pipe gets none of them loaded."""
    skills = tmp_path / "skills"
    for name in ("learn.uses", "learn.hostile"):
        folder = skills / name
        folder.mkdir(parents=True)
        (folder / "skill.yaml").write_text(f"name: {name}\nentrypoints:\n  - handler: h.py\n")
        (folder / "h.py").write_text(LEARNS)
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[skills], bundled=False))
    app.runner._base_env["LEARN_HOSTILE"] = ""
    uses, hostile = app.catalog.skills["learn.uses"], app.catalog.skills["learn.hostile"]
    try:
        zygote = app.runner._zygote
        assert zygote is not None
        zygote.start()
        with anyio.fail_after(30):
            while not zygote._ready.is_set():
                await anyio.sleep(0.05)
        first = await app.runner.run(uses, {})
        assert first.structured["had"] == {"jsonschema": False, "wave": False}
        seen = {}
        with anyio.fail_after(30):
            while not seen.get("jsonschema"):
                seen = (await app.runner.run(uses, {})).structured["had"]
        app.runner._base_env["LEARN_HOSTILE"] = "1"
        await app.runner.run(hostile, {})
        app.runner._base_env["LEARN_HOSTILE"] = ""
        assert (await app.runner.run(uses, {})).structured["had"] == {"jsonschema": True, "wave": False}
    finally:
        app.close()


HANDLER = """import json, sys
def shout(text: {annotation}) -> str:
    return text.upper()
print(json.dumps({{"ok": True, "status": "success", "said": shout({said!r}), "file": __file__,
                  "main": __name__}}))
"""


async def test_a_forked_handler_runs_its_script_as_it_is_now_compiled_on_its_own(workspace: Path) -> None:
    """The zygote keeps each handler script compiled for its children: an edited script runs as edited,
    a broken one fails as ``python handler.py`` would, and the code is compiled with the script's own
    flags, none of the zygote's (``from __future__ import annotations`` there leaves annotations
    lazy; in the script they are evaluated, as Python runs it)."""
    skills = workspace / "skills"
    (skills / "t.edit").mkdir(parents=True)
    manifest = "name: t.edit\nversion: 1.0.0\ndescription: edited\nentrypoints:\n  - handler: h.py\n"
    (skills / "t.edit" / "skill.yaml").write_text(manifest)
    script = skills / "t.edit" / "h.py"
    script.write_text(HANDLER.format(annotation="str", said="one"))
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[skills], bundled=False))
    try:
        skill = app.catalog.skills["t.edit"]
        zygote = app.runner._zygote
        assert zygote is not None
        await app.runner.run(skill, {})
        with anyio.fail_after(30):
            while not zygote._ready.is_set():
                await anyio.sleep(0.05)
        first = await app.runner.run(skill, {})
        assert first.structured["said"] == "ONE" and first.structured["main"] == "__main__"
        assert first.structured["file"] == str(script)
        assert app.runner._zygote is not None and app.runner._zygote._process is not None  # forked
        script.write_text(HANDLER.format(annotation="str", said="two, edited"))
        assert (await app.runner.run(skill, {})).structured["said"] == "TWO, EDITED"
        script.write_text(HANDLER.format(annotation="Undefined", said="three"))
        unknown = await app.runner.run(skill, {})
        assert not unknown.ok and "NameError: name 'Undefined' is not defined" in unknown.text
        script.write_text("print('unclosed'\n")
        broken = await app.runner.run(skill, {})
        assert not broken.ok and "SyntaxError" in broken.text
    finally:
        app.close()


BECOME = """
import json, os, subprocess
from betty_mcp.run.zygote_server import _become_environment
os.environ.update(ZYGOTE_ONLY="x", CHANGED="zygote", SAME="same")
_become_environment({"CHANGED": "job", "SAME": "same", "NEW": "new", "PATH": os.environ["PATH"]})
listed = subprocess.run(["env"], capture_output=True, text=True).stdout
c_level = dict(line.split("=", 1) for line in listed.splitlines())
print(json.dumps([dict(os.environ), c_level]))
"""


def test_a_forked_handler_gets_exactly_its_calls_environment() -> None:
    """Only what differs is changed (a cheaper fork), yet the result is the call's environment, in
    ``os.environ`` and in the C environment a handler's own subprocesses inherit."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", BECOME], capture_output=True, text=True, timeout=30, check=True
    )
    python_level, c_level = json.loads(out.stdout)
    expected = {"CHANGED": "job", "SAME": "same", "NEW": "new", "PATH": os.environ["PATH"]}
    assert python_level == expected
    assert c_level == expected


async def test_the_zygote_stays_lean_until_a_handler_needs_more(warm_app: Services) -> None:
    """Its own imports keep OpenSSL out (~4.5 MB in every fork); hashlib is loaded only once a handler
    has imported it (LEARNED)."""
    zygote_pid = warm_app.runner._zygote._process.pid  # type: ignore[union-attr]
    maps = Path(f"/proc/{zygote_pid}/maps").read_text()
    assert "libcrypto" not in maps and "_hashlib" not in maps
