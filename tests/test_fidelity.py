"""Fidelity: every handler shape of the corpus behaves through MCP exactly as it does run directly.

For each case of ``fixtures/handlers/cases.json``: ``python handler.py *direct_argv`` in a fresh folder,
and the same call as MCP arguments through a real server over stdio, must give the same outcome
(success or failure) and write the same files with the same content.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from betty_mcp.core.manifests import load_skill_manifest
from betty_mcp.core.rules import handler_path, tool_name_for
from betty_mcp.run.envelope import last_json_document, normalise
from tests.conftest import stdio_client

pytestmark = pytest.mark.anyio

HANDLERS = Path(__file__).resolve().parent / "fixtures" / "handlers"
CASES: list[dict[str, Any]] = json.loads((HANDLERS / "cases.json").read_text(encoding="utf-8"))


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".betty-mcp" not in p.parts
    }


def run_directly(case: dict[str, Any], cwd: Path) -> tuple[bool, dict[str, bytes]]:
    folder = HANDLERS / case["shape"]
    manifest = load_skill_manifest(folder / "skill.yaml")
    handler = handler_path(folder, manifest.handler, manifest.name)
    assert handler is not None
    proc = subprocess.run(
        [sys.executable, str(handler), *case["direct_argv"]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = last_json_document(proc.stdout)
    ok = proc.returncode == 0 if doc is None else normalise(doc, proc.returncode)["ok"]
    return ok, files(cwd)


async def test_every_shape_behaves_through_mcp_as_it_does_directly(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    outcomes = []
    async with stdio_client(workspace, "--skills-dir", str(HANDLERS), fixtures=False) as client:
        for number, case in enumerate(CASES):
            direct = tmp_path / f"direct-{number}"
            direct.mkdir()
            direct_ok, direct_files = run_directly(case, direct)
            for entry in workspace.iterdir():  # each case starts from an empty folder, as the direct run
                if entry.name != ".betty-mcp":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            result = await client.call_tool(tool_name_for(case["shape"]), case["arguments"])
            written = files(workspace)
            outcomes.append((case["shape"], case["arguments"], direct_ok, not result.is_error))
            assert direct_ok is case["expect_ok"], (case, "the direct run itself is not as the case says")
            assert (not result.is_error) is direct_ok, (case, result.content[0].text[:500])
            assert written == direct_files, (case, sorted(written), sorted(direct_files))
            if case.get("build_error"):
                assert case["build_error"] in result.content[0].text
            shutil.rmtree(direct)
    assert len(outcomes) == len(CASES) >= 40
    assert {shape for shape, *_ in outcomes} == {c["shape"] for c in CASES}


async def test_subcommands_are_reported_as_unsupported(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    out = subprocess.run(
        [
            *(sys.executable, "-m", "betty_mcp", "skills", "show", "shape.subparsers", "--json"),
            *("--skills-dir", str(HANDLERS), "--no-bundled", "--workspace", str(workspace)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    shown = json.loads(out.stdout)
    assert shown["interface"]["source"] in ("parser", "ast")
    assert "subcommands (argparse subparsers)" in shown["interface"]["unsupported"]
    assert any("subcommands" in m for m in shown["mismatches"])


def test_doctor_names_a_handler_import_its_interpreter_lacks(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "betty_mcp",
            "doctor",
            "--json",
            "--skills-dir",
            str(HANDLERS),
            "--no-bundled",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    findings = {f["check"]: f for f in json.loads(out.stdout)}
    missing = findings["skill shape.import_failure"]
    assert not missing["ok"] and "betty_shape_missing_graph_lib" in missing["detail"]
    assert "shape.kebab_options" not in " ".join(findings), "a handler whose imports are found is not listed"
    assert out.returncode == 1


def make_checkout(root: Path, *, own_venv: bool) -> Path:
    """A Betty checkout whose one handler reports the interpreter it runs under."""
    skill = root / "skills" / "who.runs"
    skill.mkdir(parents=True)
    (skill / "skill.yaml").write_text(
        "name: who.runs\nversion: 0.1.0\ndescription: d\nstatus: active\ninputs: []\n"
        "entrypoints:\n  - handler: who_runs.py\n"
    )
    (skill / "who_runs.py").write_text(
        "import argparse, json, sys\nargparse.ArgumentParser().parse_args()\n"
        "print(json.dumps({'ok': True, 'python': sys.executable}))\n"
    )
    if own_venv:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    return root


def run_who(settings: Any) -> dict[str, Any]:
    import anyio

    from betty_mcp.services import Services

    services = Services(settings)
    try:
        skill = services.catalog.skills["who.runs"]
        result = anyio.run(services.run_skill, skill, {})
    finally:
        services.close()
    assert result.ok, result.structured
    return result.structured


def test_a_checkout_runs_under_its_own_venv(tmp_path: Path) -> None:
    from betty_mcp.core.config import load_settings

    home = make_checkout(tmp_path / "betty", own_venv=True)
    settings = load_settings(None, workspace=tmp_path, betty_home=home, bundled=False)
    assert run_who(settings)["python"] == str(home / ".venv" / "bin" / "python")


def test_an_interpreter_named_in_betty_yaml_wins(tmp_path: Path) -> None:
    from betty_mcp.core.config import load_settings

    home = make_checkout(tmp_path / "betty", own_venv=False)
    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True)
    config = tmp_path / "betty.yaml"
    config.write_text(f"betty_home: {home}\nbetty_home_python: {other}/bin/python\nbundled: false\n")
    assert run_who(load_settings(config, workspace=tmp_path))["python"] == str(other / "bin" / "python")
    config.write_text(
        f"bundled: false\nskills_dirs: [{home}/skills]\ninterpreters: {{{home}/skills: {other}/bin/python}}\n"
    )
    assert run_who(load_settings(config, workspace=tmp_path))["python"] == str(other / "bin" / "python")
