#!/usr/bin/env python3
"""skill.define: validate a skill.yaml with the catalog loader's models, then register it.

Beyond the model: the handler file must exist beside the manifest and the version must be
semantic; a name that differs from its folder is a warning. Registration goes through
``betty_mcp.registry`` (refusing overwrites of active versions and downgrades).
"""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.registry import Registry, load_manifest, manifest_file, parse_version
from betty_mcp.skillkit import SkillError, run, workspace
from betty_mcp.skillkit import parser as make_parser


def handle(args: argparse.Namespace) -> dict[str, Any]:
    path = manifest_file(args.manifest_path, "skills")
    raw, manifest = load_manifest("skills", path)
    parse_version(manifest.version, subject=f"{path}: version")
    if not (path.parent / manifest.handler).is_file():
        raise SkillError(
            f"{path}: entrypoints.0.handler: handler '{manifest.handler}' not found in {path.parent}",
            code="handler_missing",
        )
    warnings = []
    if manifest.name != path.parent.name:
        warnings.append(f"{path}: name: '{manifest.name}' differs from its folder '{path.parent.name}'")
    result: dict[str, Any] = {
        "valid": True, "name": manifest.name, "version": manifest.version, "status": manifest.status,
        "manifest_path": str(path), "warnings": warnings, "registered": False, "action": "not_registered",
        "dry_run": args.dry_run,
    }
    if args.register:
        registration = Registry(workspace()).register("skills", raw, source=str(path), dry_run=args.dry_run)
        result.update(registration.as_dict(), registered=registration.written)
    return result


parser = make_parser("Validate a skill.yaml and register it in registry/skills.json.")
parser.add_argument("manifest_path", help="the skill.yaml (or its folder)")
parser.add_argument("--register", action=argparse.BooleanOptionalAction, default=True,
                    help="register the skill after validating it (default: yes)")
parser.add_argument("--dry_run", action="store_true", help="report what registering would do, write nothing")

if __name__ == "__main__":
    run(handle, parser)
