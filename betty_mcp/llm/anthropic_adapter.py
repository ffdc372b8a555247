"""Anthropic Messages to any provider: LiteLLM's Anthropic adapter pieces, on a lean path.

The second (and last) module importing litellm. The translation is LiteLLM's own, the one behind
``litellm.anthropic.messages``: ``LiteLLMAnthropicMessagesAdapter.translate_anthropic_to_openai`` for
the request, ``translate_openai_response_to_anthropic`` for a whole answer and ``AnthropicStreamWrapper``
for a stream (content blocks opened and closed, ``tool_use`` with ``input_json_delta``, stop reasons,
usage). What is not LiteLLM's whole per-call machinery (``anthropic.messages.acreate`` costs ~11 ms a
call) is the transport:

- OpenAI and OpenAI-compatible providers: one pooled ``aiohttp`` session (LiteLLM's own HTTP client
  library, ~0.45 ms a call less than httpx here) posts the translated request to
  ``<api_base>/chat/completions`` (never the Responses API, which local servers lack);
- Anthropic: the request goes as it came (``context_management`` and all), the provider's SSE bytes
  come back as they are: nothing to translate;
- any other provider (Ollama, Mistral, ...): ``litellm.acompletion`` with the translated request.

Fields no OpenAI-style provider takes (``context_management``, ``output_config``, ...) are dropped
here, by an allow-list, and reported (``Translation.dropped``), never sent on to fail.

    upstream = await open_upstream(spec, body, timeout=60, stream=True)   # raises ProviderError
    async for event in upstream.events():                                 # Anthropic event dicts
        ...
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from betty_mcp.core.errors import (
    BadRequest,
    ContextWindowExceeded,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ProviderUnreachable,
)
from betty_mcp.core.secrets import scrub
from betty_mcp.llm.litellm_adapter import (
    PLACEHOLDER_KEY,
    STATUS_ERRORS,
    _error_class,
    _load,
    _short,
    chunks_of,
)
from betty_mcp.llm.models import ModelSpec

log = logging.getLogger(__name__)

ANTHROPIC_BASE = "https://api.anthropic.com"
OPENAI_BASE = "https://api.openai.com/v1"
ANTHROPIC_VERSION = "2023-06-01"

# What an OpenAI-style chat completion takes from the translated request; everything else is dropped.
OPENAI_FIELDS = frozenset(
    {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "response_format",
        "reasoning_effort",
        "user",
        "parallel_tool_calls",
    }
)
# Anthropic request fields LiteLLM's translation reads or we handle; the rest is reported as dropped.
ANTHROPIC_TRANSLATED = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "stream",
        "thinking",
        "metadata",
        "output_format",
    }
)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Translation:
    """The OpenAI-style request for one model, the tool names LiteLLM shortened, what was dropped."""

    request: dict[str, Any]
    tool_names: dict[str, str]
    dropped: list[str]


# -- LiteLLM, loaded once ------------------------------------------------------------------------

_pieces: dict[str, Any] = {}


def load() -> dict[str, Any]:
    """LiteLLM (with the safe settings) and its Anthropic adapter pieces; slow the first time (~3 s)."""
    if not _pieces:
        # LiteLLM's typed dicts make pydantic warn (ReadOnly items) on first use: noise on stderr.
        warnings.filterwarnings("ignore", message=".*ReadOnly.*", category=UserWarning)
        litellm = _load()
        from litellm.llms.anthropic.messages.adapters.streaming_iterator import AnthropicStreamWrapper
        from litellm.llms.anthropic.messages.adapters.transformation import LiteLLMAnthropicMessagesAdapter
        from litellm.types.utils import ModelResponse, ModelResponseStream

        _pieces.update(
            litellm=litellm,
            adapter=LiteLLMAnthropicMessagesAdapter(),
            stream_wrapper=AnthropicStreamWrapper,
            response=ModelResponse,
            chunk=ModelResponseStream,
        )
    return _pieces


def fast_path(spec: ModelSpec) -> bool:
    """Whether ``spec`` is reached by our own pooled client (OpenAI chat completions, no LiteLLM call)."""
    return spec.type in ("openai", "openai_compatible") and spec.litellm_model.startswith("openai/")


def native(spec: ModelSpec) -> bool:
    """Whether ``spec`` speaks Anthropic Messages itself: the request goes to it as it came."""
    return spec.type == "anthropic"


def translate(body: dict[str, Any], spec: ModelSpec) -> Translation:
    """``body`` (Anthropic Messages) as an OpenAI chat completion request for ``spec``."""
    pieces = load()
    dropped = sorted(k for k in body if k not in ANTHROPIC_TRANSLATED)
    source = {k: v for k, v in body.items() if k in ANTHROPIC_TRANSLATED}
    source["model"] = spec.litellm_model
    provider = spec.litellm_model.split("/", 1)[0] if "/" in spec.litellm_model else None
    request, tool_names = pieces["adapter"].translate_anthropic_to_openai(
        source, custom_llm_provider="hosted_vllm" if provider == "openai" else provider
    )
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled":
        # An adaptive effort tier is Claude's own default; only asked-for thinking becomes reasoning_effort
        # (models that do not reason refuse the field).
        request.pop("reasoning_effort", None)
    out = {k: v for k, v in request.items() if k in OPENAI_FIELDS}
    # Request fields LiteLLM passed through as they were, which no OpenAI-style provider takes (top_k).
    dropped = sorted({*dropped, *(k for k in request if k not in OPENAI_FIELDS and k in body)})
    return Translation(out, tool_names, dropped)


# -- upstream ------------------------------------------------------------------------------------


class _Pool:
    session: aiohttp.ClientSession | None = None
    loop: asyncio.AbstractEventLoop | None = None


def session() -> aiohttp.ClientSession:
    """The pooled session of the running event loop (one per serving loop)."""
    loop = asyncio.get_running_loop()
    if _Pool.session is None or _Pool.loop is not loop or _Pool.session.closed:
        connector = aiohttp.TCPConnector(limit=200, limit_per_host=200, keepalive_timeout=30)
        _Pool.session = aiohttp.ClientSession(connector=connector, trust_env=False)
        _Pool.loop = loop
    return _Pool.session


async def close_client() -> None:
    if _Pool.session is not None and _Pool.loop is asyncio.get_running_loop():
        await _Pool.session.close()
    _Pool.session = _Pool.loop = None


async def _post(
    spec: ModelSpec, url: str, payload: bytes, headers: dict[str, str], timeout: float, secrets: list[str]
) -> aiohttp.ClientResponse:
    """The upstream's response, or the ProviderError its failure (transport or HTTP status) means."""
    limit = aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
    try:
        response = await session().post(url, data=payload, headers=headers, timeout=limit)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(spec, exc, secrets) from None
    if response.status >= 400:
        try:
            text = (await _read(response, spec, secrets)).decode(errors="replace")
        finally:
            response.release()
        raise _http_error(spec, response.status, text, secrets)
    return response


def _http_error(spec: ModelSpec, status: int, text: str, secrets: list[str]) -> ProviderError:
    try:
        error = json.loads(text).get("error")
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = text
    message = " ".join(scrub(str(message or ""), secrets).split())[:500]
    lowered = message.lower()
    if status == 400 and (
        "context length" in lowered or "context window" in lowered or "too long" in lowered
    ):
        kind: type[ProviderError] = ContextWindowExceeded
    elif status in STATUS_ERRORS:
        kind = STATUS_ERRORS[status]
    elif status >= 500:
        kind = ProviderUnavailable
    else:
        kind = BadRequest
    return kind(f"{spec.id}: {kind.kind}: {status} {message}", spec.id)


def _transport_error(spec: ModelSpec, exc: Exception, secrets: list[str]) -> ProviderError:
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(f"{spec.id}: timeout: {_short(exc, secrets) or 'no answer in time'}", spec.id)
    return ProviderUnreachable(
        f"{spec.id}: unreachable: {_short(exc, secrets) or type(exc).__name__}", spec.id
    )


@dataclass
class Upstream:
    """One model's answer under way: the first piece is in hand, so the walk has committed to it."""

    spec: ModelSpec
    stream: bool
    secrets: list[str]
    usage: Usage = field(default_factory=Usage)
    dropped: list[str] = field(default_factory=list)
    message: dict[str, Any] | None = None  # the whole answer (non-streaming)
    _events: AsyncIterator[dict[str, Any]] | None = None
    _raw: AsyncIterator[bytes] | None = None  # native Anthropic SSE bytes
    _close: Any = None
    _wrapper: Any = None  # LiteLLM's AnthropicStreamWrapper, once streaming
    _lines: _Lines | None = None

    def ready(self) -> bool:
        """Whether the next event is already in hand: events are sent together until one is not.

        Reads LiteLLM's stream wrapper's queues; if they are ever renamed, every event goes alone."""
        wrapper = self._wrapper
        if wrapper is None:
            return False
        if getattr(wrapper, "chunk_queue", None):
            return True
        splitter = getattr(wrapper, "_combined_chunk_splitter", None)
        if splitter is not None and getattr(splitter, "_buffer", None):
            return True
        return self._lines is not None and self._lines.ready()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The Anthropic events (streaming); a failure mid-way raises ProviderError."""
        assert self._events is not None
        async for event in self._events:
            yield event

    async def raw(self) -> AsyncIterator[bytes]:
        assert self._raw is not None
        async for chunk in self._raw:
            yield chunk

    @property
    def is_raw(self) -> bool:
        return self._raw is not None

    async def aclose(self) -> None:
        if self._close is not None:
            await self._close()
            self._close = None


def _key(spec: ModelSpec, client_key: str | None) -> str:
    return spec.key() or client_key or PLACEHOLDER_KEY


async def open_upstream(
    spec: ModelSpec,
    body: dict[str, Any],
    *,
    timeout: float,
    secrets: list[str],
    client_key: str | None = None,
    beta: str | None = None,
) -> Upstream:
    """Send ``body`` to ``spec`` and wait for the first piece of its answer (a whole one, when not
    streaming). Raises ProviderError (secrets scrubbed) when the model fails before that."""
    stream = bool(body.get("stream"))
    if native(spec):
        return await _open_native(spec, body, timeout, secrets, client_key, beta, stream)
    translation = translate(body, spec)
    if fast_path(spec):
        opened = await _open_openai(spec, translation, timeout, secrets, stream)
    else:
        opened = await _open_litellm(spec, translation, timeout, secrets, stream)
    opened.dropped = translation.dropped
    return opened


# -- OpenAI chat completions, our own client -----------------------------------------------------


async def _open_openai(
    spec: ModelSpec, translation: Translation, timeout: float, secrets: list[str], stream: bool
) -> Upstream:
    request = dict(translation.request)
    request["model"] = spec.litellm_model.split("/", 1)[1]
    if stream:
        request["stream_options"] = {"include_usage": True}
    base = (spec.api_base or OPENAI_BASE).rstrip("/")
    headers = {"Authorization": f"Bearer {_key(spec, None)}", "Content-Type": "application/json"}
    payload = json.dumps(request).encode()
    response = await _post(spec, base + "/chat/completions", payload, headers, timeout, secrets)
    upstream = Upstream(spec, stream, secrets)
    try:
        pieces = load()
        if not stream:
            try:
                data = json.loads(await _read(response, spec, secrets))
            except ValueError:
                raise ProviderUnavailable(f"{spec.id}: the provider's answer is not JSON", spec.id) from None
            model_response = pieces["response"](**data)
            upstream.message = _message(model_response, translation, spec, upstream)
            return upstream
        lines = _Lines(response)
        chunks = _openai_chunks(lines, spec, secrets, upstream.usage)
        first = await _first(chunks, spec)
    except BaseException:
        response.close()
        raise
    upstream._events = _anthropic_events(first, chunks, spec, translation, upstream)
    upstream._lines = lines
    upstream._close = _closer(response)
    return upstream


async def _read(response: aiohttp.ClientResponse, spec: ModelSpec, secrets: list[str]) -> bytes:
    try:
        return await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(spec, exc, secrets) from None


def _closer(response: aiohttp.ClientResponse) -> Any:
    async def close() -> None:
        response.release()  # read to the end: the connection goes back to the pool; else it is closed

    return close


class _Lines:
    """The lines of an upstream SSE body, and whether the next one is already in hand (no network wait)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._raw = response.content.iter_any()
        self._buffer = b""
        self._lines: deque[bytes] = deque()
        self._ended = False

    def ready(self) -> bool:
        return bool(self._lines)

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        while not self._lines:
            if self._ended:
                raise StopAsyncIteration
            try:
                chunk = await self._raw.__anext__()
            except StopAsyncIteration:
                self._ended = True
                if self._buffer:
                    self._lines.append(self._buffer)
                    self._buffer = b""
                continue
            *complete, self._buffer = (self._buffer + chunk).split(b"\n")
            self._lines.extend(line for line in complete if line.strip())
        return self._lines.popleft()


async def _openai_chunks(
    lines: _Lines, spec: ModelSpec, secrets: list[str], usage: Usage
) -> AsyncIterator[Any]:
    make = load()["chunk"]
    try:
        async for raw_line in lines:
            line = raw_line.decode(errors="replace")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                continue  # read to the end, so the connection goes back to the pool
            try:
                raw = json.loads(data)
            except ValueError:
                continue
            if isinstance(raw, dict) and raw.get("error"):
                raise _http_error(spec, 502, json.dumps(raw), secrets)
            counted = raw.get("usage") if isinstance(raw, dict) else None
            if counted:
                usage.prompt_tokens = int(counted.get("prompt_tokens") or 0)
                usage.completion_tokens = int(counted.get("completion_tokens") or 0)
            yield make(**raw)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(spec, exc, secrets) from None


async def _first(chunks: AsyncIterator[Any], spec: ModelSpec) -> Any:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        raise ProviderUnavailable(f"{spec.id}: the provider sent an empty stream", spec.id) from None


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for chunk in rest:
        yield chunk


async def _anthropic_events(
    first: Any, chunks: AsyncIterator[Any], spec: ModelSpec, translation: Translation, upstream: Upstream
) -> AsyncIterator[dict[str, Any]]:
    wrapper = load()["stream_wrapper"](
        completion_stream=_chain(first, chunks), model=spec.name, tool_name_mapping=translation.tool_names
    )
    upstream._wrapper = wrapper
    async for event in wrapper:
        if isinstance(event, dict):
            yield event


def _message(response: Any, translation: Translation, spec: ModelSpec, upstream: Upstream) -> dict[str, Any]:
    usage = getattr(response, "usage", None)
    upstream.usage.prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    upstream.usage.completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    message = load()["adapter"].translate_openai_response_to_anthropic(response, translation.tool_names)
    out = dict(message)
    out["model"] = spec.name
    return json.loads(json.dumps(out, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value)


# -- any other provider, through litellm.acompletion ---------------------------------------------


async def _open_litellm(
    spec: ModelSpec, translation: Translation, timeout: float, secrets: list[str], stream: bool
) -> Upstream:
    litellm = load()["litellm"]
    kwargs = dict(translation.request)
    kwargs.update(
        model=spec.litellm_model,
        stream=stream,
        timeout=timeout,
        max_retries=0,
        num_retries=0,
        drop_params=True,
        api_key=_key(spec, None),
    )
    if stream:
        kwargs["stream_options"] = {"include_usage": True}
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
    upstream = Upstream(spec, stream, secrets)
    try:
        response = await litellm.acompletion(**kwargs)
        if not stream:
            upstream.message = _message(response, translation, spec, upstream)
            return upstream
        chunks = _litellm_chunks(response, spec, secrets, upstream.usage, litellm)
        first = await _first(chunks, spec)
    except ProviderError:
        raise
    except Exception as exc:  # every provider failure, whatever LiteLLM calls it
        error = _error_class(exc, litellm)
        raise error(f"{spec.id}: {error.kind}: {_short(exc, secrets)}", spec.id) from None
    upstream._events = _anthropic_events(first, chunks, spec, translation, upstream)
    return upstream


async def _litellm_chunks(
    response: Any, spec: ModelSpec, secrets: list[str], usage: Usage, litellm: Any
) -> AsyncIterator[Any]:
    try:
        async for chunk in chunks_of(response):
            counted = getattr(chunk, "usage", None)
            if counted:
                usage.prompt_tokens = int(getattr(counted, "prompt_tokens", 0) or 0)
                usage.completion_tokens = int(getattr(counted, "completion_tokens", 0) or 0)
            yield chunk
    except Exception as exc:
        error = _error_class(exc, litellm)
        raise error(f"{spec.id}: {error.kind}: {_short(exc, secrets)}", spec.id) from None


# -- Anthropic itself: as it came ----------------------------------------------------------------


async def _open_native(
    spec: ModelSpec,
    body: dict[str, Any],
    timeout: float,
    secrets: list[str],
    client_key: str | None,
    beta: str | None,
    stream: bool,
) -> Upstream:
    request = dict(body)
    request["model"] = spec.name
    base = (spec.api_base or ANTHROPIC_BASE).rstrip("/")
    headers = {
        "x-api-key": _key(spec, client_key),
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
    }
    if beta:
        headers["anthropic-beta"] = beta
    payload = json.dumps(request).encode()
    response = await _post(spec, base + "/v1/messages", payload, headers, timeout, secrets)
    upstream = Upstream(spec, stream, secrets)
    try:
        if not stream:
            message = json.loads(await _read(response, spec, secrets))
            counted = message.get("usage") or {}
            upstream.usage.prompt_tokens = int(counted.get("input_tokens") or 0)
            upstream.usage.completion_tokens = int(counted.get("output_tokens") or 0)
            upstream.message = message
            return upstream
        pieces = _native_bytes(response, spec, secrets, upstream.usage)
        first = await pieces.__anext__()
    except StopAsyncIteration:
        response.close()
        raise ProviderUnavailable(f"{spec.id}: the provider sent an empty stream", spec.id) from None
    except BaseException:
        response.close()
        raise
    upstream._raw = _chain(first, pieces)
    upstream._close = _closer(response)
    return upstream


async def _native_bytes(
    response: aiohttp.ClientResponse, spec: ModelSpec, secrets: list[str], usage: Usage
) -> AsyncIterator[bytes]:
    """The provider's SSE bytes, whole events at a time, with the usage read on the way."""
    buffer = b""
    try:
        async for chunk in response.content.iter_any():
            buffer += chunk
            end = buffer.rfind(b"\n\n")
            if end < 0:
                continue
            events, buffer = buffer[: end + 2], buffer[end + 2 :]
            _native_usage(events, usage)
            yield events
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _transport_error(spec, exc, secrets) from None
    if buffer:
        yield buffer


def _native_usage(events: bytes, usage: Usage) -> None:
    for line in events.split(b"\n"):
        if not line.startswith(b"data:") or b"usage" not in line:
            continue
        try:
            event = json.loads(line[5:])
        except ValueError:
            continue
        counted = (event.get("message") or {}).get("usage") or event.get("usage") or {}
        if counted.get("input_tokens"):
            usage.prompt_tokens = int(counted["input_tokens"])
        if counted.get("output_tokens"):
            usage.completion_tokens = int(counted["output_tokens"])


# -- counting --------------------------------------------------------------------------------------


def count_tokens(body: dict[str, Any]) -> int:
    """Input tokens of an Anthropic request, by LiteLLM's counter (tiktoken, offline) on its translation."""
    pieces = load()
    source = {k: v for k, v in body.items() if k in ANTHROPIC_TRANSLATED}
    source.setdefault("max_tokens", 1)
    source["model"] = "hosted_vllm/count"
    request, _ = pieces["adapter"].translate_anthropic_to_openai(source, custom_llm_provider="hosted_vllm")
    started = time.monotonic()
    counted = pieces["litellm"].token_counter(
        model="gpt-4o", messages=request.get("messages") or [], tools=request.get("tools")
    )
    log.debug("counted %d tokens in %.1f ms", counted, (time.monotonic() - started) * 1000)
    return int(counted)
