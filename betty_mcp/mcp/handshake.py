"""Who the server says it is, and the answer to ``initialize`` given before the SDK is loaded.

Importing the SDK's server takes about half a second, and a host waits for the ``initialize``
answer before anything else. That answer depends only on the protocol version the client asks
for, so over stdio it is written as soon as the request arrives (``early_answer``); the SDK
then reads the same request, sets its session up from it, and its own answer is dropped. The
request is validated with the SDK's own model first, and anything else (a bad request, a
message that is not ``initialize``) is left to the SDK, so no client sees a difference.
"""

from __future__ import annotations

import json
from typing import Any

from betty_mcp import __version__

SERVER_NAME = "betty"  # the same on every instance: request state is sealed for this audience
SERVER_TITLE = "Betty MCP"
INSTRUCTIONS = (
    "Betty skills as tools. Each skill's tool is named after it with '.' replaced by '_' "
    "(api.validate -> api_validate). skills_list finds any skill; skill_run runs any skill by its Betty name."
)
# What BettyServer advertises (tests/test_handshake.py holds it to the SDK's own answer).
CAPABILITIES: dict[str, Any] = {
    "resources": {"listChanged": True, "subscribe": False},
    "tools": {"listChanged": True},
}


def initialize_result(requested: str) -> dict[str, Any]:
    """The ``initialize`` result for a client asking for protocol version ``requested``."""
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

    version = requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
    return {
        "capabilities": CAPABILITIES,
        "instructions": INSTRUCTIONS,
        "protocolVersion": version,
        "serverInfo": {"name": SERVER_NAME, "title": SERVER_TITLE, "version": __version__},
    }


def early_answer(line: bytes) -> tuple[str | int, bytes] | None:
    """(request id, response line) for a valid ``initialize`` request; None for anything else."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if (
        not isinstance(message, dict)
        or message.get("method") != "initialize"
        or message.get("jsonrpc") != "2.0"
    ):
        return None
    request_id = message.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        return None
    from mcp_types import InitializeRequestParams

    try:
        params = InitializeRequestParams.model_validate(message.get("params") or {}, by_name=False)
    except Exception:  # the SDK answers this one, with its own error
        return None
    answer = {"jsonrpc": "2.0", "id": request_id, "result": initialize_result(params.protocol_version)}
    return request_id, json.dumps(answer, separators=(",", ":")).encode() + b"\n"
