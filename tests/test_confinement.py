"""Symlinks never lead betty-mcp's own reads and writes out of the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from betty_mcp.core.errors import PathOutsideWorkspace
from betty_mcp.core.rules import confined
from tests.conftest import ROOT, stdio_client

pytestmark = pytest.mark.anyio


def test_confined_follows_symlinks_and_refuses_what_leaves(tmp_path: Path) -> None:
    inside = tmp_path / "ws" / "a"
    inside.mkdir(parents=True)
    (tmp_path / "secret").write_text("s")
    (inside / "ok").symlink_to(inside.parent)  # a link that stays in is fine
    assert confined(inside / "ok" / "x", tmp_path / "ws") == (tmp_path / "ws" / "x")
    (inside / "out").symlink_to(tmp_path / "secret")
    with pytest.raises(PathOutsideWorkspace, match="outside"):
        confined(inside / "out", tmp_path / "ws")


async def test_run_and_output_resources_do_not_read_through_symlinks(workspace: Path) -> None:
    runs = workspace / ".betty-mcp" / "runs"
    (runs / "outputs").mkdir(parents=True)
    (runs / "stolen.jsonl").symlink_to("/etc/passwd")
    (runs / "outputs" / "0123456789ab.json").symlink_to("/etc/passwd")
    (runs / "fine.jsonl").write_text('{"event": "run_started"}\n')
    async with stdio_client(workspace) as client:
        fine = await client.read_resource("betty://runs/fine")
        assert "run_started" in fine.contents[0].text
        for uri in ("betty://runs/stolen", "betty://outputs/0123456789ab"):
            with pytest.raises(Exception, match="Unknown resource"):
                await client.read_resource(uri)


def test_the_registry_is_not_written_through_a_symlinked_folder(tmp_path: Path) -> None:
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (workspace / "registry").symlink_to(outside)
    skill = workspace / "skills" / "data.clean"
    skill.mkdir(parents=True)
    (skill / "skill.yaml").write_text(
        "name: data.clean\nversion: 0.1.0\ndescription: d\nstatus: active\n"
        "entrypoints:\n  - handler: data_clean.py\n"
    )
    (skill / "data_clean.py").write_text("print('{}')\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "skills" / "skill.define" / "skill_define.py"),
            str(skill / "skill.yaml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BETTY_WORKSPACE": str(workspace)},
        timeout=60,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 1 and out["errors"][0]["code"] == "path_outside_workspace"
    assert list(outside.iterdir()) == [], "nothing was written through the link"


async def test_a_cut_result_is_not_saved_through_a_symlinked_outputs_folder(
    workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    runs = workspace / ".betty-mcp" / "runs"
    runs.mkdir(parents=True)
    (runs / "outputs").symlink_to(outside)
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_big", {"megabytes": 1})
    assert not result.is_error and result.structured_content["truncated"] is True
    assert "output_file" not in result.structured_content
    assert list(outside.iterdir()) == [], "nothing was written through the link"
