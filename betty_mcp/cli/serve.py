"""``betty-mcp serve``, what MCP hosts launch: parsed with argparse so that start-up does not pay for
the CLI framework.

    betty-mcp serve --workspace . --skills-dir ./skills
    betty-mcp serve --http --port 8765
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from betty_mcp.core.config import TOKEN_ENV

if TYPE_CHECKING:
    from betty_mcp.core.config import Settings

# Where skills and agents come from: the options ``serve`` and every catalog command share.
SOURCE_HELP = {
    "config": "betty.yaml to use (else $BETTY_CONFIG, ./betty.yaml, ~/.config/betty-mcp/betty.yaml)",
    "workspace": "folder skills work in (default: the current one)",
    "skills-dir": "extra skills folder (repeatable)",
    "agents-dir": "extra agents folder (repeatable)",
    "betty-home": "serve an existing Betty checkout as it is",
    "no-bundled": "leave out the skills and agents bundled with betty-mcp",
}


@dataclass(frozen=True)
class Sources:
    """Where skills and agents come from: the options ``serve`` and every catalog command share."""

    config: Path | None = None
    workspace: Path | None = None
    skills_dir: list[Path] | None = None
    agents_dir: list[Path] | None = None
    betty_home: Path | None = None
    no_bundled: bool = False

    def settings(self, **more: Any) -> Settings:
        """betty.yaml with these flags on top (ConfigError when either is wrong)."""
        from betty_mcp.core.config import load_settings

        return load_settings(
            self.config,
            workspace=self.workspace,
            skills_dirs=self.skills_dir,
            agents_dirs=self.agents_dir,
            betty_home=self.betty_home,
            bundled=False if self.no_bundled else None,
            **more,
        )


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betty-mcp serve", description="Serve MCP: stdio by default, or streamable HTTP with --http."
    )
    add = parser.add_argument
    for flag in ("config", "workspace", "betty-home"):
        add(f"--{flag}", type=Path, help=SOURCE_HELP[flag])
    for flag in ("skills-dir", "agents-dir"):
        add(f"--{flag}", type=Path, action="append", default=[], help=SOURCE_HELP[flag])
    add("--no-bundled", action="store_true", help=SOURCE_HELP["no-bundled"])
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
    add(
        "--verbose",
        action="store_true",
        help="log LiteLLM's and its HTTP client's lines too, at --log-level (else only their warnings)",
    )
    return parser


def serve(argv: list[str]) -> None:
    import gc

    # Start-up makes hundreds of thousands of objects that live as long as the server (the SDK's
    # models, the catalog, LiteLLM's modules); automatic collections would scan them again and again
    # (measured: 500 skills cost +190 ms of CPU to the first tools/list with them, +70 ms without).
    # Collection resumes, with those objects frozen, after the warm-up (transports._end_start_up).
    gc.disable()
    import anyio

    from betty_mcp.core.errors import BettyError
    from betty_mcp.core.secrets import log_to_stderr
    from betty_mcp.services import Services

    args = serve_parser().parse_args(argv)
    log_to_stderr(args.log_level, verbose=args.verbose)
    try:
        sources = Sources(
            args.config, args.workspace, args.skills_dir, args.agents_dir, args.betty_home, args.no_bundled
        )
        settings = sources.settings(include=args.include, exclude=args.exclude)
        services = Services(settings)
        if args.http:
            from betty_mcp.mcp.transports import serve_http

            token = args.token or os.environ.get(TOKEN_ENV)
            anyio.run(
                lambda: serve_http(
                    services, host=args.host, port=args.port, token=token, allowed_hosts=args.allowed_host
                )
            )
        else:
            from betty_mcp.mcp.stdio import answer_initialize_early

            early = answer_initialize_early()  # before loading the SDK: hosts wait for this answer
            from betty_mcp.mcp.transports import serve_stdio

            anyio.run(serve_stdio, services, early)
    except BettyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
    _exit_now()


def _exit_now() -> None:
    """Leave at once: everything the server started is stopped by now (zygote, captures, runs), so the
    interpreter's teardown (a few hundred ms with LiteLLM loaded) and third-party exit hooks that
    print (LiteLLM's) are skipped. Hosts wait for the process to end before they go on."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
