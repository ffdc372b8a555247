"""The registry store (betty_mcp.kit.registry) and the registry.update / registry.query skills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from betty_mcp.core.rules import betty_name_problem
from betty_mcp.kit.registry import Registry, RegistryError, parse_version, similarity
from tests.conftest import ROOT, stdio_client

UPDATE = ROOT / "skills" / "registry.update" / "registry_update.py"
QUERY = ROOT / "skills" / "registry.query" / "registry_query.py"


def skill(name: str = "data.clean", version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "description": f"{name} does things",
        "status": "active",
        "tags": ["data"],
        **extra,
    }


def write_skill(ws: Path, name: str, version: str = "1.0.0", **extra: Any) -> Path:
    folder = ws / "skills" / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": name,
        "version": version,
        "description": f"{name} skill",
        "status": "active",
        "tags": ["data"],
        **extra,
        "entrypoints": [{"handler": "run.py"}],
    }
    (folder / "skill.yaml").write_text(json.dumps(manifest, indent=1))
    (folder / "run.py").write_text("print('{}')\n")
    return folder / "skill.yaml"


def write_agent(ws: Path, name: str, version: str = "1.0.0", capabilities: list[str] | None = None) -> Path:
    folder = ws / "agents" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agent.yaml").write_text(
        textwrap.dedent(f"""\
        name: {name}
        version: {version}
        description: An agent.
        status: active
        capabilities: {json.dumps(capabilities or ["Design REST APIs"])}
        skills_available: [api.validate]
        reasoning_mode: iterative
        """)
    )
    return folder / "agent.yaml"


def call(handler: Path, ws: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(handler), *args],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "BETTY_WORKSPACE": str(ws)},
        timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


# -- the store ---------------------------------------------------------------------------------


def test_register_add_update_unchanged(workspace: Path) -> None:
    registry = Registry(workspace)
    assert registry.register("skills", skill()).action == "added"
    assert registry.register("skills", skill()).action == "unchanged"
    outcome = registry.register("skills", skill(version="1.1.0", description="better"))
    assert (outcome.action, outcome.previous_version) == ("updated", "1.0.0")
    doc = json.loads((workspace / "registry" / "skills.json").read_text())
    assert doc["registry_version"] and doc["generated_at"].endswith("Z")
    [entry] = doc["skills"]
    assert entry["version"] == "1.1.0" and entry["description"] == "better" and entry["updated_at"]


def test_unchanged_does_not_rewrite(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill())
    before = registry.path("skills").stat().st_mtime_ns
    outcome = registry.register("skills", skill())
    assert outcome.written is False
    assert registry.path("skills").stat().st_mtime_ns == before


def test_active_version_with_different_content_is_refused(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill())
    with pytest.raises(RegistryError) as info:
        registry.register("skills", skill(description="changed", tags=["other"]))
    assert info.value.code == "active_version_conflict"
    assert "'data.clean' 1.0.0 is registered and active" in info.value.message
    assert "description, tags" in info.value.message
    assert registry.entries("skills")[0]["description"] == "data.clean does things"


def test_draft_version_may_be_rewritten_and_status_may_move_forward(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill(status="draft"))
    assert registry.register("skills", skill(status="draft", description="v2")).action == "updated"
    assert registry.register("skills", skill(status="active", description="v2")).action == "updated"
    with pytest.raises(RegistryError, match="registered and active"):
        registry.register("skills", skill(status="draft", description="v2"))  # back to draft: no
    assert registry.register("skills", skill(status="deprecated", description="v2")).action == "updated"
    assert registry.entries("skills")[0]["status"] == "deprecated"


def test_downgrade_is_refused(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill(version="1.10.0"))
    with pytest.raises(RegistryError) as info:
        registry.register("skills", skill(version="1.9.0"))
    assert info.value.code == "version_downgrade"
    assert "1.9.0 is older than the registered 1.10.0" in info.value.message


def test_prerelease_orders_before_release(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill(version="2.0.0"))
    with pytest.raises(RegistryError, match="downgrades"):
        registry.register("skills", skill(version="2.0.0-rc.1"))
    assert parse_version("1.0.0-alpha.1") < parse_version("1.0.0-beta.2") < parse_version("1.0.0")


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "latest", "1.0.0.0", 1.5, ""])
def test_non_semver_is_refused(workspace: Path, version: Any) -> None:
    with pytest.raises(RegistryError) as info:
        Registry(workspace).register("skills", skill(version=version))
    assert info.value.code == "invalid_version"
    assert "not a semantic version" in info.value.message
    assert not (workspace / "registry" / "skills.json").exists()


def test_semver_that_cannot_be_ordered_is_refused() -> None:
    with pytest.raises(RegistryError, match="cannot be ordered"):
        parse_version("1.0.0-foo")


def test_corrupt_registry_is_reported_not_overwritten(workspace: Path) -> None:
    path = workspace / "registry" / "skills.json"
    path.parent.mkdir()
    path.write_text('{"skills": [')
    with pytest.raises(RegistryError, match=r"skills.json: invalid JSON at line 1"):
        Registry(workspace).register("skills", skill())
    assert path.read_text() == '{"skills": ['


def test_query_fuzzy_scores_best_first(workspace: Path) -> None:
    registry = Registry(workspace)
    for name in ("api.validate", "api.validate_schema", "data.clean", "workflow.run"):
        registry.register("skills", skill(name=name, tags=["api"] if name.startswith("api") else ["data"]))
    results = registry.query("skills", name="api.validate")
    assert [r["name"] for r in results] == ["api.validate", "api.validate_schema"]
    assert results[0]["score"] == 1.0 > results[1]["score"]
    assert registry.query("skills", name="api.valdate")[0]["name"] == "api.validate"
    assert registry.query("skills", name="api.valdate", fuzzy=False) == []
    assert {r["name"] for r in registry.query("skills", tag="API")} == {"api.validate", "api.validate_schema"}
    assert [r["name"] for r in registry.query("skills", name="validate", limit=1)] == ["api.validate"]
    assert registry.query("skills", name="zzzz") == []


def test_query_by_status_and_capability(workspace: Path) -> None:
    registry = Registry(workspace)
    registry.register("skills", skill(name="old.thing", status="deprecated"))
    registry.register("skills", skill(name="new.thing"))
    assert [r["name"] for r in registry.query("skills", status="deprecated")] == ["old.thing"]
    registry.register(
        "agents",
        {
            "name": "api.designer",
            "version": "1.0.0",
            "status": "active",
            "capabilities": ["Design RESTful APIs", "Review OpenAPI specs"],
        },
    )
    registry.register("agents", {"name": "data.agent", "version": "1.0.0", "capabilities": ["Clean CSVs"]})
    hits = registry.query("agents", capability="openapi")
    assert [h["name"] for h in hits] == ["api.designer"]
    assert registry.query("agents", capability="design apis")[0]["name"] == "api.designer"
    assert registry.query("agents", capability="openapi", status="draft") == []


def test_similarity_rules() -> None:
    assert similarity("Api.Validate", ["api.validate"]) == 1.0
    assert 0.8 < similarity("valid", ["api.validate"]) < 1.0
    assert similarity("valid", ["api.validate"], fuzzy=False) == 0.0
    assert similarity("kubernetes", ["api.validate"]) == 0.0


def test_betty_names() -> None:
    assert betty_name_problem("data.clean") is None
    assert betty_name_problem("data.clean_up-2") is None
    for bad in ("Data.clean", "clean", "data..clean", "data.2clean", "data clean", ""):
        assert betty_name_problem(bad), bad
    assert "over hosts' limit of 52" in (betty_name_problem("a." + "b" * 60) or "")


def test_concurrent_writers_lose_nothing(workspace: Path) -> None:
    """Six processes each registering ten skills at once: all sixty entries survive."""
    script = textwrap.dedent("""\
        import sys
        from pathlib import Path
        from betty_mcp.kit.registry import Registry
        registry = Registry(Path(sys.argv[1]))
        for i in range(10):
            registry.register("skills", {"name": f"p{sys.argv[2]}.s{i}", "version": "1.0.0"})
        """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(workspace), str(n)], cwd=ROOT) for n in range(6)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    entries = Registry(workspace).entries("skills")
    assert len(entries) == 60
    assert len({e["name"] for e in entries}) == 60
    assert not list((workspace / "registry").glob("*.tmp"))


# -- registry.update ---------------------------------------------------------------------------


def test_update_skill_then_unchanged_then_conflict(workspace: Path) -> None:
    manifest = write_skill(workspace, "data.clean")
    code, out = call(UPDATE, workspace, "skills/data.clean/skill.yaml")
    assert code == 0 and out["data"]["action"] == "added" and out["data"]["kind"] == "skills"
    code, out = call(UPDATE, workspace, str(manifest))
    assert code == 0 and out["data"]["action"] == "unchanged"
    manifest.write_text(manifest.read_text().replace("data.clean skill", "changed text"))
    code, out = call(UPDATE, workspace, str(manifest))
    assert code == 1
    assert out["errors"][0]["code"] == "active_version_conflict"
    assert f"the new manifest ({manifest}) differs in: description." in out["errors"][0]["message"]
    manifest.write_text(manifest.read_text().replace('"1.0.0"', '"1.1.0"'))
    code, out = call(UPDATE, workspace, str(manifest))
    assert code == 0 and (out["data"]["action"], out["data"]["previous_version"]) == ("updated", "1.0.0")


def test_update_dry_run_writes_nothing(workspace: Path) -> None:
    write_skill(workspace, "data.clean")
    code, out = call(UPDATE, workspace, "skills/data.clean/skill.yaml", "--dry_run")
    assert code == 0 and out["data"]["action"] == "added" and out["data"]["written"] is False
    assert not (workspace / "registry" / "skills.json").exists()


def test_update_agent_by_file_name_and_kind(workspace: Path) -> None:
    write_agent(workspace, "api.designer")
    code, out = call(UPDATE, workspace, "agents/api.designer/agent.yaml")
    assert code == 0 and out["data"]["kind"] == "agents"
    registered = json.loads((workspace / "registry" / "agents.json").read_text())["agents"]
    assert [a["name"] for a in registered] == ["api.designer"]
    other = workspace / "my-agent.yaml"
    other.write_text((workspace / "agents/api.designer/agent.yaml").read_text().replace("1.0.0", "1.2.0"))
    code, out = call(UPDATE, workspace, "my-agent.yaml")
    assert code == 1 and "cannot tell whether" in out["errors"][0]["message"]
    code, out = call(UPDATE, workspace, "my-agent.yaml", "--kind", "agents")
    assert code == 0 and out["data"]["action"] == "updated"
    code, out = call(UPDATE, workspace, "agents/api.designer/agent.yaml", "--kind", "skills")
    assert code == 1 and "agent.yaml, which holds agents, but kind is 'skills'" in out["errors"][0]["message"]


def test_update_refusals(workspace: Path, tmp_path: Path) -> None:
    write_skill(workspace, "data.clean", version="2.0.0")
    assert call(UPDATE, workspace, "skills/data.clean/skill.yaml")[0] == 0
    write_skill(workspace, "data.clean", version="1.5.0")
    code, out = call(UPDATE, workspace, "skills/data.clean/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "version_downgrade"
    write_skill(workspace, "data.clean", version="2.1")
    code, out = call(UPDATE, workspace, "skills/data.clean/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "invalid_version"
    broken = workspace / "skills" / "broken.one" / "skill.yaml"
    broken.parent.mkdir()
    broken.write_text("name: broken.one\nversion: 1.0.0\nstatus: retired\n")
    code, out = call(UPDATE, workspace, str(broken))
    assert code == 1 and out["errors"][0]["code"] == "invalid_manifest"
    problems = out["errors"][0]["problems"]
    assert any(f"{broken}: status:" in p for p in problems)
    code, out = call(UPDATE, workspace, "missing/skill.yaml")
    assert code == 1 and out["errors"][0]["code"] == "not_found"
    outside = tmp_path / "skill.yaml"
    outside.write_text("name: x.y\n")
    code, out = call(UPDATE, workspace, str(outside))
    assert code == 1 and out["errors"][0]["code"] == "path_outside_workspace"


# -- registry.query ----------------------------------------------------------------------------


def test_query_handler(workspace: Path) -> None:
    code, out = call(QUERY, workspace, "--name", "anything")
    assert code == 0 and out["data"]["count"] == 0 and out["data"]["results"] == []
    registry = Registry(workspace)
    for name in ("api.validate", "api.compatibility", "data.clean"):
        registry.register("skills", skill(name=name))
    code, out = call(QUERY, workspace, "--name", "api.validat")
    assert code == 0 and out["data"]["results"][0]["name"] == "api.validate"
    code, out = call(QUERY, workspace, "--name", "api.validat", "--no-fuzzy")
    assert code == 0 and out["data"]["count"] == 0
    code, out = call(QUERY, workspace, "--status", "active", "--limit", "2")
    assert code == 0 and out["data"]["count"] == 2
    code, out = call(QUERY, workspace, "--status", "retired")
    assert code == 1 and out["errors"][0]["code"] == "bad_arguments"
    assert "invalid choice: 'retired'" in out["errors"][0]["message"]
    code, out = call(QUERY, workspace, "--limit", "0")
    assert code == 1 and "limit must be at least 1" in out["errors"][0]["message"]


@pytest.mark.anyio
async def test_update_and_query_over_mcp(workspace: Path) -> None:
    write_agent(workspace, "api.designer", capabilities=["Design RESTful APIs"])
    write_skill(workspace, "data.clean")
    async with stdio_client(workspace, fixtures=False) as client:
        added = await client.call_tool("registry_update", {"manifest_path": "agents/api.designer/agent.yaml"})
        await client.call_tool("registry_update", {"manifest_path": "skills/data.clean/skill.yaml"})
        found = await client.call_tool("registry_query", {"kind": "agents", "capability": "restful api"})
        none = await client.call_tool(
            "registry_query", {"name": "data.clean", "fuzzy": False, "status": "draft"}
        )
    assert not added.is_error and added.structured_content["action"] == "added"
    assert found.structured_content["count"] == 1
    assert found.structured_content["results"][0]["name"] == "api.designer"
    assert none.structured_content["count"] == 0
