"""The one interface every model backend implements (LiteLLM, the embedded model, test fakes).

class Backend(Protocol):
    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from betty_mcp.llm.models import ModelSpec


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as providers send it


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    finish_reason: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class StreamSink:
    """Where a backend reports what it has received so far (read by the progress ticker)."""

    text: str = ""
    model: str = ""

    def append(self, delta: str) -> None:
        self.text += delta


class Backend(Protocol):
    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion: ...
