"""Serving a ``BettyServer`` over stdio or streamable HTTP, with hot reload alongside.

HTTP binds loopback by default with DNS-rebinding (Host/Origin) protection. Any other bind
needs a bearer token (``--token`` or ``$BETTY_MCP_TOKEN``); requests without it get 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from typing import Any

import anyio
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from betty_mcp.core.errors import ConfigError
from betty_mcp.mcp.reload import keep_current
from betty_mcp.mcp.server import BettyServer
from betty_mcp.mcp.stdio import claim_stdio
from betty_mcp.mcp.tools.registry import ToolRegistry
from betty_mcp.services import Services

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_server(services: Services) -> BettyServer:
    return BettyServer(services, ToolRegistry(services))


async def _serve_with_reload(server: BettyServer, serve: Any) -> None:
    services = server.services
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            services.serve_runs(tg)  # agent runs live here, beyond the request that started them
            tg.start_soon(keep_current, server.tools, server.notify_changed, stop)
            await serve()
            stop.set()  # the watcher's thread ends within a step
            services.close()  # captures and the zygote end now, not after the task group's wait
            tg.cancel_scope.cancel()
    finally:
        services.close()


async def serve_stdio(services: Services) -> None:
    server = build_server(services)

    async def serve() -> None:
        with claim_stdio() as (stdin, stdout):
            async with stdio_server(stdin, stdout) as (read, write):
                await server.run(read, write, server.create_initialization_options())

    await _serve_with_reload(server, serve)


class BearerAuth:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = json.dumps(
                    {"error": "unauthorized", "error_description": "missing or wrong bearer token"}
                )
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="betty-mcp"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body.encode()})
                return
        await self.app(scope, receive, send)


def security_settings(host: str, port: int, allowed_hosts: list[str]) -> TransportSecuritySettings:
    hosts = [*LOOPBACK_HOSTS, *allowed_hosts]
    origins = [
        *LOOPBACK_ORIGINS,
        *(f"http://{h}" for h in allowed_hosts),
        *(f"https://{h}" for h in allowed_hosts),
    ]
    if host not in ("0.0.0.0", "::") and not is_loopback(host):
        hosts.append(f"{host}:{port}")
        origins += [f"http://{host}:{port}", f"https://{host}:{port}"]
    wildcard_open = host in ("0.0.0.0", "::") and not allowed_hosts
    if wildcard_open:
        log.warning(
            "bound to %s with no --allowed-host: Host/Origin checks are off; the bearer token guards", host
        )
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=not wildcard_open, allowed_hosts=hosts, allowed_origins=origins
    )


def http_app(
    server: BettyServer, *, host: str, port: int, token: str | None, allowed_hosts: list[str]
) -> Any:
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"binding to {host} exposes the server beyond this machine: pass --token or set $BETTY_MCP_TOKEN"
        )
    asgi = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        transport_security=security_settings(host, port, allowed_hosts),
        host=host,
    )
    return BearerAuth(asgi, token) if token else asgi


def head_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol, closing connections whose request head has not arrived in ``seconds``.

    uvicorn's own keep-alive timer is reset by every byte, so a client dripping its headers one byte
    at a time would hold a connection (and a file descriptor) forever.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadDeadline(H11Protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()

        def _await_head(self) -> None:
            waiting_on = self.cycle  # None, or the finished one: a new request replaces it

            def too_late() -> None:
                if self.cycle is waiting_on and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, too_late)

    return HeadDeadline


async def serve_http(
    services: Services, *, host: str, port: int, token: str | None, allowed_hosts: list[str]
) -> None:
    import uvicorn

    server = build_server(services)
    asgi = http_app(server, host=host, port=port, token=token, allowed_hosts=allowed_hosts)
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        http=head_deadline_protocol(services.settings.limits.http_head_timeout_seconds),
    )
    log.info("serving MCP on http://%s:%d%s", host, port, MCP_PATH)
    await _serve_with_reload(server, uvicorn.Server(config).serve)
