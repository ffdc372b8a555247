"""Shared fixtures: a workspace, and real MCP clients talking to a real server process.

async with stdio_client(workspace, mode="legacy") as client:   # 2025-11-25 handshake
async with stdio_client(workspace, mode="auto") as client:     # lands on 2026-07-28
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.stdio import stdio_client as raw_stdio_client

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_SKILLS = ROOT / "tests" / "fixtures" / "skills"
TEST_DATA = ROOT / "tests" / "data"  # inside the repository; where each file comes from: its SOURCE.md
OPENAPI_DIR = TEST_DATA / "openapi"
ERAS = ["legacy", "auto"]  # 2025-11-25 handshake, and 2026-07-28 (what "auto" negotiates)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


def server_args(workspace: Path, *extra: str, fixtures: bool = True) -> list[str]:
    args = ["-m", "betty_mcp", "serve", "--workspace", str(workspace), "--log-level", "warning"]
    if fixtures:
        args += ["--skills-dir", str(FIXTURE_SKILLS)]
    return [*args, *extra]


@asynccontextmanager
async def stdio_client(
    workspace: Path,
    *extra: str,
    mode: str = "auto",
    fixtures: bool = True,
    env: dict[str, str] | None = None,
    **client_options: Any,
) -> AsyncIterator[Client]:
    """A real MCP client driving ``python -m betty_mcp serve`` over stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=server_args(workspace, *extra, fixtures=fixtures),
        cwd=str(workspace),
        env={**os.environ, **(env or {})},
    )
    errlog = client_options.pop("errlog", None)
    server = params if errlog is None else raw_stdio_client(params, errlog=errlog)
    async with Client(server, mode=mode, read_timeout_seconds=60, **client_options) as client:  # type: ignore[arg-type]
        yield client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(
    workspace: Path,
    *extra: str,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    fixtures: bool = True,
    stderr: Path | None = None,
) -> Iterator[str]:
    """``betty-mcp serve --http`` in a subprocess; yields its MCP URL once it accepts connections.
    ``stderr``: a file that gets the server's log (else it is piped and dropped)."""
    port = free_port()
    log = stderr.open("wb") if stderr is not None else subprocess.PIPE
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # tests only ever connect over loopback
    proc = subprocess.Popen(
        [
            sys.executable,
            *server_args(workspace, "--http", "--host", host, "--port", str(port), *extra, fixtures=fixtures),
        ],
        cwd=workspace,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                told = stderr.read_text() if stderr is not None else proc.stderr.read().decode()  # type: ignore[union-attr]
                raise RuntimeError(f"server exited: {told}")
            try:
                with socket.create_connection((local, port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("HTTP server did not start in 30 s")
        yield f"http://{local}:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if stderr is not None:
            log.close()  # type: ignore[union-attr]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database of this test's own (tests/postgres.py)."""
    from tests.postgres import scratch_database

    with scratch_database() as url:
        yield url
