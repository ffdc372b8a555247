"""agent.define: the loader's models plus Betty's agent rules, then registration."""

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

HANDLER = ROOT / "skills" / "agent.define" / "agent_define.py"


def make_skill(ws: Path, name: str, status: str = "active") -> None:
    folder = ws / "skills" / name
    folder.mkdir(parents=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": f"{name}.",
        "status": status,
        "entrypoints": [{"handler": "run.py"}],
    }
    (folder / "skill.yaml").write_text(json.dumps(manifest))
    (folder / "run.py").write_text("print('{}')\n")


def make_agent(ws: Path, name: str = "api.designer", **fields: Any) -> Path:
    folder = ws / "agents" / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": "1.0.0",
        "description": "Designs APIs.",
        "status": "active",
        "capabilities": ["Design RESTful APIs"],
        "skills_available": ["api.validate", "api.define"],
        "reasoning_mode": "iterative",
        **fields,
    }
    (folder / "agent.yaml").write_text(json.dumps(manifest))  # JSON is YAML
    return folder / "agent.yaml"


@pytest.fixture
def ws(workspace: Path) -> Path:
    make_skill(workspace, "api.validate")
    make_skill(workspace, "api.define")
    make_skill(workspace, "api.old", status="deprecated")
    return workspace


def settings(ws: Path, **extra: Any) -> str:
    return Settings(workspace=ws, skills_dirs=[ws / "skills"], bundled=False, **extra).model_dump_json()


def call(ws: Path, *args: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "BETTY_WORKSPACE": str(ws), "BETTY_MCP_SETTINGS": settings(ws, **extra)}
    proc = subprocess.run(
        [sys.executable, str(HANDLER), *args], cwd=ws, capture_output=True, text=True, env=env, timeout=60
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_valid_agent_is_registered(ws: Path) -> None:
    make_agent(
        ws,
        llm_config={
            "primary_provider": "anthropic",
            "fallback_provider": "ollama",
            "reasoning_budget": "high",
        },
        error_handling={"max_retries": 2, "timeout_seconds": 600, "retry_strategy": "exponential_backoff"},
    )
    code, out = call(ws, "agents/api.designer/agent.yaml")
    assert code == 0, out
    data = out["data"]
    assert (data["valid"], data["action"], data["registered"]) == (True, "added", True)
    assert data["skills"] == ["api.validate", "api.define"] and data["reasoning_mode"] == "iterative"
    entry = json.loads((ws / "registry" / "agents.json").read_text())["agents"][0]
    assert entry["name"] == "api.designer" and entry["llm_config"]["primary_provider"] == "anthropic"
    code, out = call(ws, "agents/api.designer")
    assert code == 0 and out["data"]["action"] == "unchanged"


def test_every_problem_is_reported_and_nothing_registered(ws: Path) -> None:
    manifest = make_agent(
        ws,
        version="1.0",
        skills_available=["api.validat", "api.old", "nothing.like.it"],
        llm_config={"primary_provider": "antropic", "fallback_provider": "ollama"},
        llm_preference="gpt",
        error_handling={"max_retries": 15, "timeout_seconds": 7200, "retry_strategy": "yolo"},
    )
    code, out = call(ws, str(manifest))
    assert code == 1
    by_code: dict[str, list[str]] = {}
    for error in out["errors"]:
        by_code.setdefault(error["code"], []).append(error["message"])
    src = str(manifest)
    assert by_code["invalid_version"] == [
        f"{src}: version '1.0' is not a semantic version; write MAJOR.MINOR.PATCH, e.g. '1.2.0'"
    ]
    assert by_code["unknown_skill"] == [
        f"{src}: skills_available.0: skill 'api.validat' does not exist in the catalog; "
        "did you mean api.validate or api.old?",
        f"{src}: skills_available.2: skill 'nothing.like.it' does not exist in the catalog",
    ]
    [inactive] = by_code["inactive_skill"]
    assert inactive.startswith(f"{src}: skills_available.1: skill 'api.old': skill status is deprecated")
    assert [m.split(";")[0] for m in by_code["unknown_provider"]] == [
        f"{src}: llm_config.primary_provider: unknown provider 'antropic'",
        f"{src}: llm_preference: unknown provider 'gpt'",
    ]
    assert by_code["bad_error_handling"] == [
        f"{src}: error_handling.timeout_seconds: 7200 is above 3600",
        f"{src}: error_handling.retry_strategy: unknown strategy 'yolo'; use one of none, immediate, fixed, "
        "fixed_delay, constant, linear, linear_backoff, exponential, exponential_backoff",
    ]
    assert out["data"]["valid"] is False
    assert not (ws / "registry").exists()


def test_configured_router_providers_are_known(ws: Path) -> None:
    make_agent(ws, llm_config={"primary_provider": "work-vllm"})
    code, out = call(ws, "agents/api.designer/agent.yaml", "--dry_run")
    assert code == 1 and out["errors"][0]["code"] == "unknown_provider"
    assert "known: openai, anthropic, ollama" in out["errors"][0]["message"]
    router = {"providers": {"work-vllm": {"type": "openai_compatible"}}}
    code, out = call(ws, "agents/api.designer/agent.yaml", "--dry_run", llm_router=router)
    assert code == 0 and out["data"]["action"] == "added" and out["data"]["registered"] is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"reasoning_mode": "sometimes"}, "reasoning_mode: Input should be 'iterative' or 'oneshot'"),
        (
            {"error_handling": {"timeout_seconds": 0}},
            "error_handling.timeout_seconds: Input should be greater",
        ),
        (
            {"error_handling": {"max_retries": -1}},
            "error_handling.max_retries: Input should be greater than or",
        ),
        ({"skills_available": "api.validate"}, "skills_available: Input should be a valid list"),
    ],
)
def test_model_errors(ws: Path, fields: dict[str, Any], expected: str) -> None:
    manifest = make_agent(ws, **fields)
    code, out = call(ws, str(manifest))
    assert code == 1 and out["errors"][0]["code"] == "invalid_manifest"
    assert f"{manifest}: {expected}" in out["errors"][0]["message"]


def test_validate_only_and_warnings(ws: Path) -> None:
    make_agent(ws, name="api.designer", skills_available=[])
    (ws / "agents" / "api.designer").rename(ws / "agents" / "designer")
    code, out = call(ws, "agents/designer/agent.yaml", "--no-register")
    assert code == 0 and out["data"]["action"] == "not_registered"
    assert [w.split(": ", 1)[1] for w in out["data"]["warnings"]] == [
        "name 'api.designer' differs from its folder 'designer'",
        "skills_available: the agent lists no skills",
    ]
    assert not (ws / "registry").exists()


def test_wrong_kind_and_missing_file(ws: Path) -> None:
    code, out = call(ws, "skills/api.validate/skill.yaml")
    assert code == 1 and "use skill.define" in out["errors"][0]["message"]
    code, out = call(ws, "agents/none/agent.yaml")
    assert code == 1 and out["errors"][0]["code"] == "not_found"


def test_active_version_conflict(ws: Path) -> None:
    manifest = make_agent(ws)
    assert call(ws, str(manifest))[0] == 0
    make_agent(ws, description="Designs better APIs.")
    code, out = call(ws, str(manifest))
    assert code == 1 and out["errors"][0]["code"] == "active_version_conflict"
    assert "differs in: description" in out["errors"][0]["message"]


@pytest.mark.anyio
async def test_define_over_mcp(ws: Path) -> None:
    make_agent(ws)
    make_agent(ws, name="api.broken", skills_available=["api.missing"])
    async with stdio_client(ws, "--skills-dir", str(ws / "skills"), fixtures=False) as client:
        good = await client.call_tool("agent_define", {"manifest_path": "agents/api.designer/agent.yaml"})
        bad = await client.call_tool(
            "agent_define", {"manifest_path": "agents/api.broken/agent.yaml", "register": False}
        )
    assert not good.is_error and good.structured_content["action"] == "added"
    assert bad.is_error
    assert "skill 'api.missing' does not exist" in bad.structured_content["errors"][0]["message"]
