"""Tools as the server sees them, independent of the MCP SDK.

A ``Tool`` pairs a ``ToolSpec`` (what ``tools/list`` shows) with an async ``call``. The
server validates arguments against ``spec.input_schema`` before ``call`` runs, maps a
``ToolResult`` to ``CallToolResult`` and a ``CallContext`` to progress notifications.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    def error(cls, message: str, **details: Any) -> ToolResult:
        structured = {"ok": False, "status": "failed", "errors": [{"message": message, **details}]}
        return cls(structured, message, True)


@dataclass
class CallContext:
    """What a tool may do besides returning: report progress (a short human line)."""

    report: Callable[[float, str], Awaitable[None]] | None = None
    _count: int = field(default=0, repr=False)

    async def progress(self, message: str) -> None:
        if self.report is not None:
            self._count += 1
            await self.report(float(self._count), message[:200])


class Tool(Protocol):
    spec: ToolSpec

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult: ...
