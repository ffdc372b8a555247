"""``betty-mcp validate``: check manifests with the very models and rules the loader uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from betty_mcp.core.catalog import Catalog, Problem
from betty_mcp.core.errors import ManifestError
from betty_mcp.core.manifests import load_agent_manifest, load_skill_manifest
from betty_mcp.core.rules import folder_name_problem, handler_problem


@dataclass
class ValidationReport:
    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid": not self.errors,
            "checked": self.checked,
            "errors": [{"path": p.path, "message": p.message} for p in self.errors],
            "warnings": [
                {"path": p.path, "message": p.message} for p in self.problems if p.severity == "warning"
            ],
        }

    def lines(self) -> list[str]:
        verdict = "valid" if not self.errors else f"{len(self.errors)} error(s)"
        return [*(str(p) for p in self.problems), f"{len(self.checked)} manifest(s) checked: {verdict}"]


def _manifests_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted([*path.rglob("skill.yaml"), *path.rglob("agent.yaml")])


def validate_paths(paths: list[Path]) -> ValidationReport:
    report = ValidationReport()
    for given in paths:
        if not given.exists():
            report.problems.append(Problem("error", str(given), "does not exist"))
            continue
        for path in _manifests_under(given):
            report.checked.append(str(path))
            try:
                if path.name == "agent.yaml":
                    load_agent_manifest(path)
                    continue
                manifest = load_skill_manifest(path)
            except ManifestError as exc:
                report.problems.append(Problem("error", str(path), str(exc)))
                continue
            for warning in manifest.load_warnings:
                report.problems.append(Problem("warning", str(path), warning))
            if (problem := handler_problem(path.parent, manifest.handler, manifest.name)) is not None:
                report.problems.append(Problem("error", str(path), problem))
            if (problem := folder_name_problem(manifest.name, path)) is not None:
                report.problems.append(Problem("warning", str(path), problem))
    return report


def validate_sources(catalog: Catalog) -> ValidationReport:
    checked = [str(s.manifest_path) for s in catalog.skills.values()]
    checked += [str(a.manifest_path) for a in catalog.agents.values()]
    return ValidationReport(checked=checked, problems=list(catalog.problems))
