"""Serving the gateway with uvicorn, and the checks made before binding.

await serve_gateway(services, host="127.0.0.1", port=8787, token=None, ready=print)
"""

from __future__ import annotations

import logging

from betty_mcp.core.http_policy import fast_http, require_token_off_loopback, uvicorn_server
from betty_mcp.gateway.app import GatewayApp
from betty_mcp.services import Services

log = logging.getLogger(__name__)


def gateway_app(
    services: Services, *, host: str, port: int, token: str | None, allowed_hosts: list[str] | None = None
) -> GatewayApp:
    require_token_off_loopback(host, token, "the gateway")
    return GatewayApp(
        services.messages,
        host=host,
        port=port,
        token=token,
        allowed_hosts=allowed_hosts,
        on_close=services.aclose_llm,
    )


async def serve_gateway(
    services: Services,
    *,
    host: str,
    port: int,
    token: str | None,
    allowed_hosts: list[str] | None = None,
) -> None:
    """Serve until cancelled or signalled."""

    app = gateway_app(services, host=host, port=port, token=token, allowed_hosts=allowed_hosts)
    head_timeout = services.settings.limits.http_head_timeout_seconds
    server = uvicorn_server(
        app, host=host, port=port, head_timeout=head_timeout, fast=fast_http(), timeout_keep_alive=30
    )
    log.info("gateway: Anthropic Messages on http://%s:%d/v1/messages", host, port)
    await server.serve()
