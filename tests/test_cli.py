"""The betty-mcp command line, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_SKILLS, ROOT


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "betty_mcp", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )


def test_skills_list_json_names_tools_and_hides_drafts(workspace: Path) -> None:
    out = cli("skills", "list", "--json", "--skills-dir", str(FIXTURE_SKILLS), "--no-bundled", cwd=workspace)
    assert out.returncode == 0, out.stderr
    listed = {s["name"]: s for s in json.loads(out.stdout)}
    assert listed["test.echo"]["tool"] == "test_echo" and "test.draft" not in listed
    everything = cli("skills", "list", "--json", "--all", "--skills-dir", str(FIXTURE_SKILLS), cwd=workspace)
    assert "test.draft" in {s["name"] for s in json.loads(everything.stdout)}


def test_skills_list_for_people_is_a_table_with_problems_on_stderr(workspace: Path) -> None:
    out = cli("skills", "list", "--skills-dir", str(FIXTURE_SKILLS), "--no-bundled", cwd=workspace)
    assert "test.echo" in out.stdout and "test_echo" in out.stdout
    assert "unknown type 'blob'" in out.stderr


def test_skills_show_gives_the_schema(workspace: Path) -> None:
    out = cli("skills", "show", "test.echo", "--json", "--skills-dir", str(FIXTURE_SKILLS), cwd=workspace)
    assert json.loads(out.stdout)["input_schema"]["required"] == ["message"]
    missing = cli("skills", "show", "no.such", "--skills-dir", str(FIXTURE_SKILLS), cwd=workspace)
    assert missing.returncode == 2 and "no skill named 'no.such'" in missing.stderr


def test_skills_run_parses_key_values_by_schema_and_sets_the_exit_code(workspace: Path) -> None:
    ok = cli(
        "skills",
        "run",
        "test.echo",
        "message=007",
        "times=2",
        "shout=true",
        'tags=["x"]',
        "--json",
        "--skills-dir",
        str(FIXTURE_SKILLS),
        cwd=workspace,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "ok": True,
        "status": "success",
        "message": "007",
        "times": 2,
        "tags": ["x"],
    }
    failed = cli("skills", "run", "test.crash", "--skills-dir", str(FIXTURE_SKILLS), cwd=workspace)
    assert failed.returncode == 1
    invalid = cli("skills", "run", "test.echo", "times=x", "--skills-dir", str(FIXTURE_SKILLS), cwd=workspace)
    assert invalid.returncode == 2 and "missing required argument 'message'" in invalid.stderr


def test_validate_exits_non_zero_on_broken_manifests(workspace: Path) -> None:
    good = cli("validate", str(FIXTURE_SKILLS / "test.echo"), cwd=workspace)
    assert good.returncode == 0 and "1 manifest(s) checked: valid" in good.stdout
    bad = cli("validate", str(FIXTURE_SKILLS), "--json", cwd=workspace)
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert report["valid"] is False
    assert any("unknown type 'blob'" in e["message"] for e in report["errors"])
    bundled = cli("validate", str(ROOT / "skills"), str(ROOT / "agents"), cwd=workspace)
    assert bundled.returncode == 0, bundled.stdout


def test_agents_list_reports_missing_skills(tmp_path: Path) -> None:
    agents = tmp_path / "agents" / "demo.agent"
    agents.mkdir(parents=True)
    (agents / "agent.yaml").write_text(
        "name: demo.agent\nversion: 0.1.0\ndescription: d\ncapabilities: [x]\n"
        "skills_available: [test.echo, test.draft, no.such]\nreasoning_mode: oneshot\nstatus: active\n"
    )
    out = cli(
        "agents",
        "list",
        "--json",
        "--agents-dir",
        str(tmp_path / "agents"),
        "--skills-dir",
        str(FIXTURE_SKILLS),
        cwd=tmp_path,
    )
    demo = next(a for a in json.loads(out.stdout) if a["name"] == "demo.agent")
    assert demo["missing_skills"] == ["test.draft", "no.such"] and demo["reasoning_mode"] == "oneshot"
    assert demo["why_missing"]["test.draft"] == "skill status is draft, not active"


@pytest.mark.anyio
async def test_cli_and_mcp_describe_an_agent_alike(tmp_path: Path) -> None:
    """One rule decides what an agent cannot use: the CLI and the agents_list tool agree."""
    from tests.conftest import stdio_client

    agents = tmp_path / "agents" / "demo.agent"
    agents.mkdir(parents=True)
    (agents / "agent.yaml").write_text(
        "name: demo.agent\nversion: 0.1.0\ndescription: d\ncapabilities: [x]\n"
        "skills_available: [test.echo, test.draft, no.such]\nreasoning_mode: oneshot\nstatus: active\n"
    )
    flags = ["--agents-dir", str(tmp_path / "agents"), "--skills-dir", str(FIXTURE_SKILLS)]
    shown = json.loads(cli("agents", "show", "demo.agent", "--json", *flags, cwd=tmp_path).stdout)
    async with stdio_client(tmp_path, *flags, fixtures=False) as client:
        listed = (await client.call_tool("agents_list", {})).structured_content["agents"]
    served = next(a for a in listed if a["name"] == "demo.agent")
    assert served == shown and served["missing_skills"] == ["test.draft", "no.such"]


def test_a_bad_config_file_is_named_with_the_field(tmp_path: Path) -> None:
    (tmp_path / "betty.yaml").write_text("limits:\n  skill_timeout_seconds: -1\n")
    out = cli("skills", "list", cwd=tmp_path)
    assert out.returncode == 2
    assert "betty.yaml: limits.skill_timeout_seconds: Input should be greater than 0" in out.stderr
