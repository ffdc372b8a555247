"""The one interface every model backend implements (LiteLLM, the embedded model, test fakes).

class Backend(Protocol):
    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from betty_mcp.core.secrets import REDACTED
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
    """Where a backend reports what it has received so far (read by the progress ticker).

    ``text`` never holds a secret: with ``secrets`` set (``start``), the last few characters
    received (fewer than the longest secret) are held back until they cannot begin one, and every
    whole secret is replaced, so a key a provider echoes never shows, not even in part at the end
    of a progress message. Backends build their answers from what they receive, not from ``text``.
    """

    text: str = ""
    model: str = ""
    secrets: list[str] = field(default_factory=list)
    _held: str = field(default="", repr=False)
    _keep: int = field(default=0, repr=False)  # how many characters to hold back

    def __post_init__(self) -> None:
        self._keep = max((len(s) for s in self.secrets), default=1) - 1

    def start(self, model: str, secrets: list[str] | None = None) -> None:
        """A new attempt: ``model`` answers now; nothing received yet."""
        self.model, self.text, self._held = model, "", ""
        self.secrets = list(secrets or [])
        self.__post_init__()

    def append(self, delta: str) -> None:
        if not self.secrets:
            self.text += delta
            return
        held = self._held + delta
        for secret in self.secrets:
            if secret in held:
                held = held.replace(secret, REDACTED)
        keep = self._keep
        if len(held) > keep:
            self.text += held[: len(held) - keep]
            held = held[len(held) - keep :] if keep else ""
        self._held = held


class Backend(Protocol):
    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion: ...
