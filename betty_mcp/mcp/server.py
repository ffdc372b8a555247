"""The MCP server: the low-level SDK ``Server`` wired to the services and a tool registry.

Serves both protocol eras on one server: the 2025-11-25 handshake (change notifications
pushed to each connected session) and 2026-07-28 (``subscriptions/listen``). Handler
exceptions never reach the wire as raw text: tool failures become ``isError`` results,
protocol misuse a JSON-RPC error with a message a person can act on.

Every handler acts as the request's caller (``core.identity``): over HTTP the one the bearer gate
put in the request's scope (``mcp/auth.py``), over stdio the local user. Each caller sees only the
tools of their role; a tool outside it is answered exactly like a tool that does not exist.

    server = BettyServer(services, ToolRegistry(services))
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    ResourcesListChanged,
    ToolsListChanged,
)
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from betty_mcp import __version__
from betty_mcp.core.config import REQUEST_STATE_KEY_ENV
from betty_mcp.core.identity import SCOPE_KEY, Caller, acting_as, current_caller
from betty_mcp.core.secrets import known_secrets, scrub, scrub_data
from betty_mcp.mcp.bus import SharedSubscriptionBus
from betty_mcp.mcp.handshake import INSTRUCTIONS, SERVER_NAME, SERVER_TITLE
from betty_mcp.mcp.resources import Resources
from betty_mcp.mcp.tools import CallContext, Tool, ToolResult
from betty_mcp.mcp.tools.registry import ToolRegistry
from betty_mcp.services import Services

log = logging.getLogger(__name__)


class BettyServer(Server[Any]):
    """A low-level server that advertises list-changed notifications in the handshake era too.

    With a shared database (``database_url``), change notifications cross instances
    (``SharedSubscriptionBus``); with ``$BETTY_MCP_REQUEST_STATE_KEY``, request state sealed by one
    instance is accepted by every other: a 2026-07-28 client may reach any instance."""

    def __init__(self, services: Services, tools: ToolRegistry) -> None:
        self.services = services
        self.tools = tools
        self.bus: InMemorySubscriptionBus | SharedSubscriptionBus = InMemorySubscriptionBus()
        if services.settings.database:  # checked without importing the store when unset
            shared = services.store.shared_runs()
            if shared is not None:
                self.bus = SharedSubscriptionBus(shared)
        # Set at the first request a client makes after the handshake: background work waits for it.
        self.first_request = anyio.Event()
        self.resources = Resources(services)
        self._legacy_sessions: dict[int, Any] = {}
        super().__init__(
            SERVER_NAME,
            version=__version__,
            title=SERVER_TITLE,
            instructions=INSTRUCTIONS,
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_list_resource_templates=self._list_resource_templates,
            on_read_resource=self._read_resource,
            on_subscriptions_listen=ListenHandler(self.bus),
        )
        self.middleware.append(RequestStateBoundary(request_state_security(), default_audience=SERVER_NAME))

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True, resources_changed=True),
            experimental_capabilities,
            extensions,
        )

    # -- change notifications -------------------------------------------------------------

    def _remember(self, ctx: ServerRequestContext[Any]) -> None:
        """Keep one handshake-era session per connection, to notify it outside any request."""
        self.first_request.set()
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS or ctx.session.client_params is None:
            return
        self._legacy_sessions.setdefault(id(ctx.session.client_params), ctx.session)

    async def notify_changed(self) -> None:
        await self.bus.publish(ToolsListChanged())
        await self.bus.publish(ResourcesListChanged())
        for key, session in list(self._legacy_sessions.items()):
            try:
                await session.send_tool_list_changed()
                await session.send_resource_list_changed()
            except Exception:  # the client is gone: forget it
                self._legacy_sessions.pop(key, None)

    # -- tools ----------------------------------------------------------------------------

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        """Called in the HTTP request's own task (2026-07-28), where the gate set the caller."""
        tool = self.tools.get(name)
        return tool.spec.input_schema if tool and self.tools.allowed(tool) else None

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListToolsResult:
        self._remember(ctx)
        with acting_as(request_caller(ctx)):
            return types.ListToolsResult(
                tools=[_mcp_tool(t) for t in self.tools.list() if self.tools.allowed(t)]
            )

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        self._remember(ctx)
        with acting_as(request_caller(ctx)):
            return await self._call_tool_as_caller(ctx, params)

    async def _call_tool_as_caller(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = self.tools.get(params.name)
        tool = await self.tools.ready(params.name) if tool and self.tools.allowed(tool) else None
        if tool is None:  # outside the caller's role or nonexistent: the same answer, so nothing leaks
            raise MCPError(
                types.INVALID_PARAMS,
                f"Unknown tool '{params.name}'. List tools with tools/list, or find skills with skills_list.",
            )
        arguments = params.arguments or {}
        problems = self.services.validator.problems(tool.spec.input_schema, arguments)
        if problems:
            return _mcp_result(ToolResult.error(f"invalid arguments for {params.name}: {problems}"))

        async def report(progress: float, message: str) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await ctx.session.report_progress(progress, None, scrub_data(message, known_secrets()))

        try:
            result = await tool.call(arguments, CallContext(report=report))
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # a bug of ours: say so, keep the traceback in the log
            log.exception("tool %s failed", params.name)
            result = ToolResult.error(
                f"internal error in {params.name}: {type(exc).__name__}: {scrub(str(exc))}"
            )
        return _mcp_result(result)

    # -- resources ------------------------------------------------------------------------

    async def _list_resources(self, ctx: ServerRequestContext[Any], params: Any) -> types.ListResourcesResult:
        self._remember(ctx)
        with acting_as(request_caller(ctx)):
            return types.ListResourcesResult(resources=await self.resources.list())

    async def _list_resource_templates(
        self, ctx: ServerRequestContext[Any], params: Any
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=self.resources.templates())

    async def _read_resource(
        self, ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        with acting_as(request_caller(ctx)):
            contents = await self.resources.read(str(params.uri))
        if contents is None:
            raise MCPError(
                types.INVALID_PARAMS,
                f"Unknown resource '{params.uri}'. List resources with resources/list.",
            )
        return types.ReadResourceResult(contents=[contents])


def request_state_security() -> RequestStateSecurity:
    """Sealing for 2026-07-28 request state: under the shared key when one is set, so that instances
    behind a load balancer accept each other's; else under a key of this process's own."""
    key = os.environ.get(REQUEST_STATE_KEY_ENV)
    return RequestStateSecurity(keys=[key]) if key else RequestStateSecurity.ephemeral()


def request_caller(ctx: ServerRequestContext[Any]) -> Caller:
    """The caller the HTTP gate found for this request (``ctx.request`` is its Starlette request), else
    the context's (stdio: the local user)."""
    scope = getattr(ctx.request, "scope", None)
    found = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return found if isinstance(found, Caller) else current_caller()


def _mcp_tool(tool: Tool) -> types.Tool:
    spec = tool.spec
    return types.Tool(
        name=spec.name,
        title=spec.title,
        description=spec.description,
        input_schema=spec.input_schema,
        output_schema=spec.output_schema,
        annotations=types.ToolAnnotations(title=spec.title, read_only_hint=spec.read_only or None),
    )


def _mcp_result(result: ToolResult) -> types.CallToolResult:
    """The result as it leaves the server: whatever produced it, no secret's value is in it."""
    secrets = known_secrets()
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=scrub_data(result.text, secrets))],
        structured_content=scrub_data(result.structured, secrets),
        is_error=result.is_error,
    )
