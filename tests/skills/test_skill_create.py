"""skill.create: scaffolding a skill that loads, runs, passes its own test and hot-reloads as a tool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from betty_mcp.core.catalog import load_catalog
from betty_mcp.core.config import Settings
from betty_mcp.core.manifests import load_skill_manifest
from betty_mcp.run.runner import SkillRunner
from tests.conftest import ROOT, stdio_client

HANDLER = ROOT / "skills" / "skill.create" / "skill_create.py"
INPUTS = [
    {"name": "source_path", "type": "string", "required": True, "description": "The file to clean."},
    {"name": "columns", "type": "array", "required": True},
    {"name": "limit", "type": "integer", "default": 10},
    {"name": "ratio", "type": "number"},
    {"name": "strict", "type": "boolean"},
    {"name": "options", "type": "object"},
    {"name": "mode", "type": "string", "options": ["fast", "full"]},
]


def settings(ws: Path, *skills_dirs: Path, bundled: bool = False) -> Settings:
    return Settings(workspace=ws, skills_dirs=list(skills_dirs), bundled=bundled)


def call(ws: Path, *args: str, config: Settings | None = None) -> tuple[int, dict[str, Any]]:
    env = {
        **os.environ,
        "BETTY_WORKSPACE": str(ws),
        "BETTY_MCP_SETTINGS": (config or settings(ws)).model_dump_json(),
    }
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *args], cwd=ws, capture_output=True, text=True, env=env, timeout=60
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_scaffold_loads_runs_and_passes_its_test(workspace: Path) -> None:
    code, out = call(
        workspace,
        "data.clean",
        'Clean "messy" rows \\ fast.',
        "--inputs",
        json.dumps(INPUTS),
        "--target_dir",
        "my-skills",
    )
    assert code == 0, out
    folder = workspace / "my-skills" / "data.clean"
    data = out["data"]
    assert (data["tool"], data["directory"], data["handler"]) == ("data_clean", str(folder), "data_clean.py")
    assert sorted(p.name for p in folder.iterdir()) == [
        "SKILL.md",
        "data_clean.py",
        "skill.yaml",
        "test_data_clean.py",
    ]
    manifest = load_skill_manifest(folder / "skill.yaml")
    assert manifest.description == 'Clean "messy" rows \\ fast.'
    assert [(p.name, p.type, p.required) for p in manifest.params] == [
        (i["name"], i["type"], i.get("required", False)) for i in INPUTS
    ]
    assert manifest.params[6].enum == ["fast", "full"] and manifest.handler == "data_clean.py"
    assert "betty-mcp skills run data.clean source_path=... columns=..." in (folder / "SKILL.md").read_text()
    argv = ["in.csv", '["a", "b"]', "--ratio", "0.5", "--strict"]
    proc = subprocess.run(
        [sys.executable, "data_clean.py", *argv], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    envelope = json.loads(proc.stdout)
    assert envelope["ok"] is True and envelope["data"]["skill"] == "data.clean"
    assert envelope["data"]["received"] == {
        "source_path": "in.csv",
        "columns": ["a", "b"],
        "limit": 10,
        "ratio": 0.5,
        "strict": True,
        "options": None,
        "mode": None,
    }
    pytest_argv = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_data_clean.py"]
    tested = subprocess.run(
        [sys.executable, *pytest_argv], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert tested.returncode == 0, tested.stdout
    assert "1 passed" in tested.stdout


def test_scaffold_is_ruff_clean(workspace: Path) -> None:
    description = "Clean rows. " + "A long description that the docstring has to wrap. " * 4
    assert call(workspace, "data.clean", description, "--inputs", json.dumps(INPUTS))[0] == 0
    ruff = ROOT / ".venv" / "bin" / "ruff"
    lint = subprocess.run(
        [str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "skills"],
        cwd=workspace,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout


@pytest.mark.anyio
async def test_scaffold_runs_through_the_runner(workspace: Path) -> None:
    """The generated argparse matches how the server builds argv for every input type."""
    assert call(workspace, "data.clean", "Clean rows.", "--inputs", json.dumps(INPUTS))[0] == 0
    config = settings(workspace, workspace / "skills")
    skill = load_catalog(config).skills["data.clean"]
    arguments = {
        "source_path": "in.csv",
        "columns": ["x"],
        "limit": 3,
        "ratio": 1.5,
        "strict": True,
        "options": {"k": [1]},
        "mode": "full",
    }
    result = await SkillRunner(config).run(skill, arguments)
    assert result.ok, result.structured
    assert result.structured["received"] == arguments


def test_default_target_is_the_first_configured_skills_dir(workspace: Path) -> None:
    first, second = workspace / "watched", workspace / "other"
    first.mkdir()
    second.mkdir()
    code, out = call(workspace, "data.first", "First.", config=settings(workspace, first, second))
    assert code == 0 and out["data"]["directory"] == str(first / "data.first")
    code, out = call(workspace, "data.plain", "Plain.")
    assert code == 0 and out["data"]["directory"] == str(workspace / "skills" / "data.plain")
    assert load_skill_manifest(workspace / "skills" / "data.plain" / "skill.yaml").params == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Data.clean", "not a Betty name"),
        ("clean", "not a Betty name"),
        ("data..clean", "not a Betty name"),
        ("data.2clean", "not a Betty name"),
        ("../escape.x", "not a Betty name"),
        ("a." + "b" * 51, "is too long"),
    ],
)
def test_invalid_names_are_refused(workspace: Path, name: str, message: str) -> None:
    code, out = call(workspace, name, "Something.")
    assert code == 1 and out["errors"][0]["code"] == "invalid_name" and message in out["errors"][0]["message"]
    assert not (workspace / "skills").exists()


def test_existing_names_are_refused(workspace: Path) -> None:
    assert call(workspace, "data.clean", "Clean.")[0] == 0
    code, out = call(workspace, "data.clean", "Again.")
    assert code == 1 and out["errors"][0]["code"] == "already_exists"
    folder = workspace / "skills" / "data.clean"
    assert out["errors"][0]["message"] == f"{folder} already exists; choose another name or remove it"
    bundled = settings(workspace, bundled=True)
    code, out = call(workspace, "skill.define", "Clash.", "--target_dir", "elsewhere", config=bundled)
    assert code == 1
    assert out["errors"][0]["message"].startswith("a skill named 'skill.define' already exists: ")
    watched = settings(workspace, workspace / "skills")
    assert call(workspace, "data.clean_x", "Takes tool data_clean_x.", config=watched)[0] == 0
    code, out = call(workspace, "data_clean.x", "Clash.", "--target_dir", "elsewhere", config=watched)
    assert code == 1
    message = out["errors"][0]["message"]
    assert "would get tool name 'data_clean_x', already taken by 'data.clean_x'" in message
    assert not (workspace / "elsewhere").exists()


def test_target_outside_workspace_is_refused(workspace: Path, tmp_path: Path) -> None:
    code, out = call(workspace, "data.clean", "Clean.", "--target_dir", str(tmp_path / "outside"))
    assert code == 1 and out["errors"][0]["code"] == "path_outside_workspace"
    code, out = call(workspace, "data.clean", "Clean.", config=settings(workspace, tmp_path / "outside"))
    assert code == 1 and out["errors"][0]["code"] == "path_outside_workspace"
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ('{"name": "x"}', "inputs must be an array"),
        ('["x"]', "inputs[0] must be an object"),
        ('[{"name": "Bad-Name"}]', "inputs[0].name 'Bad-Name' must be a snake_case identifier"),
        ('[{"name": "a"}, {"name": "a"}]', "inputs[1].name 'a' is declared twice"),
        ('[{"name": "a", "type": "blob"}]', "inputs[0].type 'blob' is not one of string, boolean"),
        ('[{"name": "a", "type": "boolean", "required": true}]', "a boolean input is a flag"),
        ('[{"name": "a", "colour": "red"}]', "inputs[0]: unknown field(s) colour"),
        ('[{"name": "a", "required": "yes"}]', "inputs[0].required must be true or false"),
        ('[{"name": "a", "required": true, "default": "x"}]', "a required input cannot have a default"),
        (
            '[{"name": "a", "type": "integer", "default": "5"}]',
            "inputs[0].default '5' is not of type integer",
        ),
        (
            '[{"name": "a", "type": "number", "default": true}]',
            "inputs[0].default True is not of type number",
        ),
        ("[not json", "not valid JSON"),
    ],
)
def test_bad_inputs_are_refused(workspace: Path, inputs: str, message: str) -> None:
    code, out = call(workspace, "data.clean", "Clean.", "--inputs", inputs)
    assert code == 1 and message in out["errors"][0]["message"]
    assert not (workspace / "skills").exists()


def test_empty_description_is_refused(workspace: Path) -> None:
    code, out = call(workspace, "data.clean", "   ")
    assert code == 1 and out["errors"][0]["message"] == "description must not be empty"


@pytest.mark.anyio
async def test_created_skill_becomes_a_tool_without_restart(workspace: Path) -> None:
    skills = workspace / "skills"
    skills.mkdir()
    inputs = [{"name": "who", "type": "string", "required": True}, {"name": "loud", "type": "boolean"}]
    async with stdio_client(workspace, "--skills-dir", str(skills), fixtures=False) as client:
        arguments = {"name": "demo.greet", "description": "Greet someone.", "inputs": inputs}
        created = await client.call_tool("skill_create", arguments)
        assert not created.is_error, created.structured_content
        assert created.structured_content["directory"] == str(skills / "demo.greet")
        deadline = time.monotonic() + 10
        names: set[str] = set()
        while "demo_greet" not in names and time.monotonic() < deadline:
            names = {t.name for t in (await client.list_tools()).tools}
            time.sleep(0.2)
        assert "demo_greet" in names
        result = await client.call_tool("demo_greet", {"who": "Ada", "loud": True})
    assert not result.is_error, result.structured_content
    assert result.structured_content["received"] == {"who": "Ada", "loud": True}
