"""Anthropic Messages requests through the router: classify, route, walk the fallbacks, account.

The gateway's use case at the LLM layer. A request is classified into (agent, complexity, request
class), routed by the same pure function ``llm_query`` uses, and walked down its candidates exactly
as ``llm_query`` walks them (``LlmService.fallback_on``), but only until the first piece of an answer
is in hand: after that the answer is the client's, and a failure ends the stream with an Anthropic
``error`` event. Every attempt is a ledger row (caller ``gateway``), a budget refusal too.

    messages = MessagesService(llm_service, agents=lambda name: preference_or_none)
    answer = await messages.open(MessagesCall(body, session_id="..."))   # raises GatewayRefusal
    async for chunk in answer.sse(): ...        # or answer.message for a non-streaming request
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from betty_mcp.core.errors import (
    AllModelsFailed,
    BettyError,
    BudgetExceeded,
    ConfigError,
    ContextWindowExceeded,
    ProviderError,
    ProviderTimeout,
)
from betty_mcp.core.identity import current_caller
from betty_mcp.core.llm_config import Complexity, RequestClass
from betty_mcp.core.secrets import scrub, secret_values
from betty_mcp.llm import anthropic_adapter
from betty_mcp.llm.ledger import Reservation, UsageRecord, reserve
from betty_mcp.llm.models import ModelSpec
from betty_mcp.llm.routing import AgentPreference, Candidate, RouteRequest, estimate_complexity, route
from betty_mcp.llm.service import Hop, LlmService, _larger_context

log = logging.getLogger(__name__)

CALLER = "gateway"
# What an exported subagent's body carries (``betty-mcp export claude-agents``): the Betty agent speaking.
AGENT_MARKER = re.compile(r"<!--\s*betty-agent:\s*([A-Za-z0-9_.\-]+)\s*-->")


def agent_marker(name: str) -> str:
    return f"<!-- betty-agent: {name} -->"


@dataclass(frozen=True)
class MessagesCall:
    """One Anthropic Messages request as the gateway received it."""

    body: dict[str, Any]
    session_id: str | None = None
    client_key: str | None = None  # forwarded only with ``passthrough``, and only to Anthropic
    beta: str | None = None  # the anthropic-beta header, for Anthropic itself


@dataclass(frozen=True)
class Classification:
    agent: str | None
    request_class: RequestClass
    complexity: Complexity
    requested_model: str | None
    prompt_tokens: int  # estimated


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """About four characters a token over system, messages and tools: cheap, for classes and budgets."""
    size = len(json.dumps(body.get("system") or "")) + len(json.dumps(body.get("messages") or []))
    size += len(json.dumps(body.get("tools") or []))
    return size // 4 + 1


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _text(message.get("content"))
            if text.strip():
                return text
    return ""


def find_agent(system: Any) -> str | None:
    """The Betty agent an exported subagent's system prompt names, if any."""
    found = AGENT_MARKER.search(_text(system) if not isinstance(system, str) else system)
    return found.group(1) if found else None


def classify(
    body: dict[str, Any], *, long_context_tokens: int, background_models: list[str]
) -> Classification:
    """(agent, request class, complexity) of an Anthropic Messages request; a pure function.

    long_context: estimated prompt tokens over the threshold; background: a haiku-class model asked for;
    think: ``thinking: {type: enabled}`` (Claude Code's everyday ``adaptive`` is not); default otherwise.
    Complexity: background is simple, think and long_context are complex, default is estimated from the
    last user turn as ``llm_query`` estimates a prompt.
    """
    model = str(body.get("model") or "") or None
    tokens = estimate_prompt_tokens(body)
    thinking = body.get("thinking") or {}
    request_class: RequestClass
    if tokens > long_context_tokens:
        request_class, complexity = "long_context", "complex"
    elif model and any(fnmatch.fnmatchcase(model.lower(), g.lower()) for g in background_models):
        request_class, complexity = "background", "simple"
    elif isinstance(thinking, dict) and thinking.get("type") == "enabled":
        request_class, complexity = "think", "complex"
    else:
        request_class = "default"
        complexity = estimate_complexity(_last_user_text(body.get("messages") or []))
    return Classification(find_agent(body.get("system")), request_class, complexity, model, tokens)


# -- errors the client sees --------------------------------------------------------------------------


class GatewayRefusal(BettyError):
    """A request the gateway answers with an Anthropic error, before any byte of an answer."""

    def __init__(self, message: str, status: int, error_type: str, *, retry: bool, hops: list[Hop]) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retry = retry
        self.hops = hops

    def body(self) -> dict[str, Any]:
        return {"type": "error", "error": {"type": self.error_type, "message": str(self)}}


def _refusal(error: BettyError, hops: list[Hop]) -> GatewayRefusal:
    if isinstance(error, BudgetExceeded):
        return GatewayRefusal(f"betty gateway: {error}", 400, "invalid_request_error", retry=False, hops=hops)
    if isinstance(error, ConfigError):
        return GatewayRefusal(f"betty gateway: {error}", 400, "invalid_request_error", retry=False, hops=hops)
    kind = getattr(error, "kind", "") or ""
    if kind in ("rate_limit",):
        return GatewayRefusal(f"betty gateway: {error}", 429, "rate_limit_error", retry=True, hops=hops)
    if kind in ("server", "timeout", "connection", "not_found", "not_configured", "context_window"):
        return GatewayRefusal(f"betty gateway: {error}", 529, "overloaded_error", retry=True, hops=hops)
    return GatewayRefusal(f"betty gateway: {error}", 502, "api_error", retry=False, hops=hops)


def sse(event: dict[str, Any]) -> bytes:
    return f"event: {event.get('type', 'message')}\ndata: {json.dumps(event)}\n\n".encode()


# -- the answer under way --------------------------------------------------------------------------


@dataclass
class Answer:
    """The answer the walk committed to; ``sse()`` (streaming) or ``message``; accounted once, at the end."""

    upstream: anthropic_adapter.Upstream
    spec: ModelSpec
    hops: list[Hop]
    classification: Classification
    _done: Callable[..., None]
    started: float = field(default_factory=time.monotonic)
    outcome: str = "ok"
    error: str | None = None
    _accounted: bool = False

    @property
    def message(self) -> dict[str, Any] | None:
        return self.upstream.message

    @property
    def dropped(self) -> list[str]:
        return self.upstream.dropped

    async def sse(self) -> AsyncIterator[bytes]:
        """The stream as SSE bytes; after a failure, an ``error`` event ends it."""
        secrets = self.upstream.secrets
        outcome, error = "ok", None
        batch: list[bytes] = []
        try:
            if self.upstream.is_raw:
                async for chunk in self.upstream.raw():
                    yield _scrubbed(chunk, secrets)
            else:
                async for event in self.upstream.events():
                    batch.append(sse(event))
                    if not self.upstream.ready():  # the next event needs the network: send these now
                        yield _scrubbed(b"".join(batch), secrets)
                        batch = []
                if batch:
                    yield _scrubbed(b"".join(batch), secrets)
        except ProviderError as exc:
            outcome, error = exc.kind, str(exc)
            if batch:  # what came before the failure still goes out, then the error
                yield _scrubbed(b"".join(batch), secrets)
            yield sse({"type": "error", "error": {"type": "api_error", "message": f"betty gateway: {exc}"}})
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        except GeneratorExit:
            outcome = "cancelled"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.upstream.aclose()
            self.outcome, self.error = outcome, error
            if outcome == "cancelled":
                self.account()

    def account(self) -> None:
        """Write the answer's ledger row (once): after its last byte has gone, off the client's clock."""
        if not self._accounted:
            self._accounted = True
            self._done(self.upstream, outcome=self.outcome, error=self.error)


def _scrubbed(data: bytes, secrets: list[str]) -> bytes:
    if not secrets:
        return data
    text = data.decode(errors="replace")
    cleaned = scrub(text, secrets)
    return data if cleaned == text else cleaned.encode()


def _with_client_key(
    candidates: list[Candidate], skipped: list[tuple[ModelSpec, str]]
) -> tuple[list[Candidate], list[tuple[ModelSpec, str]]]:
    """With ``passthrough``, Anthropic models skipped for want of a key come back (the client's key will
    do), before the default and the last resort."""
    own = [Candidate(spec, "requested model, client key") for spec, _ in skipped if spec.type == "anthropic"]
    if not own:
        return candidates, skipped
    at = next(
        (i for i, c in enumerate(candidates) if c.reason in ("default", "embedded last resort")),
        len(candidates),
    )
    rest = [(spec, why) for spec, why in skipped if spec.type != "anthropic"]
    return [*candidates[:at], *own, *candidates[at:]], rest


# -- the service -----------------------------------------------------------------------------------


class MessagesService:
    """Anthropic Messages through the ``llm_router`` block, accounted in the usage ledger."""

    def __init__(
        self, llm: LlmService, agents: Callable[[str], AgentPreference | None] | None = None
    ) -> None:
        self.llm = llm
        self.config = llm.config
        self.gateway = llm.config.gateway
        self._agents = agents or (lambda name: None)

    def classify(self, body: dict[str, Any]) -> Classification:
        return classify(
            body,
            long_context_tokens=self.gateway.long_context_tokens,
            background_models=self.gateway.background_models,
        )

    def route_request(self, found: Classification) -> RouteRequest:
        agent = None
        if found.agent:
            agent = self._agents(found.agent) or AgentPreference(name=found.agent)
        return RouteRequest(
            agent=agent,
            complexity=found.complexity,
            request_class=found.request_class,
            requested_model=found.requested_model,
        )

    def _record(
        self,
        call: MessagesCall,
        found: Classification,
        spec: ModelSpec | None,
        started: float,
        *,
        usage: anthropic_adapter.Usage | None = None,
        outcome: str = "ok",
        error: str | None = None,
        hops: list[Hop] | None = None,
        held: Reservation | None = None,
    ) -> None:
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        self.llm.accounts.settle(
            UsageRecord(
                caller=CALLER,
                model=spec.id if spec else (found.requested_model or "?"),
                provider=spec.provider if spec else "-",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=spec.cost(prompt, completion) if spec and usage else None,
                latency_ms=(time.monotonic() - started) * 1000,
                outcome=outcome,
                agent=found.agent,
                fallbacks=tuple(h.as_dict() for h in hops or []),
                error=error,
                session_id=call.session_id,
                request_class=found.request_class,
                user=current_caller().user,
            ),
            held,
        )

    async def _reserve(self, spec: ModelSpec, call: MessagesCall, found: Classification) -> Reservation:
        output = int(call.body.get("max_tokens") or 0)
        estimate = spec.cost(found.prompt_tokens, output) or 0.0
        return await reserve(
            self.llm.accounts, self.llm.budgets, cost_usd=estimate, tokens=found.prompt_tokens + output
        )

    async def open(self, call: MessagesCall) -> Answer:
        """Walk the candidates until one has begun to answer; GatewayRefusal when none can."""
        found = self.classify(call.body)
        walk_started = time.monotonic()
        hops: list[Hop] = []
        try:
            if not self.config.enabled:
                raise ConfigError("llm_router.enabled is false in betty.yaml: LLM calls are switched off")
            planned = route(self.route_request(found), self.llm.models)
        except ConfigError as exc:
            self._record(call, found, None, walk_started, outcome="config", error=str(exc))
            raise _refusal(exc, hops) from None
        candidates: list[Candidate] = list(planned.candidates)
        skipped = list(planned.skipped)
        if self.gateway.passthrough and call.client_key:
            candidates, skipped = _with_client_key(candidates, skipped)
        hops += [Hop(asked, "not_configured", reason) for asked, reason in planned.unresolved]
        hops += [Hop(spec.id, "not_configured", reason) for spec, reason in skipped]
        if not candidates:
            failure = AllModelsFailed(
                "no model is available: " + "; ".join(h.message for h in hops), "not_configured", hops
            )
            self._record(call, found, None, walk_started, outcome="not_configured", error=str(failure))
            raise _refusal(failure, hops)
        limits = self.config.limits
        deadline = limits.deadline_seconds
        while candidates:
            spec = candidates.pop(0).spec
            remaining = deadline - (time.monotonic() - walk_started)
            if remaining <= 0:
                failure = AllModelsFailed(f"deadline of {deadline:g}s reached", "timeout", hops)
                raise _refusal(failure, hops)
            started = time.monotonic()
            try:
                held = await self._reserve(spec, call, found)
            except BudgetExceeded as exc:
                self._record(call, found, spec, started, outcome="budget", error=str(exc), hops=hops)
                raise _refusal(exc, hops) from None
            timeout = min(spec.timeout_seconds or limits.request_timeout_seconds, remaining)
            secrets = secret_values(extra=[spec.key() or ""])
            client_key = call.client_key if self.gateway.passthrough and spec.type == "anthropic" else None
            if client_key:
                secrets.append(client_key)
            try:
                with anyio.fail_after(timeout + 1.0):
                    upstream = await anthropic_adapter.open_upstream(
                        spec,
                        call.body,
                        timeout=timeout,
                        secrets=secrets,
                        client_key=client_key,
                        beta=call.beta,
                    )
            except TimeoutError:
                error: ProviderError = ProviderTimeout(f"{spec.id}: timeout after {timeout:g}s", spec.id)
            except ProviderError as exc:
                error = exc
            except anyio.get_cancelled_exc_class():
                self._record(call, found, spec, started, outcome="cancelled", hops=hops, held=held)
                raise
            else:
                committed = list(hops)

                def done(
                    upstream: anthropic_adapter.Upstream,
                    *,
                    outcome: str,
                    error: str | None = None,
                    spec: ModelSpec = spec,
                    started: float = started,
                    committed: list[Hop] = committed,
                    held: Reservation = held,
                ) -> None:
                    self._record(
                        call,
                        found,
                        spec,
                        started,
                        usage=upstream.usage,
                        outcome=outcome,
                        error=error,
                        hops=committed,
                        held=held,
                    )

                if upstream.dropped:
                    log.debug(
                        "%s: dropped %s (no OpenAI-style provider takes them)", spec.id, upstream.dropped
                    )
                return Answer(upstream, spec, committed, found, done, started)
            hops.append(Hop(spec.id, error.kind, str(error)))
            self._record(
                call, found, spec, started, outcome=error.kind, error=str(error), hops=hops, held=held
            )
            if not isinstance(error, self.llm.fallback_on):
                raise _refusal(AllModelsFailed(str(error), error.kind, hops), hops)
            if isinstance(error, ContextWindowExceeded):
                candidates = [c for c in candidates if _larger_context(c.spec, spec)]
        last = hops[-1]
        failure = AllModelsFailed(
            f"all {len(hops)} candidate model(s) failed; last: {last.message}", last.error_kind, hops
        )
        raise _refusal(failure, hops)

    async def count_tokens(self, body: dict[str, Any]) -> int:
        return await anyio.to_thread.run_sync(anthropic_adapter.count_tokens, body)


__all__ = [
    "AGENT_MARKER",
    "Answer",
    "Classification",
    "GatewayRefusal",
    "MessagesCall",
    "MessagesService",
    "agent_marker",
    "classify",
    "find_agent",
]
