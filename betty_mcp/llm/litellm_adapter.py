"""The only module that imports LiteLLM: calls through it, and maps its errors to ours.

LiteLLM is imported on first use, in a worker thread (it takes ~3 s and ~200 MB), with the
safe settings: no price-map download, no ``.env`` loading, no help banners on stdout, no
tokenizer downloads, no message or stream logging, and its logging tamed (``_tame_logging``):
LiteLLM adds to its loggers a handler that writes every record below WARNING to *stdout* (the
MCP wire over stdio; its exit handler logs there after the session), so that handler is removed,
its records go through ours to stderr, and its loggers stay at WARNING unless ``--verbose``.

Retries are ours (``max_retries=0``): the fallback walk moves to the next model instead of waiting.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import threading
import urllib.request
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import SocketAttribute, SocketStream

from betty_mcp.core.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextWindowExceeded,
    ModelNotFound,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
)
from betty_mcp.core.secrets import THIRD_PARTY_LOGGERS, known_secrets_and, scrub
from betty_mcp.llm.models import ModelSpec
from betty_mcp.llm.types import ChatRequest, Completion, StreamSink, ToolCall

_lock = threading.Lock()
_litellm: Any = None
# Set while the warm-up's mock call runs: LiteLLM's lines about it are dropped (it is not a call).
_warming_up: ContextVar[bool] = ContextVar("betty_mcp_litellm_warming_up", default=False)
# Modules LiteLLM imports at its first real call (a mocked one skips them), as of the pinned version.
FIRST_CALL_IMPORTS = (
    "litellm._service_logger",
    "litellm.proxy.spend_tracking.savings",
)
# Pydantic models whose schema is built at their first use, which a real call (a parsed stream) makes
# and a mocked one does not: ~10 ms of CPU, as of the pinned versions.
FIRST_CALL_MODELS = (
    ("openai.types.chat.chat_completion_chunk", "ChatCompletionChunk"),
    ("openai.types.chat.chat_completion_chunk", "Choice"),
    ("openai.types.chat.chat_completion_chunk", "ChoiceDelta"),
    ("openai.types.completion_usage", "CompletionUsage"),
    ("litellm.types.services", "ServiceLoggerPayload"),
)
# Local servers need no key, but the OpenAI client refuses to send a request without one.
PLACEHOLDER_KEY = "no-key-needed"


def _load() -> Any:
    global _litellm
    with _lock:
        if _litellm is None:
            os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
            import litellm

            litellm.suppress_debug_info = True
            litellm.disable_hf_tokenizer_download = True
            litellm.turn_off_message_logging = True
            # No LiteLLM callbacks are used (the ledger is ours): skip its per-stream logging threads.
            litellm.disable_streaming_logging = True
            _tame_logging()
            _litellm = litellm
    return _litellm


def _tame_logging() -> None:
    """LiteLLM's loggers without its own handlers (stdout for anything below WARNING) and, unless
    ``log_to_stderr(verbose=True)`` set their level, at WARNING: its records reach stderr once,
    through the process's handlers, and stdout never."""
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if name.startswith("LiteLLM"):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
            logger.addFilter(lambda record: not _warming_up.get())
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


async def load_litellm() -> Any:
    return _litellm if _litellm is not None else await anyio.to_thread.run_sync(_load)


STATUS_ERRORS: dict[int, type[ProviderError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    404: ModelNotFound,
    408: ProviderTimeout,
    429: RateLimited,
    504: ProviderTimeout,
}


def _error_class(exc: Exception, litellm: Any) -> type[ProviderError]:
    """Classify by what happened (status first), not by LiteLLM's classes: they share no base of their own."""
    text = str(exc).lower()
    status = getattr(exc, "status_code", None)
    if isinstance(exc, litellm.ContextWindowExceededError) or (
        status == 400 and ("context length" in text or "context window" in text)
    ):
        return ContextWindowExceeded
    if isinstance(exc, litellm.Timeout | TimeoutError):
        return ProviderTimeout
    if isinstance(exc, litellm.APIConnectionError) or "connection error" in text:
        return ProviderUnreachable
    if isinstance(exc, litellm.AuthenticationError | litellm.PermissionDeniedError):
        return AuthenticationFailed
    if isinstance(status, int):
        if status in STATUS_ERRORS:
            return STATUS_ERRORS[status]
        if status >= 500:
            return ProviderUnavailable
        if 400 <= status < 500:
            return BadRequest
    return ProviderError


def _short(exc: Exception, secrets: list[str]) -> str:
    text = scrub(str(exc), secrets).strip()
    for prefix in ("litellm.", "Error code: "):
        text = text.removeprefix(prefix)
    return " ".join(text.split())[:500]


def _kwargs(spec: ModelSpec, request: ChatRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": spec.litellm_model,
        "messages": request.messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "timeout": request.timeout_seconds,
        "max_retries": 0,
        "num_retries": 0,
    }
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
    key = spec.key()
    if key:
        kwargs["api_key"] = key
    elif spec.type in ("openai_compatible", "ollama"):
        kwargs["api_key"] = PLACEHOLDER_KEY
    for name in ("tools", "temperature", "max_tokens", "response_format"):
        value = getattr(request, name)
        if value is not None:
            kwargs[name] = value
    return kwargs


async def chunks_of(response_stream: Any) -> AsyncIterator[Any]:
    """A LiteLLM stream's chunks, up to the usage chunk it makes once the provider's stream is over.

    Reading on from there would only run LiteLLM's end-of-stream work for its callbacks, which we do
    not use (the ledger is ours): the response built a second time, its cost, its logging payload;
    about 40% of a streamed call's CPU, as of the pinned version."""
    try:
        async for chunk in response_stream:
            yield chunk
            if getattr(response_stream, "sent_stream_usage", False):
                break
    finally:
        if (close := getattr(response_stream, "aclose", None)) is not None:
            await close()


class LiteLLMBackend:
    """Streams a chat completion through LiteLLM; errors become ``ProviderError`` with secrets scrubbed."""

    async def warm_up(self, spec: ModelSpec) -> None:
        """LiteLLM imported, and its first call's own work done (lazy imports, the tokenizer its cost
        code loads) on a mock answer, then, for a model spoken to through the OpenAI client, a real call
        answered by ourselves (``_call_ourselves``): nothing is sent to the provider, nothing is recorded."""
        litellm = await load_litellm()
        kwargs = _kwargs(spec, ChatRequest(messages=[{"role": "user", "content": "warm-up"}]))
        token = _warming_up.set(True)
        try:
            with contextlib.suppress(Exception):  # a warm-up that fails leaves only the first call slower
                stream = await litellm.acompletion(**kwargs, mock_response="ok")
                async for _chunk in stream:
                    pass
            if spec.litellm_model.startswith("openai/") and not urllib.request.getproxies_environment():
                with contextlib.suppress(Exception):
                    await _call_ourselves(litellm, kwargs)
        finally:
            _warming_up.reset(token)
        for name in FIRST_CALL_IMPORTS:  # what a real call loads that a mocked one does not
            with contextlib.suppress(Exception):
                importlib.import_module(name)
        for module, model in FIRST_CALL_MODELS:
            with contextlib.suppress(Exception):
                getattr(importlib.import_module(module), model).model_rebuild()

    async def complete(self, spec: ModelSpec, request: ChatRequest, stream: StreamSink) -> Completion:
        litellm = await load_litellm()
        kwargs = _kwargs(spec, request)
        secrets = known_secrets_and(kwargs.get("api_key", ""))
        reply = _Reply()
        try:
            response_stream = await litellm.acompletion(**kwargs)
            async for chunk in chunks_of(response_stream):
                if text := reply.add(chunk):
                    stream.append(text)
            # A provider that sent no usage: LiteLLM's builder counts the tokens itself (slow, rare).
            response = reply if reply.usage else litellm.stream_chunk_builder(reply.chunks, request.messages)
        except Exception as exc:  # every provider failure, whatever LiteLLM calls it
            error = _error_class(exc, litellm)
            raise error(f"{spec.id}: {error.kind}: {_short(exc, secrets)}", spec.id) from None
        if response is None:
            raise ProviderUnavailable(f"{spec.id}: the provider sent an empty stream", spec.id)
        return self._completion(spec, response, litellm)

    @staticmethod
    def _completion(spec: ModelSpec, response: Any, litellm: Any) -> Completion:
        if isinstance(response, _Reply):
            text, tool_calls, finish_reason = response.text, response.tool_calls(), response.finish_reason
        else:
            choice = response.choices[0]
            text, finish_reason = choice.message.content or "", choice.finish_reason
            tool_calls = [
                ToolCall(id=c.id or f"call_{i}", name=c.function.name, arguments=c.function.arguments or "{}")
                for i, c in enumerate(choice.message.tool_calls or [])
            ]
        usage = response.usage
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = spec.cost(prompt, completion)
        if cost is None:
            cost = _price_list_cost(litellm, spec.litellm_model, prompt, completion)
        return Completion(
            text=text,
            tool_calls=tool_calls,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost,
            finish_reason=finish_reason,
        )


# Models LiteLLM has no price for: asking again costs a search through its price list every call.
_unpriced: set[str] = set()


def _price_list_cost(litellm: Any, model: str, prompt: int, completion: int) -> float | None:
    """The cost by LiteLLM's price list; None (unknown, not zero) for a model it has no price for."""
    if model in _unpriced:
        return None
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt, completion_tokens=completion
        )
    except Exception:
        _unpriced.add(model)
        return None
    return float(prompt_cost + completion_cost)


def _sse_chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    chunk = {"id": "warm-up", "object": "chat.completion.chunk", "created": 0, "model": "warm-up"}
    return b"data: " + json.dumps({**chunk, "choices": choices, **extra}).encode() + b"\n\n"


# A one-shot OpenAI-compatible streamed answer, with its usage: what a provider sends.
_WARM_UP_EVENTS = b"".join(
    (
        _sse_chunk([{"index": 0, "delta": {"role": "assistant", "content": "ok"}, "finish_reason": None}]),
        _sse_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        _sse_chunk([], usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}),
        b"data: [DONE]\n\n",
    )
)
_WARM_UP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_WARM_UP_EVENTS), _WARM_UP_EVENTS)
)


async def _call_ourselves(litellm: Any, kwargs: dict[str, Any]) -> None:
    """One real streamed call through LiteLLM's OpenAI client, to a one-shot server of ours on 127.0.0.1.

    It does what a mock answer skips and a process's first call does once (~10 ms): the proxy
    settings read from the environment, the OpenAI client's platform headers, the transport, the
    pydantic adapters its parser builds on first use. The provider receives nothing, and neither
    does the key: the call carries a placeholder. Not made when the environment names a proxy, which
    would be sent the call."""

    async def answer(client: SocketStream) -> None:
        async with client:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await client.receive()
            head, _, body = received.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += await client.receive()
            await client.send(_WARM_UP_RESPONSE)

    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, answer)
            base = f"http://127.0.0.1:{port}/v1"
            stream = await litellm.acompletion(**{**kwargs, "api_base": base, "api_key": PLACEHOLDER_KEY})
            async for _chunk in chunks_of(stream):
                pass
            tg.cancel_scope.cancel()


class _Reply:
    """A streamed answer put together chunk by chunk: the text, tool calls (their pieces joined by
    index), finish reason and usage. LiteLLM's ``stream_chunk_builder`` does the same at several times
    the cost, so it is kept for the rare stream without usage, whose tokens it counts."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Any = None

    def add(self, chunk: Any) -> str:
        """Take one chunk; return its text (empty if none)."""
        self.chunks.append(chunk)
        if usage := getattr(chunk, "usage", None):
            self.usage = usage
        if not chunk.choices:
            return ""
        choice = chunk.choices[0]
        self.finish_reason = choice.finish_reason or self.finish_reason
        delta = choice.delta
        if delta is None:
            return ""
        for piece in getattr(delta, "tool_calls", None) or ():
            call = self.calls.setdefault(piece.index or 0, {"id": None, "name": "", "arguments": []})
            call["id"] = call["id"] or piece.id
            if piece.function is not None:
                call["name"] += piece.function.name or ""
                call["arguments"].append(piece.function.arguments or "")
        if text := delta.content:
            self.parts.append(text)
            return text
        return ""

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def tool_calls(self) -> list[ToolCall]:
        return [
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments="".join(c["arguments"]) or "{}")
            for i, (_, c) in enumerate(sorted(self.calls.items()))
        ]
