#!/usr/bin/env python3
"""workflow.validate: check a Betty workflow file against the skill catalog, without running it."""

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.kit.skillkit import parser as make_parser
from betty_mcp.kit.skillkit import run

parser = make_parser("Check a Betty workflow: YAML, fields, skills, arguments and step references.")
parser.add_argument("workflow_path", help="the workflow file, relative to the workspace")


def handle(args: argparse.Namespace) -> dict[str, Any]:
    from betty_mcp.core.catalog import load_catalog
    from betty_mcp.core.config import settings_from_env
    from betty_mcp.kit.workflows import check_workflow

    settings = settings_from_env()
    report = check_workflow(args.workflow_path, load_catalog(settings), settings)
    payload = report.payload()
    return payload if not report.errors else {"ok": False, **payload}


if __name__ == "__main__":
    run(handle, parser)
