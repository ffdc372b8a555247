"""``llm_query`` (ask any configured LLM), ``llm_consensus`` (ask several at once, with stances and a
judge) and ``models_list`` (what can be asked, and at what price)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from betty_mcp.mcp.tools import (
    DEFAULT_WAIT_SECONDS,
    WAIT_INPUTS,
    CallContext,
    ServiceTool,
    ToolResult,
    ToolSpec,
)

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


CONSENSUS_ANSWER = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "model_used": {"type": ["string", "null"]},
        "provider": {"type": ["string", "null"]},
        "stance": {"type": ["string", "null"]},
        "response": {"type": ["string", "null"]},
        "tokens": {"type": "object"},
        "cost_usd": {"type": ["number", "null"]},
        "latency_ms": {"type": "number"},
        "fallbacks": {"type": "array", "items": {"type": "object"}},
        "error": {"type": ["string", "null"]},
    },
    "required": ["model", "model_used", "provider", "stance", "response", "tokens", "cost_usd", "error"],
}

CONSENSUS_INPUT = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string", "minLength": 1, "description": "The question every model answers."},
        "models": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "maxItems": 10,
            "description": "Aliases or provider/model ids (one may appear twice, e.g. with two stances); "
            "default: one configured model per provider, at most 5.",
        },
        "stances": {
            "type": ["array", "object"],
            "items": {"type": ["string", "null"]},
            "additionalProperties": {"type": "string"},
            "description": "Per model: 'for', 'against', 'neutral' or a stance in words; a list in the "
            "models' order, or an object keyed by model.",
        },
        "system_prompt": {"type": "string"},
        "judge": {
            "type": "string",
            "description": "A model that compares the answers and returns agreement, disagreement and a "
            "recommendation; default: no judge.",
        },
        "blind": {
            "type": "boolean",
            "default": True,
            "description": "Answers are independent and, wherever shown (round 2, the judge), carry no "
            "model names; false names them.",
        },
        "rounds": {
            "type": "integer",
            "enum": [1, 2],
            "default": 1,
            "description": "2: each model sees the others' first answers and may revise its own.",
        },
        "max_cost_usd": {
            "type": "number",
            "minimum": 0,
            "description": "Refuse the whole fan-out, before anything is sent, if its worst case costs more.",
        },
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "maximum": 200000,
            "description": "Most tokens per answer (default 1024); also what the worst case is priced at.",
        },
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        **WAIT_INPUTS,
    },
    "required": ["prompt"],
    "additionalProperties": False,
}

CONSENSUS_OUTPUT = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "consensus_id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "completed", "failed", "cancelled"]},
        "answers": {"type": "array", "items": CONSENSUS_ANSWER},
        "judge": {
            "type": ["object", "null"],
            "properties": {
                "agreement": {"type": ["string", "null"]},
                "disagreement": {"type": ["string", "null"]},
                "recommendation": {"type": ["string", "null"]},
                "format": {"type": ["string", "null"], "enum": ["json", "text", None]},
            },
        },
        "totals": {"type": "object"},
        "steps": {"type": "array", "items": {"type": "object"}},
        "error": {"type": ["string", "null"]},
    },
    "required": ["run_id", "status", "answers", "judge", "totals", "steps"],
}


class LlmConsensusTool(ServiceTool):
    spec = ToolSpec(
        name="llm_consensus",
        title="llm.consensus",
        description=(
            "Ask several LLMs the same question at once (each a routed call with its own fallbacks), "
            "optionally with stances (for/against/neutral), a second round where each sees the others' "
            "answers, and a judge that sums up agreement, disagreement and a recommendation. The worst "
            "case is checked against max_cost_usd and the budgets before anything is sent. Returns every "
            "answer with tokens, cost and latency; a model that fails leaves its error and the others "
            "count. With wait=false it returns a run id at once (run_status, run_result, run_cancel)."
        ),
        input_schema=CONSENSUS_INPUT,
        output_schema=CONSENSUS_OUTPUT,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.mcp.tools.agent import run_result

        asked = {k: v for k, v in arguments.items() if k not in ("wait", "wait_seconds")}
        if not arguments.get("wait", True):  # refused at once too, before anything is sent
            return ToolResult.of(await self.services.submit_consensus(asked))
        handle = await self.services.start_consensus(asked)  # refused here, before anything is sent
        seconds = arguments.get("wait_seconds", DEFAULT_WAIT_SECONDS)
        try:
            result = await self.services.runs.wait(handle, seconds, ctx.progress)
        except BaseException:
            handle.scope.cancel()  # the caller gave up on a consensus it was waiting for: stop every call
            raise
        return run_result(result)


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
