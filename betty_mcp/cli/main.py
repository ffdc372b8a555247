"""The ``betty-mcp`` entry point: ``serve`` (and no command at all) goes to serve.py without loading
the CLI framework; every other command is commands.py's.
"""

from __future__ import annotations

import sys

SERVE_FIRST = {"serve"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in SERVE_FIRST or (argv[0].startswith("--") and argv[0] not in ("--help", "-h")):
        from betty_mcp.cli.serve import serve

        serve(argv[1:] if argv and argv[0] in SERVE_FIRST else argv)
        return
    from betty_mcp.cli.commands import app

    app(args=argv, prog_name="betty-mcp")
