"""The Anthropic-compatible gateway: Claude Code (or any Anthropic client) through the ``llm_router``.

A front end like ``mcp/``: it calls the services and the LLM layer, never ``mcp/``.

    await serve_gateway(services, host="127.0.0.1", port=8787, token=None)
"""

from betty_mcp.gateway.app import GatewayApp, Security
from betty_mcp.gateway.server import serve_gateway

__all__ = ["GatewayApp", "Security", "serve_gateway"]
