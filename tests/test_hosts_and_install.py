"""Real hosts and real installs: the MCP Inspector CLI, and a server installed from a built wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import FIXTURE_SKILLS, ROOT

INSPECTOR = ROOT / "tests" / "node" / "node_modules" / ".bin" / "mcp-inspector"


def _inspector(workspace: Path, *method: str) -> dict:
    assert INSPECTOR.exists(), "the MCP Inspector is installed by scripts/test (npm ci in tests/node)"
    server = [
        sys.executable,
        "-m",
        "betty_mcp",
        "serve",
        "--workspace",
        str(workspace),
        "--skills-dir",
        str(FIXTURE_SKILLS),
    ]
    proc = subprocess.run(
        [str(INSPECTOR), "--cli", *server, *method],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=workspace,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_inspector_cli_lists_tools(workspace: Path) -> None:
    listed = _inspector(workspace, "--method", "tools/list")
    tools = {t["name"]: t for t in listed["tools"]}
    assert tools["test_echo"]["title"] == "test.echo"
    assert tools["test_echo"]["inputSchema"]["required"] == ["message"]


def test_inspector_cli_calls_a_tool(workspace: Path) -> None:
    called = _inspector(
        workspace,
        "--method",
        "tools/call",
        "--tool-name",
        "test_echo",
        "--tool-arg",
        "message=from inspector",
        "--tool-arg",
        "times=3",
    )
    assert called["isError"] is False
    assert called["structuredContent"]["message"] == "from inspector"
    assert called["structuredContent"]["times"] == 3


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("betty_mcp-*.whl"))


def test_wheel_carries_the_bundled_skills_and_agents(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    bundled = {
        n.split("/")[3] for n in names if n.startswith("betty_mcp/_bundled/skills/") and n.count("/") >= 4
    }
    shipped = {p.name for p in (ROOT / "skills").iterdir() if (p / "skill.yaml").is_file()}
    assert shipped and bundled == shipped
    assert any(n.startswith("betty_mcp/_bundled/agents/") for n in names) or not any(
        (ROOT / "agents").glob("*/agent.yaml")
    )


@pytest.mark.anyio
async def test_installed_wheel_serves_the_bundled_skills(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "betty_mcp", "serve"],
        cwd=str(elsewhere),
        env={**os.environ, "PYTHONPATH": str(target)},
    )
    async with Client(params) as client:
        listed = await client.call_tool("skills_list", {"include_schemas": False, "limit": 500})
        located = await client.read_resource(
            "betty://skills/" + listed.structured_content["skills"][0]["name"]
        )
    shipped = sorted(p.name for p in (ROOT / "skills").iterdir() if (p / "skill.yaml").is_file())
    assert sorted(s["name"] for s in listed.structured_content["skills"]) == shipped
    assert {s["source"] for s in listed.structured_content["skills"]} == {"bundled"}
    assert "name:" in located.contents[0].text
    probe = subprocess.run(
        [sys.executable, "-c", "import betty_mcp.core.catalog as c; print(c.bundled_root())"],
        env=params.env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == str(target / "betty_mcp" / "_bundled"), "served from the installed wheel"
