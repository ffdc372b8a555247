"""skill.define: validate a skill.yaml with the loader's models, then register it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, stdio_client

HANDLER = ROOT / "skills" / "skill.define" / "skill_define.py"
FRAMEWORK_SKILLS = [
    "skill.create",
    "skill.define",
    "agent.define",
    "registry.update",
    "registry.query",
    "policy.enforce",
]


GOOD_INPUTS = "[{name: source_path, type: string, required: true}]"


def make_skill(
    ws: Path,
    name: str = "data.clean",
    version: str = "1.0.0",
    *,
    folder: str | None = None,
    handler: bool = True,
    inputs: str = GOOD_INPUTS,
) -> Path:
    directory = ws / "skills" / (folder or name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "skill.yaml").write_text(
        textwrap.dedent(f"""\
        name: {name}
        version: {version}
        description: Clean a data file.
        status: active
        tags: [data]
        inputs: {inputs}
        entrypoints:
          - command: /data/clean
            handler: clean.py
            runtime: python
            permissions: [filesystem:read]
        """)
    )
    if handler:
        (directory / "clean.py").write_text("print('{}')\n")
    return directory / "skill.yaml"


def call(ws: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "BETTY_WORKSPACE": str(ws), **(env or {})},
        timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_valid_skill_is_registered_once(workspace: Path) -> None:
    make_skill(workspace)
    code, out = call(workspace, "skills/data.clean/skill.yaml")
    assert code == 0, out
    data = out["data"]
    assert (data["valid"], data["action"], data["registered"], data["warnings"]) == (True, "added", True, [])
    entry = json.loads((workspace / "registry" / "skills.json").read_text())["skills"][0]
    assert entry["name"] == "data.clean" and entry["inputs"][0]["name"] == "source_path"
    assert entry["updated_at"]
    code, out = call(workspace, "skills/data.clean")  # the folder works too
    assert code == 0 and (out["data"]["action"], out["data"]["registered"]) == ("unchanged", False)


def test_validate_only_and_dry_run_write_nothing(workspace: Path) -> None:
    make_skill(workspace)
    code, out = call(workspace, "skills/data.clean/skill.yaml", "--no-register")
    assert code == 0 and out["data"]["action"] == "not_registered"
    code, out = call(workspace, "skills/data.clean/skill.yaml", "--dry_run")
    assert code == 0 and (out["data"]["action"], out["data"]["registered"]) == ("added", False)
    assert not (workspace / "registry").exists()


def test_model_errors_name_file_field_and_problem(workspace: Path) -> None:
    manifest = make_skill(workspace, inputs="[{name: source_path, type: blob}]")
    code, out = call(workspace, str(manifest))
    assert code == 1
    error = out["errors"][0]
    assert error["code"] == "invalid_manifest"
    assert error["problems"][0].startswith(f"{manifest}: inputs.0: unknown type 'blob'")
    assert not (workspace / "registry").exists()


def test_invalid_yaml_names_the_line(workspace: Path) -> None:
    manifest = make_skill(workspace)
    manifest.write_text("name: data.clean\nversion: [1.0\n")
    code, out = call(workspace, str(manifest))
    assert code == 1 and out["errors"][0]["code"] == "invalid_manifest"
    assert f"{manifest}: invalid YAML at line 3, column 1" in out["errors"][0]["message"]


def test_missing_handler_and_bad_version(workspace: Path) -> None:
    make_skill(workspace, handler=False)
    code, out = call(workspace, "skills/data.clean/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "handler_missing"
    assert "handler 'clean.py' not found" in out["errors"][0]["message"]
    make_skill(workspace, version="1.0")
    code, out = call(workspace, "skills/data.clean/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "invalid_version"
    assert "version '1.0' is not a semantic version" in out["errors"][0]["message"]


def test_folder_mismatch_is_a_warning(workspace: Path) -> None:
    make_skill(workspace, name="data.clean", folder="cleaner")
    code, out = call(workspace, "skills/cleaner/skill.yaml")
    assert code == 0
    assert out["data"]["warnings"] == [
        f"{workspace}/skills/cleaner/skill.yaml: name 'data.clean' differs from its folder 'cleaner'"
    ]


def test_registry_refusals_surface(workspace: Path) -> None:
    manifest = make_skill(workspace, version="2.0.0")
    assert call(workspace, str(manifest))[0] == 0
    manifest.write_text(manifest.read_text().replace("Clean a data file.", "Clean it better."))
    code, out = call(workspace, str(manifest))
    assert code == 1 and out["errors"][0]["code"] == "active_version_conflict"
    make_skill(workspace, version="1.9.9")
    code, out = call(workspace, str(manifest))
    assert code == 1 and out["errors"][0]["code"] == "version_downgrade"


def test_wrong_kind_missing_and_outside(workspace: Path, tmp_path: Path) -> None:
    (workspace / "agent.yaml").write_text("name: a.b\n")
    code, out = call(workspace, "agent.yaml")
    assert code == 1 and "use agent.define" in out["errors"][0]["message"]
    code, out = call(workspace, "nope/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "not_found"
    code, out = call(workspace, str(ROOT / "skills" / "skill.define" / "skill.yaml"))
    assert code == 1 and out["errors"][0]["code"] == "path_outside_workspace"
    code, out = call(workspace)
    assert code == 1 and out["errors"][0]["code"] == "bad_arguments"


@pytest.mark.parametrize("name", FRAMEWORK_SKILLS)
def test_framework_skills_are_valid(workspace: Path, name: str) -> None:
    code, out = call(
        workspace,
        str(ROOT / "skills" / name / "skill.yaml"),
        "--no-register",
        env={"BETTY_ALLOWED_ROOTS": str(ROOT / "skills")},
    )
    assert code == 0, out
    assert out["data"]["name"] == name and out["data"]["warnings"] == []


@pytest.mark.anyio
async def test_define_over_mcp(workspace: Path) -> None:
    make_skill(workspace)
    make_skill(workspace, name="data.broken", inputs="[{type: string}]")
    async with stdio_client(workspace, fixtures=False) as client:
        good = await client.call_tool("skill_define", {"manifest_path": "skills/data.clean/skill.yaml"})
        bad = await client.call_tool("skill_define", {"manifest_path": "skills/data.broken/skill.yaml"})
    assert not good.is_error
    assert good.structured_content["action"] == "added" and good.structured_content["registered"] is True
    assert bad.is_error
    assert "inputs.0.name: Field required" in bad.structured_content["errors"][0]["message"]
