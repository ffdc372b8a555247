"""An in-process model behind the same ``Backend`` interface as LiteLLM and the embedded model.

backend = FakeBackend({"openai/gpt-4": [RateLimited("429"), Completion("hi")]})
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from betty_mcp.core.errors import ProviderError
from betty_mcp.llm.models import ModelSpec
from betty_mcp.llm.types import ChatRequest, Completion, StreamSink

Step = Completion | ProviderError | Callable[[ChatRequest], Completion]


@dataclass
class Call:
    model: str
    request: ChatRequest
    started: float


@dataclass
class FakeBackend:
    """Answers each model from its queue of steps (a Completion, an error to raise, or a function)."""

    script: dict[str, list[Step]] = field(default_factory=dict)
    delay: float = 0.0
    calls: list[Call] = field(default_factory=list)

    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion:
        self.calls.append(Call(spec.id, request, time.monotonic()))
        if self.delay:
            await anyio.sleep(self.delay)
        queue = self.script.get(spec.id) or self.script.get("*") or []
        step = queue.pop(0) if queue else Completion(text="ok", prompt_tokens=1, completion_tokens=1)
        if isinstance(step, ProviderError):
            raise step
        result = step(request) if callable(step) else step
        stream.append(result.text)
        return result
