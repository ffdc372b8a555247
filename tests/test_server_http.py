"""Streamable HTTP on 127.0.0.1: both eras, progress, and the Host/Origin/token guards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import ERAS, http_server, server_args

pytestmark = pytest.mark.anyio

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.parametrize("mode", ERAS)
async def test_http_lists_and_calls_tools_in_both_eras(workspace: Path, mode: str) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    with http_server(workspace) as url:
        async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
            assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"test_echo", "skills_list", "skill_run"} <= names
            ok = await client.call_tool("test_echo", {"message": "over http"})
            assert ok.structured_content["message"] == "over http"
            bad = await client.call_tool("test_echo", {"message": 5})
            assert bad.is_error and "argument 'message': 5 is not of type 'string'" in bad.content[0].text
            slow = await client.call_tool("test_sleep", {"seconds": 5.5}, progress_callback=on_progress)
            assert not slow.is_error
    assert messages, "progress notifications arrive over HTTP (SSE)"


async def test_http_requests_with_a_foreign_host_or_origin_are_refused(workspace: Path) -> None:
    with http_server(workspace) as url:
        async with httpx2.AsyncClient() as http:
            good = await http.post(url, json=INIT, headers=ACCEPT)
            assert good.status_code == 200
            rebinding = await http.post(url, json=INIT, headers={**ACCEPT, "host": "evil.example:80"})
            assert rebinding.status_code == 421
            cross_site = await http.post(url, json=INIT, headers={**ACCEPT, "origin": "http://evil.example"})
            assert cross_site.status_code == 403


async def test_http_token_is_required_when_configured(workspace: Path) -> None:
    token = "t0ken-for-tests-0123"
    with http_server(workspace, "--token", token) as url:
        async with httpx2.AsyncClient() as http:
            missing = await http.post(url, json=INIT, headers=ACCEPT)
            assert missing.status_code == 401 and token not in missing.text
            wrong = await http.post(url, json=INIT, headers={**ACCEPT, "authorization": "Bearer nope"})
            assert wrong.status_code == 401
        authed = httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"})
        async with authed, Client(streamable_http_client(url, http_client=authed)) as client:
            assert "test_echo" in {t.name for t in (await client.list_tools()).tools}


def test_a_non_loopback_bind_without_a_token_refuses_to_start(workspace: Path) -> None:
    proc = subprocess.run(
        [sys.executable, *server_args(workspace, "--http", "--host", "0.0.0.0", "--port", "1")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=workspace,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "pass --token or set $BETTY_MCP_TOKEN" in proc.stderr
    assert proc.stdout == ""


async def test_a_wildcard_bind_with_a_token_serves_only_with_it(workspace: Path) -> None:
    token = "another-t0ken-4567"
    with http_server(workspace, "--token", token, host="0.0.0.0") as url:
        async with httpx2.AsyncClient() as http:
            assert (await http.post(url, json=INIT, headers=ACCEPT)).status_code == 401
            authed = {**ACCEPT, "authorization": f"Bearer {token}"}
            assert (await http.post(url, json=INIT, headers=authed)).status_code == 200


def test_a_client_dripping_its_request_head_is_disconnected(workspace: Path) -> None:
    """A slow client (one header byte at a time) must not hold a connection forever."""
    import socket
    import time
    from urllib.parse import urlparse

    (workspace / "betty.yaml").write_text("limits:\n  http_head_timeout_seconds: 1\n")
    with http_server(workspace) as url:
        where = urlparse(url)
        with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
            started = time.monotonic()
            conn.sendall(b"POST /mcp HTTP/1.1\r\n")
            closed = False
            for byte in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 20:
                try:
                    conn.sendall(bytes([byte]))
                    if conn.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                    break
                time.sleep(0.25)
            assert closed, "the server kept a dripping connection open"
            assert time.monotonic() - started < 4
