"""Serving a ``BettyServer`` over stdio or streamable HTTP, with hot reload alongside.

HTTP binds loopback by default with DNS-rebinding (Host/Origin) protection. Any other bind needs
callers to be known: a bearer token (``--token`` or ``$BETTY_MCP_TOKEN``), users (``betty-mcp users
add``) or OAuth (``auth:`` in betty.yaml); with any of them, requests without a valid token get 401
(``mcp/auth.py``). Over stdio the caller is the local user.
"""

from __future__ import annotations

import gc
import json
import logging
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings

from betty_mcp.core.http_policy import HttpPolicy, fast_http, require_token_off_loopback, uvicorn_server
from betty_mcp.mcp.bus import SharedSubscriptionBus
from betty_mcp.mcp.reload import keep_current
from betty_mcp.mcp.server import BettyServer
from betty_mcp.mcp.stdio import EarlyStart, claim_stdio
from betty_mcp.mcp.tools.registry import ToolRegistry
from betty_mcp.services import Services

if TYPE_CHECKING:
    from betty_mcp.mcp.auth import Authenticator

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
WARM_UP_IDLE_SECONDS = 2.0
QUEUE_RETRY_SECONDS = 5.0


def build_server(services: Services) -> BettyServer:
    return BettyServer(services, ToolRegistry(services))


async def _serve_with_reload(server: BettyServer, serve: Any) -> None:
    services = server.services
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            services.serve_runs(tg)  # agent runs live here, beyond the request that started them
            if isinstance(server.bus, SharedSubscriptionBus):
                tg.start_soon(server.bus.run)  # change notifications from every instance
            tg.start_soon(keep_current, server.tools, server.notify_changed, stop, server.first_request)
            tg.start_soon(_warm_up_when_served, services, server.first_request)
            if services.settings.database and services.settings.limits.run_workers:
                tg.start_soon(_work_queue_when_served, services, server.first_request)
            await serve()
            stop.set()  # the watcher's thread ends within a step
            services.close()  # captures and the zygote end now, not after the task group's wait
            tg.cancel_scope.cancel()
    finally:
        services.close()
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await services.aclose()  # what the store still has queued (ledger rows, traces)


async def _until_served(started: anyio.Event) -> None:
    """Until the client's first request, or WARM_UP_IDLE_SECONDS without one."""
    with anyio.move_on_after(WARM_UP_IDLE_SECONDS):
        await started.wait()


async def _warm_up_when_served(services: Services, started: anyio.Event) -> None:
    """The one-time costs of first calls (the zygote, LiteLLM), paid once the client is being served:
    after its first request, or WARM_UP_IDLE_SECONDS without one."""
    await _until_served(started)
    try:
        await services.warm_up()
    except Exception:  # only first calls are slower for it
        log.exception("warming up failed; the first calls will pay the start-up costs")
    finally:
        _end_start_up()


async def _work_queue_when_served(services: Services, started: anyio.Event) -> None:
    """Take queued runs (shared database) once the client is being served, like the warm-up."""
    await _until_served(started)
    while True:
        try:
            await services.work_queue(services.settings.limits.run_workers)
        except Exception as exc:  # the database went away, say: serving goes on, and so does the queue
            log.error("taking queued runs stopped (%s); again in %gs", exc, QUEUE_RETRY_SECONDS)
        await anyio.sleep(QUEUE_RETRY_SECONDS)


def _end_start_up() -> None:
    """Turn automatic garbage collection back on (``serve`` turned it off), with what start-up and the
    warm-up made frozen: it lives as long as the server, and full collections that scanned it would
    stop the event loop for ~300 ms each (LiteLLM's modules). Not collected first, for the same
    reason: the few cycles left unreachable by then (~1,200 objects, measured) stay."""
    gc.freeze()
    gc.enable()


async def serve_stdio(services: Services, early: EarlyStart | None = None) -> None:
    server = build_server(services)

    async def serve() -> None:
        with claim_stdio(early) as (stdin, stdout):
            async with stdio_server(stdin, stdout) as (read, write):
                await server.run(read, write, server.create_initialization_options())

    await _serve_with_reload(server, serve)


def security_settings(host: str, port: int, allowed_hosts: list[str]) -> TransportSecuritySettings:
    policy = HttpPolicy.for_bind(host, port, allowed_hosts)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=policy.check_host,
        allowed_hosts=list(policy.hosts),
        allowed_origins=list(policy.origins),
    )


class RequestIdCheck:
    """ASGI middleware: a request whose id is neither a string nor an integer gets -32600 (the SDK would
    take it for a notification and answer 202, leaving the client waiting for a response)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more and sum(map(len, chunks)) <= MAX_CHECKED_BODY:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if not more and _bad_request_id(body):
            await _respond(
                send, 400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": BAD_ID}}
            )
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": more}
            return await receive()

        await self.app(scope, replay, send)


MAX_CHECKED_BODY = 4 * 1024 * 1024  # the SDK's own cap: past it, it answers 413 itself
BAD_ID = "Invalid Request: an id must be a string or an integer"


def _bad_request_id(body: bytes) -> bool:
    if b'"id"' not in body:
        return False
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(message, dict) or "method" not in message or "id" not in message:
        return False
    request_id = message["id"]
    return isinstance(request_id, bool) or not isinstance(request_id, str | int)


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    """A JSON answer made here, before the SDK sees the request."""
    start = {"type": "http.response.start", "status": status}
    await send({**start, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def authenticator(services: Services, token: str | None) -> Authenticator | None:
    """Who may call over HTTP, or None when anyone who reaches the port may (loopback, nothing set up):
    the shared token, the users of the state database (the store: SQLite or PostgreSQL), and OAuth
    tokens when betty.yaml has ``auth:``. Decided at start-up: users added to a server started open
    count from its next start."""
    from betty_mcp.llm.users import Users
    from betty_mcp.mcp.auth import Authenticator

    settings = services.settings
    users = Users(services.store)
    has_users = await users.any_active()
    jwt = None
    if settings.auth is not None:
        from betty_mcp.core.oauth import JwtVerifier

        jwt = JwtVerifier(settings.auth, settings.roles)
    if not (token or has_users or jwt):
        log.info("HTTP: no token, users or auth: configured; loopback callers act as the local user")
        return None
    return Authenticator(token, users, jwt)


async def http_app(
    server: BettyServer, *, host: str, port: int, token: str | None, allowed_hosts: list[str]
) -> Any:
    from betty_mcp.mcp.auth import BearerGate, metadata_routes

    gate = await authenticator(server.services, token)
    if gate is None:
        require_token_off_loopback(host, None, "the server")
    auth = server.services.settings.auth
    routes, metadata_url = metadata_routes(auth) if auth else ([], None)
    asgi = RequestIdCheck(
        server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=security_settings(host, port, allowed_hosts),
            host=host,
            custom_starlette_routes=routes,
        )
    )
    if gate is None:
        return asgi
    scopes = auth.required_scopes if auth else []
    return BearerGate(asgi, gate, metadata_url=metadata_url, scopes=scopes)


async def serve_http(
    services: Services, *, host: str, port: int, token: str | None, allowed_hosts: list[str]
) -> None:

    server = build_server(services)
    asgi = await http_app(server, host=host, port=port, token=token, allowed_hosts=allowed_hosts)
    head_timeout = services.settings.limits.http_head_timeout_seconds
    http = uvicorn_server(asgi, host=host, port=port, head_timeout=head_timeout, fast=fast_http())
    log.info("serving MCP on http://%s:%d%s", host, port, MCP_PATH)
    await _serve_with_reload(server, http.serve)
