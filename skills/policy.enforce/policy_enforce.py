#!/usr/bin/env python3
"""policy.enforce: check skill and agent manifests against Betty's policy rules.

One manifest (``manifest_path``), every manifest in the catalog (``--batch``) or every manifest
under a folder (``--directory``). Each violation names its rule, severity, file and problem;
any error-severity violation makes the result a failure. Rules:

- ``manifest.parse`` / ``manifest.schema``: the file is YAML the loader's models accept
- ``naming.format`` / ``naming.folder``: a Betty name (lowercase, dotted) equal to the folder name
- ``version.semver``: a semantic version
- ``status.missing`` / ``status.known`` / ``status.deprecated_hint``: the lifecycle status
- ``permissions.unknown``: permissions from Betty's vocabulary only
- ``description.present``, ``handler.declared``, ``handler.exists`` (skills)
- batch only: ``reference.archived`` (error), ``reference.deprecated`` and ``reference.unknown``
  (warnings) for the skills active agents list
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from betty_mcp.core.rules import (
    STATUSES,
    betty_name_problem,
    folder_name_problem,
    handler_path,
    handler_problem,
)
from betty_mcp.kit.registry import MANIFEST_FILES, Kind, RegistryError, parse_version
from betty_mcp.kit.skillkit import SkillError, run, workspace_path
from betty_mcp.kit.skillkit import parser as make_parser

PERMISSIONS = frozenset(
    {
        "filesystem:read",
        "filesystem:write",
        "network:http",
        "network",
        "process:execute",
        "filesystem",
        "read",
        "write",
    }
)
REPLACEMENT_FIELDS = ("replaced_by", "replacement", "superseded_by", "deprecation")
REPLACEMENT_WORDS = ("deprecated", "replaced by", "superseded", "use ")
# Problems the model reports that a dedicated rule already reports better.
COVERED_FIELDS = {"name", "status"}


@dataclass
class Violation:
    rule_id: str
    severity: Literal["error", "warning"]
    message: str
    path: str


@dataclass
class Checked:
    path: Path
    kind: Kind
    raw: dict[str, Any] | None


class PolicyReport:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.checked: list[Checked] = []

    def add(self, rule_id: str, severity: Literal["error", "warning"], message: str, path: Path) -> None:
        self.violations.append(Violation(rule_id, severity, message, str(path)))


def sniff_kind(path: Path, raw: Any) -> Kind:
    if path.name in MANIFEST_FILES:
        return MANIFEST_FILES[path.name]
    agentish = isinstance(raw, dict) and ("skills_available" in raw or "reasoning_mode" in raw)
    return "agents" if agentish else "skills"


def check_manifest(path: Path, report: PolicyReport) -> None:
    from betty_mcp.core.errors import ManifestError
    from betty_mcp.core.manifests import read_yaml

    try:
        raw = read_yaml(path)
    except ManifestError as exc:
        report.add("manifest.parse", "error", str(exc).removeprefix(f"{path}:").strip(), path)
        report.checked.append(Checked(path, sniff_kind(path, None), None))
        return
    kind = sniff_kind(path, raw)
    if not isinstance(raw, dict):
        report.add("manifest.parse", "error", f"the top level is a {type(raw).__name__}, not a mapping", path)
        report.checked.append(Checked(path, kind, None))
        return
    report.checked.append(Checked(path, kind, raw))
    check_schema(path, kind, raw, report)
    check_naming(path, raw, report)
    check_version(path, raw, report)
    check_status(path, raw, report)
    check_permissions(path, raw, report)
    if not isinstance(raw.get("description"), str) or not raw["description"].strip():
        report.add("description.present", "error", "description is missing or empty", path)
    if kind == "skills":
        check_handler(path, raw, report)


def check_schema(path: Path, kind: Kind, raw: dict[str, Any], report: PolicyReport) -> None:
    from pydantic import ValidationError

    from betty_mcp.core.manifests import AgentManifest, SkillManifest

    try:
        (SkillManifest if kind == "skills" else AgentManifest).model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"]
            if not loc or loc[0] in COVERED_FIELDS:  # the top-level check is the handler rule's
                continue
            where = ".".join(str(p) for p in loc)
            message = err["msg"].removeprefix("Value error, ")
            report.add("manifest.schema", "error", f"{where}: {message}", path)


def check_naming(path: Path, raw: dict[str, Any], report: PolicyReport) -> None:
    name = raw.get("name")
    problem = betty_name_problem(name)
    if problem:
        report.add("naming.format", "error", problem, path)
    folder_problem = folder_name_problem(name, path) if isinstance(name, str) and name else None
    if folder_problem:
        report.add("naming.folder", "warning", folder_problem, path)


def check_version(path: Path, raw: dict[str, Any], report: PolicyReport) -> None:
    if "version" not in raw:
        report.add("version.semver", "error", "version is missing; write MAJOR.MINOR.PATCH like 0.1.0", path)
        return
    try:
        parse_version(raw["version"])
    except RegistryError as exc:
        report.add("version.semver", "error", exc.message, path)


def check_status(path: Path, raw: dict[str, Any], report: PolicyReport) -> None:
    status = raw.get("status")
    if status is None:
        report.add("status.missing", "warning", "status is missing (taken as active); declare it", path)
    elif status not in STATUSES:
        report.add("status.known", "error", f"status {status!r} is not one of {', '.join(STATUSES)}", path)
    elif status == "deprecated" and not _names_replacement(raw):
        report.add(
            "status.deprecated_hint",
            "warning",
            "deprecated without saying what replaces it: add replaced_by or say so in the description",
            path,
        )


def _names_replacement(raw: dict[str, Any]) -> bool:
    if any(raw.get(field) for field in REPLACEMENT_FIELDS):
        return True
    description = str(raw.get("description") or "").lower()
    return any(word in description for word in REPLACEMENT_WORDS)


def check_permissions(path: Path, raw: dict[str, Any], report: PolicyReport) -> None:
    places: list[tuple[str, Any]] = [("permissions", raw.get("permissions"))]
    entrypoints = raw.get("entrypoints")
    if isinstance(entrypoints, list):
        places += [
            (f"entrypoints.{i}.permissions", e.get("permissions"))
            for i, e in enumerate(entrypoints)
            if isinstance(e, dict)
        ]
    for where, value in places:
        if value is None:
            continue
        if not isinstance(value, list):
            report.add(
                "permissions.unknown", "error", f"{where} must be a list, not {type(value).__name__}", path
            )
            continue
        for index, permission in enumerate(value):
            if permission not in PERMISSIONS:
                report.add(
                    "permissions.unknown",
                    "error",
                    f"{where}.{index}: unknown permission {permission!r}; known: "
                    f"{', '.join(sorted(PERMISSIONS))}",
                    path,
                )


def check_handler(path: Path, raw: dict[str, Any], report: PolicyReport) -> None:
    entrypoints = raw.get("entrypoints")
    execution = raw.get("execution")
    handler = None
    if isinstance(entrypoints, list) and entrypoints and isinstance(entrypoints[0], dict):
        handler = entrypoints[0].get("handler")
    elif isinstance(execution, dict):
        handler = execution.get("entry_point")
    name = raw.get("name") if isinstance(raw.get("name"), str) else path.parent.name
    if not isinstance(handler, str) or not handler:
        found = handler_path(path.parent, None, name)
        if found is None:
            report.add("handler.declared", "error", handler_problem(path.parent, None, name) or "", path)
        else:
            message = f"no handler declared; {found.name} is used by Betty's naming convention: declare it"
            report.add("handler.declared", "warning", message, path)
    elif (problem := handler_problem(path.parent, handler, name)) is not None:
        report.add("handler.exists", "error", problem, path)


def check_references(report: PolicyReport, catalog_skills: dict[str, str]) -> None:
    """Active agents must not list archived skills; deprecated and unknown ones are warnings."""
    statuses = dict(catalog_skills)
    for item in report.checked:
        if item.kind == "skills" and item.raw and isinstance(item.raw.get("name"), str):
            statuses.setdefault(item.raw["name"], str(item.raw.get("status") or "active"))
    for item in report.checked:
        raw = item.raw
        if item.kind != "agents" or not raw or (raw.get("status") or "active") != "active":
            continue
        skills = raw.get("skills_available")
        for index, name in enumerate(skills if isinstance(skills, list) else []):
            where = f"skills_available.{index}"
            status = statuses.get(name)
            if status is None:
                report.add(
                    "reference.unknown", "warning", f"{where}: skill '{name}' does not exist", item.path
                )
            elif status == "archived":
                report.add(
                    "reference.archived",
                    "error",
                    f"{where}: active agent lists skill '{name}', which is archived",
                    item.path,
                )
            elif status == "deprecated":
                report.add(
                    "reference.deprecated",
                    "warning",
                    f"{where}: active agent lists skill '{name}', which is deprecated",
                    item.path,
                )


def catalog_files(settings: Any) -> list[Path]:
    from betty_mcp.core.catalog import sources

    files = []
    roots = [(root, "skill.yaml") for _, root in sources(settings, "skills")]
    roots += [(root, "agent.yaml") for _, root in sources(settings, "agents")]
    for root, file_name in roots:
        if root.is_dir():
            files += sorted(root.glob(f"*/{file_name}"))
    return files


def directory_files(directory: Path) -> list[Path]:
    found = [*directory.rglob("skill.yaml"), *directory.rglob("agent.yaml")]
    return sorted(p for p in found if not _hidden(p.relative_to(directory)))


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def handle(args: argparse.Namespace) -> dict[str, Any]:
    from betty_mcp.core.config import settings_from_env

    if args.manifest_path and (args.batch or args.directory):
        raise SkillError("give either manifest_path or batch/directory, not both")
    report = PolicyReport()
    if args.manifest_path:
        path = workspace_path(args.manifest_path, must_exist=True, kind="manifest_path")
        if path.is_dir():
            raise SkillError(
                f"manifest_path '{args.manifest_path}' is a folder; use directory for a batch",
                code="not_a_file",
            )
        check_manifest(path, report)
    elif args.directory or args.batch:
        settings = settings_from_env()
        if args.directory:
            directory = workspace_path(args.directory, must_exist=True, kind="directory")
            if not directory.is_dir():
                raise SkillError(f"directory '{args.directory}' is not a folder", code="not_a_directory")
            files = directory_files(directory)
        else:
            files = catalog_files(settings)
        for path in files:
            check_manifest(path, report)
        check_references(report, _catalog_statuses(settings) if args.directory else {})
    else:
        raise SkillError("nothing to check: give manifest_path, batch (every catalog manifest) or directory")
    errors = [v for v in report.violations if v.severity == "error"]
    result: dict[str, Any] = {
        "compliant": not errors,
        "violations": [asdict(v) for v in report.violations],
        "checked": len(report.checked),
        "files": [str(c.path) for c in report.checked],
        "summary": {"errors": len(errors), "warnings": len(report.violations) - len(errors)},
    }
    if errors:
        result["ok"] = False
        result["errors"] = [
            {"code": v.rule_id, "message": f"{v.path}: {v.message}", "path": v.path} for v in errors
        ]
    return result


def _catalog_statuses(settings: Any) -> dict[str, str]:
    from betty_mcp.core.catalog import load_catalog

    return {name: skill.manifest.status for name, skill in load_catalog(settings).skills.items()}


parser = make_parser("Check skill and agent manifests against Betty's policy rules.")
parser.add_argument("--manifest_path", help="one skill.yaml or agent.yaml")
parser.add_argument("--batch", action="store_true", help="check every catalog manifest")
parser.add_argument("--directory", help="check every skill.yaml and agent.yaml under this folder")

if __name__ == "__main__":
    run(handle, parser)
