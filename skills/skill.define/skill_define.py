#!/usr/bin/env python3
"""skill.define: validate a skill.yaml with the catalog loader's models, then register it.

Beyond the model: the handler file must exist beside the manifest and the version must be
semantic; a name that differs from its folder is a warning. Registration goes through
``betty_mcp.kit.registry`` (refusing overwrites of active versions and downgrades).
"""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.core.rules import folder_name_problem, handler_problem
from betty_mcp.kit.registry import Registry, definition_parser, load_manifest, manifest_file, parse_version
from betty_mcp.kit.skillkit import SkillError, run, workspace


def handle(args: argparse.Namespace) -> dict[str, Any]:
    path = manifest_file(args.manifest_path, "skills")
    raw, manifest = load_manifest("skills", path)
    parse_version(manifest.version, subject=f"{path}: version")
    if (problem := handler_problem(path.parent, manifest.handler, manifest.name)) is not None:
        raise SkillError(f"{path}: entrypoints.0.handler: {problem}", code="handler_missing")
    warnings = []
    if (problem := folder_name_problem(manifest.name, path)) is not None:
        warnings.append(f"{path}: {problem}")
    result: dict[str, Any] = {
        "valid": True,
        "name": manifest.name,
        "version": manifest.version,
        "status": manifest.status,
        "manifest_path": str(path),
        "warnings": warnings,
        "registered": False,
        "action": "not_registered",
        "dry_run": args.dry_run,
    }
    if args.register:
        registration = Registry(workspace()).register("skills", raw, source=str(path), dry_run=args.dry_run)
        result.update(registration.as_dict(), registered=registration.written)
    return result


parser = definition_parser("skills")

if __name__ == "__main__":
    run(handle, parser)
