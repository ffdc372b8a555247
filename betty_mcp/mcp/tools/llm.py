"""``llm_query`` (ask any configured LLM) and ``models_list`` (what can be asked, and at what price)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from betty_mcp.mcp.tools import CallContext, ServiceTool, ToolResult, ToolSpec

if TYPE_CHECKING:
    from betty_mcp.llm.types import StreamSink

PROGRESS_SECONDS = 2.0
T = TypeVar("T")

QUERY_INPUT = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "description": "What to ask."},
        "model": {
            "type": "string",
            "description": "An alias (gpt-4) or provider/model; default: routing rules.",
        },
        "system_prompt": {"type": "string"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200000},
        "response_format": {
            "type": "object",
            "description": "{'type': 'json_object'}, an OpenAI json_schema format, or a bare JSON Schema.",
        },
        "complexity": {
            "type": "string",
            "enum": ["simple", "medium", "complex"],
            "description": "Routes by the task_complexity rules; estimated from the prompt if absent.",
        },
    },
    "required": ["prompt"],
    "additionalProperties": False,
}

QUERY_OUTPUT = {
    "type": "object",
    "properties": {
        "response": {"type": "string"},
        "model_used": {"type": "string"},
        "provider": {"type": "string"},
        "tokens_used": {
            "type": "object",
            "properties": {
                "prompt": {"type": "integer"},
                "completion": {"type": "integer"},
                "total": {"type": "integer"},
            },
            "required": ["prompt", "completion", "total"],
        },
        "cost_usd": {"type": ["number", "null"]},
        "latency_ms": {"type": "number"},
        "fallbacks": {"type": "array", "items": {"type": "object"}},
        "complexity": {"type": "string"},
        "embedded": {"type": "boolean"},
    },
    "required": ["response", "model_used", "provider", "tokens_used", "cost_usd", "latency_ms", "fallbacks"],
}


class LlmQueryTool(ServiceTool):
    spec = ToolSpec(
        name="llm_query",
        title="llm.query",
        description=(
            "Ask an LLM (OpenAI, Anthropic, a local Ollama/llama.cpp/vLLM server, or the embedded "
            "offline model) chosen by betty.yaml's routing rules, with fallbacks. Returns the answer "
            "with the model used, tokens, "
            "cost and latency."
        ),
        input_schema=QUERY_INPUT,
        output_schema=QUERY_OUTPUT,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.llm.types import StreamSink

        sink = StreamSink()
        out = await with_progress(ctx, sink, self.services.query_llm(arguments, sink))
        return ToolResult(out, json.dumps(out, ensure_ascii=False))


async def with_progress(ctx: CallContext, sink: StreamSink, call: Awaitable[T]) -> T:
    """Await ``call`` while reporting what the model has sent so far, every few seconds however slow
    the provider (hosts reset their timeouts on progress). The call's own exception propagates as is."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    async def run() -> None:
        try:
            outcome.append(await call)
        except Exception as exc:  # handed back below, outside the task group (no ExceptionGroup)
            failure.append(exc)
        tg.cancel_scope.cancel()

    async def report() -> None:
        started = time.monotonic()
        while True:
            await anyio.sleep(PROGRESS_SECONDS)
            tail = " ".join(sink.text[-60:].split())
            await ctx.progress(
                f"{sink.model or 'model'}: {len(sink.text)} characters received after "
                f"{time.monotonic() - started:.0f}s" + (f": ...{tail}" if tail else "")
            )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        tg.start_soon(report)
    if failure:
        raise failure[0]
    return outcome[0]


class ModelsListTool(ServiceTool):
    spec = ToolSpec(
        name="models_list",
        title="models.list",
        description=(
            "Every model llm_query can use: its id and aliases, provider, whether it is configured "
            "and its API key "
            "present, capabilities and prices."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={
            "type": "object",
            "properties": {
                "models": {"type": "array", "items": {"type": "object"}},
                "default": {"type": ["string", "null"]},
            },
            "required": ["models"],
        },
        read_only=True,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.llm.listing import list_models

        return ToolResult.of(list_models(self.services.settings.router))
