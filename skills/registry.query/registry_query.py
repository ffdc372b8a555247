#!/usr/bin/env python3
"""registry.query: search the workspace registry by name, tag, status or capability.

Matching is fuzzy by default (substring or difflib similarity, scored 0..1, best first);
``--no-fuzzy`` keeps exact (case-insensitive) matches only. Every given filter must match.
"""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.core.rules import STATUSES
from betty_mcp.kit.registry import KINDS, Registry
from betty_mcp.kit.skillkit import SkillError, run, workspace
from betty_mcp.kit.skillkit import parser as make_parser


def handle(args: argparse.Namespace) -> dict[str, Any]:
    if args.limit < 1:
        raise SkillError(f"limit must be at least 1, got {args.limit}")
    registry = Registry(workspace())
    results = registry.query(
        args.kind,
        name=args.name,
        tag=args.tag,
        status=args.status,
        capability=args.capability,
        fuzzy=args.fuzzy,
        limit=args.limit,
    )
    return {
        "results": results,
        "count": len(results),
        "kind": args.kind,
        "registry_path": str(registry.path(args.kind)),
    }


parser = make_parser("Query the workspace registry of skills or agents.")
parser.add_argument("--kind", choices=KINDS, default="skills")
parser.add_argument("--name", help="the name (fuzzy by default)")
parser.add_argument("--tag", help="a tag the entry carries")
parser.add_argument("--status", choices=STATUSES)
parser.add_argument("--capability", help="what it can do (agents' capabilities, skills' tags/description)")
parser.add_argument("--fuzzy", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument("--limit", type=int, default=20)

if __name__ == "__main__":
    run(handle, parser)
