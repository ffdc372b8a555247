"""policy.enforce: Betty's manifest policy, on single files, folders and the served catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from betty_mcp.core.config import Settings
from tests.conftest import ROOT, stdio_client

HANDLER = ROOT / "skills" / "policy.enforce" / "policy_enforce.py"
FRAMEWORK_SKILLS = {
    "skill.create",
    "skill.define",
    "agent.define",
    "registry.update",
    "registry.query",
    "policy.enforce",
}


def make_skill(
    ws: Path, name: str, *, folder: str | None = None, handler: bool = True, **fields: Any
) -> Path:
    directory = ws / "skills" / (folder or name)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": f"{name} does a thing.",
        "status": "active",
        "entrypoints": [{"command": "/x", "handler": "run.py", "permissions": ["filesystem:read"]}],
        **fields,
    }
    (directory / "skill.yaml").write_text(json.dumps(manifest, indent=1))
    if handler:
        (directory / "run.py").write_text("print('{}')\n")
    return directory / "skill.yaml"


def make_agent(ws: Path, name: str, skills: list[str], **fields: Any) -> Path:
    directory = ws / "agents" / name
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": "An agent.",
        "status": "active",
        "capabilities": ["things"],
        "skills_available": skills,
        "reasoning_mode": "oneshot",
        **fields,
    }
    (directory / "agent.yaml").write_text(json.dumps(manifest, indent=1))
    return directory / "agent.yaml"


def call(ws: Path, *args: str, config: Settings | None = None, **env: str) -> tuple[int, dict[str, Any]]:
    config = config or Settings(workspace=ws, bundled=False)
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *args],
        cwd=ws,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BETTY_WORKSPACE": str(ws), "BETTY_MCP_SETTINGS": config.model_dump_json(), **env},
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc.returncode, {**out.get("data", {}), **{k: v for k, v in out.items() if k != "data"}}


def rules(out: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((v["rule_id"], v["severity"]) for v in out["violations"])


def test_compliant_skill(workspace: Path) -> None:
    make_skill(workspace, "data.clean", tags=["data"], permissions=["process:execute"])
    code, out = call(workspace, "--manifest_path", "skills/data.clean/skill.yaml")
    assert code == 0 and out["ok"] is True
    assert (out["compliant"], out["violations"], out["checked"]) == (True, [], 1)


def test_every_skill_rule_reports_with_file_and_message(workspace: Path) -> None:
    path = make_skill(
        workspace,
        "Data_Clean",
        folder="data.clean",
        handler=False,
        version="1.0",
        status="retired",
        description="",
        permissions=["sudo"],
        entrypoints=[{"handler": "run.py", "permissions": ["filesystem:read", "net:raw"]}],
    )
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 1 and out["ok"] is False and out["compliant"] is False
    assert rules(out) == [
        ("description.present", "error"),
        ("handler.exists", "error"),
        ("naming.folder", "warning"),
        ("naming.format", "error"),
        ("permissions.unknown", "error"),
        ("permissions.unknown", "error"),
        ("status.known", "error"),
        ("version.semver", "error"),
    ]
    assert {v["path"] for v in out["violations"]} == {str(path)}
    messages = {v["message"] for v in out["violations"]}
    assert "name 'Data_Clean' differs from its folder 'data.clean'" in messages
    assert any(m.startswith("entrypoints.0.permissions.1: unknown permission 'net:raw'") for m in messages)
    assert any(m.startswith("permissions.0: unknown permission 'sudo'") for m in messages)
    assert "status 'retired' is not one of draft, active, deprecated, archived" in messages
    assert out["errors"][0]["message"].startswith(f"{path}: ")
    assert out["summary"] == {"errors": 7, "warnings": 1}


def test_schema_errors_and_missing_handler_are_not_doubled(workspace: Path) -> None:
    path = make_skill(workspace, "data.clean", entrypoints=[], inputs=[{"name": "x", "type": "blob"}])
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 1
    assert rules(out) == [("handler.declared", "warning"), ("manifest.schema", "error")]
    schema = next(v for v in out["violations"] if v["rule_id"] == "manifest.schema")
    assert schema["message"].startswith("inputs.0: unknown type 'blob'")


def test_lifecycle_warnings_do_not_fail(workspace: Path) -> None:
    make_skill(workspace, "old.one", status="deprecated")
    make_skill(workspace, "old.two", status="deprecated", replaced_by="new.two")
    make_skill(workspace, "old.three", status="deprecated", description="Deprecated: use new.three instead.")
    bare = make_skill(workspace, "no.status")
    bare.write_text(bare.read_text().replace('"status": "active",', ""))
    code, out = call(workspace, "--directory", "skills")
    assert code == 0 and out["compliant"] is True and out["checked"] == 4
    found = {(Path(v["path"]).parent.name, v["rule_id"], v["severity"]) for v in out["violations"]}
    assert found == {
        ("old.one", "status.deprecated_hint", "warning"),
        ("no.status", "status.missing", "warning"),
    }


def test_unparseable_manifests(workspace: Path) -> None:
    path = workspace / "skills" / "bad.yaml" / "skill.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("name: bad.yaml\nversion: [1\n")
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 1 and rules(out) == [("manifest.parse", "error")]
    assert out["violations"][0]["message"].startswith("invalid YAML at line 3, column 1")
    path.write_text("- just\n- a list\n")
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 1 and out["violations"][0]["message"] == "the top level is a list, not a mapping"


def test_agent_rules(workspace: Path) -> None:
    path = make_agent(
        workspace,
        "api.designer",
        ["data.clean"],
        reasoning_mode="sometimes",
        permissions=["filesystem:write", "root"],
    )
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 1
    assert rules(out) == [("manifest.schema", "error"), ("permissions.unknown", "error")]
    assert next(v for v in out["violations"] if v["rule_id"] == "manifest.schema")["message"].startswith(
        "reasoning_mode: Input should be 'iterative' or 'oneshot'"
    )


def test_batch_directory_checks_references(workspace: Path) -> None:
    make_skill(workspace, "s.active")
    make_skill(workspace, "s.old", status="deprecated", replaced_by="s.active")
    make_skill(workspace, "s.gone", status="archived")
    active = make_agent(workspace, "a.active", ["s.active", "s.old", "s.gone", "s.nowhere"])
    make_agent(workspace, "a.draft", ["s.gone"], status="draft")
    hidden = workspace / ".cache" / "x"
    hidden.mkdir(parents=True)
    (hidden / "skill.yaml").write_text("not: [valid")
    code, out = call(workspace, "--directory", ".")
    assert code == 1 and out["checked"] == 5
    assert [(v["rule_id"], v["severity"], v["message"]) for v in out["violations"]] == [
        (
            "reference.deprecated",
            "warning",
            "skills_available.1: active agent lists skill 's.old', which is deprecated",
        ),
        (
            "reference.archived",
            "error",
            "skills_available.2: active agent lists skill 's.gone', which is archived",
        ),
        ("reference.unknown", "warning", "skills_available.3: skill 's.nowhere' does not exist"),
    ]
    assert {v["path"] for v in out["violations"]} == {str(active)}


def test_single_file_mode_does_not_check_references(workspace: Path) -> None:
    make_skill(workspace, "s.gone", status="archived")
    path = make_agent(workspace, "a.active", ["s.gone"])
    code, out = call(workspace, "--manifest_path", str(path))
    assert code == 0 and out["violations"] == []


def test_batch_over_the_catalog_includes_the_framework_skills(workspace: Path) -> None:
    make_skill(workspace, "user.skill")
    config = Settings(workspace=workspace, skills_dirs=[workspace / "skills"], bundled=True)
    _, out = call(workspace, "--batch", config=config)
    checked = {Path(f).parent.name for f in out["files"]}
    assert {"user.skill", *FRAMEWORK_SKILLS} <= checked
    assert out["checked"] == len(out["files"])
    own = [v for v in out["violations"] if Path(v["path"]).parent.name in {"user.skill", *FRAMEWORK_SKILLS}]
    assert own == []


def test_bundled_skills_folder_in_batch(workspace: Path) -> None:
    """Other skills are added to the bundled folder over time: only ours are asserted on."""
    _, out = call(workspace, "--directory", str(ROOT / "skills"), BETTY_ALLOWED_ROOTS=str(ROOT / "skills"))
    assert {Path(f).parent.name for f in out["files"]} >= FRAMEWORK_SKILLS
    assert [v for v in out["violations"] if Path(v["path"]).parent.name in FRAMEWORK_SKILLS] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to check"),
        (("--manifest_path", "skills/x/skill.yaml", "--batch"), "either manifest_path or batch/directory"),
        (("--manifest_path", "missing.yaml"), "does not exist"),
        (("--manifest_path", "skills"), "is a folder; use directory"),
        (("--directory", "file.txt"), "is not a folder"),
        (("--directory", "/"), "outside the workspace"),
    ],
)
def test_argument_errors(workspace: Path, args: tuple[str, ...], message: str) -> None:
    (workspace / "skills").mkdir()
    (workspace / "file.txt").write_text("x")
    code, out = call(workspace, *args)
    assert code == 1 and message in out["errors"][0]["message"]


@pytest.mark.anyio
async def test_enforce_over_mcp(workspace: Path) -> None:
    make_skill(workspace, "data.clean")
    make_skill(workspace, "data.bad", permissions=["telepathy"])
    async with stdio_client(workspace, fixtures=False) as client:
        good = await client.call_tool("policy_enforce", {"manifest_path": "skills/data.clean/skill.yaml"})
        bad = await client.call_tool("policy_enforce", {"directory": "skills"})
    assert not good.is_error and good.structured_content["compliant"] is True
    assert bad.is_error
    assert bad.structured_content["checked"] == 2 and bad.structured_content["compliant"] is False
    assert bad.structured_content["violations"][0]["rule_id"] == "permissions.unknown"
