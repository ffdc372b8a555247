"""``betty-mcp gateway`` and ``betty-mcp claude``: the gateway alone, or Claude Code run through it.

betty-mcp gateway --port 8787
betty-mcp claude -p "review openapi.yaml"     # gateway on a free port, betty's MCP server, claude
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from betty_mcp.core.config import TOKEN_ENV, load_settings
from betty_mcp.core.errors import BettyError
from betty_mcp.core.secrets import log_to_stderr


def run_gateway(
    *,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: list[str],
    config: Path | None,
    workspace: Path | None,
    log_level: str,
    verbose: bool,
) -> None:
    import anyio

    from betty_mcp.gateway.server import serve_gateway
    from betty_mcp.services import Services

    log_to_stderr("debug" if verbose else log_level, verbose=verbose)
    try:
        services = Services(load_settings(config, workspace=workspace))
        anyio.run(
            lambda: serve_gateway(
                services,
                host=host,
                port=port,
                token=token or os.environ.get(TOKEN_ENV),
                allowed_hosts=allowed_hosts,
            ),
            backend_options={"use_uvloop": _has_uvloop()},
        )
    except BettyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


def _has_uvloop() -> bool:
    """uvloop when installed (``betty-mcp[gateway]``): a faster event loop for the gateway's hot path."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


CLAUDE_HELP = """usage: betty-mcp claude [--claude PATH] [--no-mcp] [--config FILE] [--workspace DIR]
                        [--] [CLAUDE ARGS...]

Run Claude Code with its model requests going through betty's gateway (the llm_router block):
starts the gateway on a free loopback port with a per-session token, registers betty's MCP server
(unless --no-mcp), runs claude with your arguments, and stops the gateway when claude exits.
The gateway's log goes to <workspace>/.betty-mcp/gateway.log.
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_args(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Our leading options, then everything for claude (after ``--`` or the first other argument)."""
    ours: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return ours, argv[i + 1 :]
        if arg == "--no-mcp":
            ours["no_mcp"] = True
        elif arg in ("--claude", "--config", "--workspace") and i + 1 < len(argv):
            ours[arg[2:]] = argv[i + 1]
            i += 1
        elif arg in ("--betty-help",):
            ours["help"] = True
        else:
            return ours, argv[i:]
        i += 1
    return ours, []


def run_claude(argv: list[str]) -> int:
    """``betty-mcp claude``: the gateway, betty's MCP server and Claude Code, for one session."""
    import secrets
    import shutil
    import subprocess
    import tempfile
    import time
    import urllib.request

    ours, claude_args = _split_args(argv)
    if ours.get("help"):
        print(CLAUDE_HELP)
        return 0
    claude = str(ours.get("claude") or shutil.which("claude") or "")
    if not claude or not Path(claude).exists():
        print("error: claude is not on PATH; install Claude Code or pass --claude PATH", file=sys.stderr)
        return 2
    workspace = Path(str(ours.get("workspace") or ".")).resolve()
    config = ["--config", str(Path(str(ours["config"])).resolve())] if ours.get("config") else []
    token = secrets.token_urlsafe(32)
    port = _free_port()
    log_path = workspace / ".betty-mcp" / "gateway.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    gateway_env = {**os.environ, TOKEN_ENV: token}
    command = [
        sys.executable,
        "-m",
        "betty_mcp",
        "gateway",
        "--port",
        str(port),
        "--workspace",
        str(workspace),
    ]
    with log_path.open("a") as log, tempfile.TemporaryDirectory(prefix="betty-claude-") as scratch:
        gateway = subprocess.Popen(
            [*command, *config], env=gateway_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                if gateway.poll() is not None:
                    print(
                        f"error: the gateway exited with {gateway.returncode}; see {log_path}",
                        file=sys.stderr,
                    )
                    return 2
                try:
                    request = urllib.request.Request(url + "/health", headers={"x-api-key": token})
                    with urllib.request.urlopen(request, timeout=1) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    print(f"error: the gateway did not start in 60 s; see {log_path}", file=sys.stderr)
                    return 2
                time.sleep(0.1)
            extra: list[str] = []
            if not ours.get("no_mcp"):
                mcp = Path(scratch) / "betty-mcp.json"
                server = {
                    "command": sys.executable,
                    "args": ["-m", "betty_mcp", "serve", "--workspace", str(workspace), *config],
                }
                mcp.write_text(json.dumps({"mcpServers": {"betty": server}}))
                extra = ["--mcp-config", str(mcp)]
            env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_AUTH_TOKEN", TOKEN_ENV)}
            env.update(ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY=token)
            # Claude Code 2.1 connects MCP servers in the background unless told otherwise: a
            # print-mode first turn could then find betty's tools "still connecting".
            env.setdefault("MCP_CONNECTION_NONBLOCKING", "0")
            return subprocess.call([claude, *extra, *claude_args], env=env, cwd=workspace)
        finally:
            gateway.terminate()
            try:
                gateway.wait(timeout=10)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
