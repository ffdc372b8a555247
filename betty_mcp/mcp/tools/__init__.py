"""Tools as the server sees them: thin adapters from a schema to a service call to a result.

A ``Tool`` pairs a ``ToolSpec`` (what ``tools/list`` shows) with an async ``call``. The
server validates arguments against ``spec.input_schema`` before ``call`` runs, maps a
``ToolResult`` to ``CallToolResult`` and a ``CallContext`` to progress notifications.
A ``BettyError`` a service raises becomes an error result (``ToolResult.from_error``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from betty_mcp.core.errors import BettyError
from betty_mcp.core.rules import failure_envelope

if TYPE_CHECKING:
    from betty_mcp.services import Services


# A waiting call answers before hosts' ~60 s limits; what it waits for goes on in the background.
DEFAULT_WAIT_SECONDS = 50.0
WAIT_INPUTS: dict[str, Any] = {
    "wait": {
        "type": "boolean",
        "default": True,
        "description": "Wait for the result (up to wait_seconds), or return a run id at once.",
    },
    "wait_seconds": {
        "type": "number",
        "minimum": 0,
        "maximum": 3600,
        "default": DEFAULT_WAIT_SECONDS,
        "description": "How long to wait before returning the partial result; the run goes on.",
    },
}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    read_only: bool = False


@dataclass
class ToolResult:
    structured: dict[str, Any] | None
    text: str
    is_error: bool = False

    @classmethod
    def of(cls, structured: dict[str, Any], is_error: bool = False) -> ToolResult:
        return cls(structured, json.dumps(structured, ensure_ascii=False, default=str), is_error)

    @classmethod
    def error(cls, message: str, code: str | None = None, **details: Any) -> ToolResult:
        return cls(failure_envelope(message, code, **details), message, True)

    @classmethod
    def from_error(cls, exc: BettyError) -> ToolResult:
        return cls.error(str(exc), exc.code, **exc.details())


@dataclass
class CallContext:
    """What a tool may do besides returning: report progress (a short human line)."""

    report: Callable[[float, str], Awaitable[None]] | None = None
    _count: int = field(default=0, repr=False)

    async def progress(self, message: str) -> None:
        if self.report is not None:
            self._count += 1
            await self.report(float(self._count), message[:200])


class ServiceTool:
    """A tool over the services: a BettyError they raise becomes an error result the caller can act on."""

    spec: ToolSpec

    def __init__(self, services: Services) -> None:
        self.services = services

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        try:
            return await self.run(arguments, ctx)
        except BettyError as exc:
            return ToolResult.from_error(exc)

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        raise NotImplementedError


class Tool(Protocol):
    spec: ToolSpec

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult: ...
