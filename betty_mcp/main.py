"""The ``betty-mcp`` entry point. ``serve`` (and no command at all), what MCP hosts launch, is
parsed here with argparse so that start-up does not pay for the CLI framework; every other
command is cli.py's.

    betty-mcp serve --workspace . --skills-dir ./skills
    betty-mcp serve --http --port 8765
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from betty_mcp.config import TOKEN_ENV

SERVE_FIRST = {"serve"}


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betty-mcp serve", description="Serve MCP: stdio by default, or streamable HTTP with --http."
    )
    add = parser.add_argument
    add(
        "--config",
        type=Path,
        help="betty.yaml (else $BETTY_CONFIG, ./betty.yaml, ~/.config/betty-mcp/betty.yaml)",
    )
    add("--workspace", type=Path, help="folder skills work in (default: the current one)")
    add("--skills-dir", type=Path, action="append", default=[], help="extra skills folder (repeatable)")
    add("--agents-dir", type=Path, action="append", default=[], help="extra agents folder (repeatable)")
    add("--betty-home", type=Path, help="serve an existing Betty checkout as it is")
    add("--no-bundled", action="store_true", help="leave out the skills and agents bundled with betty-mcp")
    add("--include", action="append", default=[], help="glob of skills that get their own tool (repeatable)")
    add("--exclude", action="append", default=[], help="glob of skills without their own tool (repeatable)")
    add("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    add("--host", default="127.0.0.1", help="HTTP bind address; anything but loopback needs a token")
    add("--port", type=int, default=8765, help="HTTP port (default 8765)")
    add("--token", help=f"bearer token required over HTTP (or ${TOKEN_ENV})")
    add(
        "--allowed-host",
        action="append",
        default=[],
        help="extra Host accepted over HTTP, e.g. mcp.example.com:443",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="stderr log level")
    return parser


def serve(argv: list[str]) -> None:
    import anyio

    from betty_mcp.app import BettyApp
    from betty_mcp.config import load_settings
    from betty_mcp.errors import BettyError
    from betty_mcp.secrets import log_to_stderr

    args = serve_parser().parse_args(argv)
    log_to_stderr(args.log_level)
    try:
        settings = load_settings(
            args.config,
            workspace=args.workspace,
            skills_dirs=args.skills_dir,
            agents_dirs=args.agents_dir,
            betty_home=args.betty_home,
            bundled=False if args.no_bundled else None,
            include=args.include,
            exclude=args.exclude,
        )
        app = BettyApp(settings)
        if args.http:
            from betty_mcp.transports import serve_http

            token = args.token or os.environ.get(TOKEN_ENV)
            anyio.run(
                lambda: serve_http(
                    app, host=args.host, port=args.port, token=token, allowed_hosts=args.allowed_host
                )
            )
        else:
            from betty_mcp.transports import serve_stdio

            anyio.run(serve_stdio, app)
    except BettyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in SERVE_FIRST or (argv[0].startswith("--") and argv[0] not in ("--help", "-h")):
        serve(argv[1:] if argv and argv[0] in SERVE_FIRST else argv)
        return
    from betty_mcp.cli import app

    app(args=argv, prog_name="betty-mcp")
