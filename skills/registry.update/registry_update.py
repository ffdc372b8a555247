#!/usr/bin/env python3
"""registry.update: add or update one registry entry from a skill.yaml or agent.yaml.

The kind comes from the file name (skill.yaml, agent.yaml) or the ``kind`` input. The manifest
is validated with the loader's models first; the registry refuses a different manifest under an
active registered version, a downgrade and a non-semantic version.
"""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.kit.registry import KINDS, Registry, kind_of, load_manifest
from betty_mcp.kit.skillkit import SkillError, run, workspace, workspace_path
from betty_mcp.kit.skillkit import parser as make_parser


def handle(args: argparse.Namespace) -> dict[str, Any]:
    path = workspace_path(args.manifest_path, must_exist=True, kind="manifest_path")
    if path.is_dir():
        raise SkillError(
            f"manifest_path '{args.manifest_path}' is a folder; give its skill.yaml or agent.yaml",
            code="not_a_file",
        )
    kind = kind_of(path, args.kind)
    raw, manifest = load_manifest(kind, path)
    registration = Registry(workspace()).register(kind, raw, source=str(path), dry_run=args.dry_run)
    return {
        **registration.as_dict(),
        "status": manifest.status,
        "manifest_path": str(path),
        "dry_run": args.dry_run,
    }


parser = make_parser("Register or update a skill or agent in the workspace registry.")
parser.add_argument("manifest_path", help="a skill.yaml or agent.yaml")
parser.add_argument("--kind", choices=KINDS, help="skills or agents (default: from the file name)")
parser.add_argument("--dry_run", action="store_true", help="report what would happen, write nothing")

if __name__ == "__main__":
    run(handle, parser)
