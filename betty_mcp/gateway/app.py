"""The gateway's ASGI application: an Anthropic Messages endpoint in front of the ``llm_router``.

``POST /v1/messages`` (any query string; streaming SSE or one JSON answer), ``POST
/v1/messages/count_tokens`` and ``GET /health``. The same rules as ``serve --http``: loopback by
default; off loopback a token is required (``Authorization: Bearer T`` or ``x-api-key: T``); a
foreign ``Host`` gets 421 and a foreign ``Origin`` 403. Every refusal is an Anthropic-format error.

A plain ASGI callable, not a framework: the hot path is a handful of awaits.

    app = GatewayApp(messages_factory, host="127.0.0.1", port=8787, token=None)
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from betty_mcp.core.errors import BettyError
from betty_mcp.core.http_policy import HttpPolicy
from betty_mcp.llm.messages import GatewayRefusal, MessagesCall, MessagesService

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024  # images travel base64 in the body
JSON = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _error(error_type: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


class Security:
    """Host, Origin and token checks, as ``serve --http`` applies them."""

    def __init__(self, host: str, port: int, token: str | None, allowed_hosts: list[str]) -> None:
        self.token = token.encode() if token else None
        policy = HttpPolicy.for_bind(host, port, allowed_hosts)
        self.hosts, self.origins, self.check_host = policy.hosts, policy.origins, policy.check_host

    def refuse(self, headers: dict[bytes, bytes]) -> tuple[int, bytes] | None:
        """(status, body) when the request may not come in; None when it may."""
        if self.check_host:
            host = headers.get(b"host", b"").decode("latin-1")
            if not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts):
                return 421, _error("invalid_request_error", f"Host {host!r} is not accepted here")
            origin = headers.get(b"origin")
            if origin is not None:
                text = origin.decode("latin-1")
                if not any(fnmatch.fnmatchcase(text, pattern) for pattern in self.origins):
                    return 403, _error("permission_error", f"Origin {text!r} is not accepted here")
        if self.token is not None and not self.authorised(headers):
            return 401, _error("authentication_error", "missing or wrong gateway token")
        return None

    def authorised(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None
        bearer = headers.get(b"authorization", b"")
        key = headers.get(b"x-api-key", b"")
        return hmac.compare_digest(bearer, b"Bearer " + self.token) or hmac.compare_digest(key, self.token)

    def client_key(self, headers: dict[bytes, bytes]) -> str | None:
        """The client's own Anthropic key, if it sent one that is not the gateway's token."""
        key = headers.get(b"x-api-key")
        if key is None:
            bearer = headers.get(b"authorization", b"")
            key = bearer[7:] if bearer.startswith(b"Bearer ") else None
        if not key or (self.token is not None and hmac.compare_digest(key, self.token)):
            return None
        return key.decode("latin-1")


class GatewayApp:
    """ASGI: lifespan (the LLM layer is loaded before the first request) and the three endpoints."""

    def __init__(
        self,
        messages: Callable[[], Awaitable[MessagesService]],
        *,
        host: str,
        port: int,
        token: str | None,
        allowed_hosts: list[str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._factory = messages
        self._service: MessagesService | None = None
        self.security = Security(host, port, token, allowed_hosts or [])
        self._on_close = on_close

    async def service(self) -> MessagesService:
        if self._service is None:
            self._service = await self._factory()
        return self._service

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.service()
                except BettyError as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_close is not None:
                    await self._on_close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or [])
        refused = self.security.refuse(headers)
        if refused is not None:
            # Anthropic's SDKs (Claude Code's too) retry a 401 with back-off unless told not to.
            await _respond(send, refused[0], refused[1], [(b"x-should-retry", b"false")])
            return
        method, path = scope["method"], scope["path"].rstrip("/")
        if method == "GET" and path == "/health":
            await _respond(send, 200, b'{"status":"ok"}')
            return
        if method != "POST" or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            await _respond(send, 404, _error("not_found_error", f"no route {method} {scope['path']}"))
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, _error("request_too_large", "request body over 64 MiB"))
            return
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            await _respond(
                send, 400, _error("invalid_request_error", "the body must be a JSON object with messages")
            )
            return
        service = await self.service()
        if path.endswith("/count_tokens"):
            await _respond(
                send, 200, json.dumps({"input_tokens": await service.count_tokens(request)}).encode()
            )
            return
        call = MessagesCall(
            body=request,
            session_id=_header(headers, b"x-claude-code-session-id"),
            client_key=self.security.client_key(headers),
            beta=_header(headers, b"anthropic-beta"),
        )
        await self._messages(service, call, send)

    async def _messages(self, service: MessagesService, call: MessagesCall, send: Send) -> None:
        try:
            answer = await service.open(call)
        except GatewayRefusal as refusal:
            extra = [] if refusal.retry else [(b"x-should-retry", b"false")]
            await _respond(send, refusal.status, json.dumps(refusal.body()).encode(), extra)
            return
        routed = [
            (b"x-betty-model", answer.spec.id.encode()),
            (b"x-betty-request-class", answer.classification.request_class.encode()),
        ]
        if answer.hops:
            routed.append((b"x-betty-fallbacks", str(len(answer.hops)).encode()))
        if answer.dropped:
            routed.append((b"x-betty-dropped", ",".join(answer.dropped).encode()))
        try:
            if answer.message is not None:
                await _respond(send, 200, json.dumps(answer.message).encode(), routed)
                return
            await send({"type": "http.response.start", "status": 200, "headers": [*SSE_HEADERS, *routed]})
            async with aclosing(answer.sse()) as chunks:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            answer.account()  # after the last byte: the ledger write is not on the client's clock


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value else None


async def _read_body(receive: Receive) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            return b"".join(parts)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [*JSON, *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
