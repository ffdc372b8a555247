"""``llm_query`` (ask any configured LLM) and ``models_list`` (what can be asked, and at what price)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from betty_mcp.errors import BudgetExceeded, ConfigError, ProviderError
from betty_mcp.tools import CallContext, ToolResult, ToolSpec

if TYPE_CHECKING:
    from betty_mcp.app import BettyApp
    from betty_mcp.llm.service import ChatResult
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


def response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Accept the OpenAI shapes as they are, and wrap a bare JSON Schema into a json_schema format."""
    if value is None or value.get("type") in ("json_object", "json_schema", "text"):
        return value
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}


def query_result(result: ChatResult) -> dict[str, Any]:
    from betty_mcp.llm.embedded import NOTE

    completion = result.completion
    out: dict[str, Any] = {
        "response": completion.text,
        "model_used": result.spec.id,
        "provider": result.spec.provider,
        "tokens_used": {
            "prompt": completion.prompt_tokens,
            "completion": completion.completion_tokens,
            "total": completion.total_tokens,
        },
        "cost_usd": completion.cost_usd,
        "latency_ms": round(result.latency_ms, 1),
        "fallbacks": [h.as_dict() for h in result.fallbacks],
        "complexity": result.complexity,
        "embedded": result.spec.type == "embedded",
    }
    if out["embedded"]:
        out["note"] = NOTE
    return out


class LlmQueryTool:
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

    def __init__(self, app: BettyApp) -> None:
        self.app = app

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.llm.routing import RouteRequest
        from betty_mcp.llm.types import ChatRequest, StreamSink

        messages = [{"role": "user", "content": arguments["prompt"]}]
        if arguments.get("system_prompt"):
            messages.insert(0, {"role": "system", "content": arguments["system_prompt"]})
        fmt = response_format(arguments.get("response_format"))
        request = ChatRequest(
            messages=messages,
            temperature=arguments.get("temperature"),
            max_tokens=arguments.get("max_tokens"),
            response_format=fmt,
        )
        routing = RouteRequest(
            model=arguments.get("model"),
            complexity=arguments.get("complexity"),
            prompt=arguments["prompt"],
            structured=fmt is not None,
        )
        sink = StreamSink()
        try:
            service = await self.app.llm()
            result = await with_progress(
                ctx, sink, service.chat(request, routing, caller="llm_query", stream=sink)
            )
        except BudgetExceeded as exc:
            return ToolResult.error(str(exc), code="budget_exceeded", budget=exc.budget)
        except ConfigError as exc:
            return ToolResult.error(str(exc), code="config")
        except ProviderError as exc:
            hops = [h.as_dict() for h in getattr(exc, "hops", [])]
            return ToolResult.error(str(exc), code=exc.kind, fallbacks=hops)
        out = query_result(result)
        if fmt is not None and fmt.get("type") != "text":
            try:
                out["json"] = json.loads(result.completion.text)
            except json.JSONDecodeError as exc:
                out["json_error"] = f"the model's answer is not valid JSON: {exc.msg} at char {exc.pos}"
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


class ModelsListTool:
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

    def __init__(self, app: BettyApp) -> None:
        self.app = app

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.llm.listing import list_models

        return ToolResult.of(list_models(self.app.settings.router))
