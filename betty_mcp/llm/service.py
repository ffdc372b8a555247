"""Asking a model: route, check budgets, walk the fallback chain, account for every call.

Fallback moves to the next candidate at once (no back-off waits) on retryable errors (429,
5xx, timeouts, refused connections, unknown model); a context-window error moves to a model
with a larger window; authentication and 400 errors stop the walk with a clear error. Every
hop is recorded in the result and in the ledger. The whole walk has one deadline.

    service = LlmService(config, store)      # store: the ledger and budget counters (betty_mcp.store)
    result = await service.chat(ChatRequest(messages), RouteRequest(prompt=...), caller="llm_query")
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.to_thread

from betty_mcp.core.errors import (
    AllModelsFailed,
    ConfigError,
    ContextWindowExceeded,
    ProviderError,
    ProviderTimeout,
    RetryableProviderError,
)
from betty_mcp.core.identity import current_caller
from betty_mcp.core.llm_config import BudgetConfig, LlmRouterConfig, UserBudgetConfig
from betty_mcp.core.secrets import known_secrets_and, register_secret_names, scrub
from betty_mcp.llm.ledger import Accounts, Budgets, Reservation, UsageRecord, UserBudget, reserve
from betty_mcp.llm.models import ModelCatalog, ModelSpec
from betty_mcp.llm.routing import Candidate, RouteRequest, route
from betty_mcp.llm.types import Backend, ChatRequest, Completion, StreamSink, ToolCall


@dataclass
class Hop:
    model: str
    error_kind: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"model": self.model, "error_kind": self.error_kind, "message": self.message}


@dataclass
class ChatResult:
    completion: Completion
    spec: ModelSpec
    latency_ms: float
    complexity: str
    fallbacks: list[Hop] = field(default_factory=list)


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """About four characters a token: enough to refuse a call a budget clearly cannot pay for."""
    return sum(len(json.dumps(m.get("content") or "")) for m in messages) // 4 + 1


class LlmService:
    # The failures that move the walk to the next model; any other ends it at once.
    fallback_on: tuple[type[ProviderError], ...] = (RetryableProviderError,)

    def __init__(
        self,
        config: LlmRouterConfig,
        accounts: Accounts,
        backends: dict[str, Backend] | None = None,
        *,
        role_budgets: Mapping[str, UserBudgetConfig | None] | None = None,
    ) -> None:
        """``role_budgets``: each role's user budget (``roles.<r>.budgets`` in betty.yaml)."""
        self.config = config
        register_secret_names(config.key_env_names())  # a key is a secret whatever its variable's name
        self.models = ModelCatalog(config)
        self.accounts = accounts
        self.budgets = budgets_of(config.limits.budgets, role_budgets or {})
        self._backends = backends or {}

    def backend(self, spec: ModelSpec) -> Backend:
        kind = "embedded" if spec.type == "embedded" else "litellm"
        if kind not in self._backends:
            if kind == "embedded":
                from betty_mcp.llm.embedded import EmbeddedBackend

                self._backends[kind] = EmbeddedBackend()
            else:
                from betty_mcp.llm.litellm_adapter import LiteLLMBackend

                self._backends[kind] = LiteLLMBackend()
        return self._backends[kind]

    async def warm_up(self) -> None:
        """Open the ledger, and load the backend that models other than the embedded one go through
        (LiteLLM's import: seconds), so that the first call costs what the next ones do."""
        await self.accounts.spend(run_id="warm-up")
        spec = next((s for s in self.models.all() if s.type != "embedded"), None)
        if spec is not None and (warm_up := getattr(self.backend(spec), "warm_up", None)) is not None:
            await warm_up(spec)

    async def _reserve(self, spec: ModelSpec, request: ChatRequest, run_id: str | None) -> Reservation:
        prompt = estimate_tokens(request.messages)
        output = request.max_tokens or 0
        estimate = spec.cost(prompt, output) or 0.0
        return await reserve(
            self.accounts, self.budgets, cost_usd=estimate, tokens=prompt + output, run_id=run_id
        )

    def _record(
        self,
        spec: ModelSpec,
        started: float,
        caller: str,
        agent: str | None,
        run_id: str | None,
        reservation: Reservation,
        *,
        completion: Completion | None = None,
        outcome: str = "ok",
        error: str | None = None,
        hops: list[Hop] | None = None,
    ) -> None:
        record = UsageRecord(
            caller=caller,
            model=spec.id,
            provider=spec.provider,
            prompt_tokens=completion.prompt_tokens if completion else 0,
            completion_tokens=completion.completion_tokens if completion else 0,
            cost_usd=completion.cost_usd if completion else None,
            latency_ms=(time.monotonic() - started) * 1000,
            outcome=outcome,
            agent=agent,
            run_id=run_id,
            fallbacks=tuple(h.as_dict() for h in hops or []),
            error=error,
            user=current_caller().user,
        )
        # Not awaited: SQLite writes inline (well under a millisecond), PostgreSQL in the background.
        self.accounts.settle(record, reservation)

    async def chat(
        self,
        request: ChatRequest,
        route_request: RouteRequest,
        *,
        caller: str,
        agent: str | None = None,
        run_id: str | None = None,
        stream: StreamSink | None = None,
        deadline_seconds: float | None = None,
    ) -> ChatResult:
        """Answer with the first candidate that can; raises AllModelsFailed, BudgetExceeded or ConfigError."""
        if not self.config.enabled:
            raise ConfigError("llm_router.enabled is false in betty.yaml: LLM calls are switched off")
        planned = route(route_request, self.models)
        hops = [Hop(asked, "not_configured", reason) for asked, reason in planned.unresolved]
        hops += [Hop(spec.id, "not_configured", reason) for spec, reason in planned.skipped]
        candidates: list[Candidate] = list(planned.candidates)
        if not candidates:
            raise AllModelsFailed(
                "no model is available: " + "; ".join(h.message for h in hops), "not_configured", hops
            )
        deadline = deadline_seconds or self.config.limits.deadline_seconds
        sink = stream or StreamSink()
        walk_started = time.monotonic()
        while candidates:
            spec = candidates.pop(0).spec
            remaining = deadline - (time.monotonic() - walk_started)
            if remaining <= 0:
                raise AllModelsFailed(
                    f"deadline of {deadline:g}s reached after {len(hops)} attempt(s)", "timeout", hops
                )
            held = await self._reserve(spec, request, run_id)
            # Whole seconds (a float: LiteLLM is slower with an int): LiteLLM keys its HTTP clients on the
            # timeout, so "the time left" to the microsecond would build (and keep) a client per call.
            timeout = float(
                math.ceil(min(spec.timeout_seconds or self.config.limits.request_timeout_seconds, remaining))
            )
            attempt = replace(request, timeout_seconds=timeout)
            secrets = known_secrets_and(spec.key() or "")
            sink.start(spec.id, secrets)
            started = time.monotonic()
            try:
                with anyio.fail_after(timeout + 1.0):  # a backend that ignores its own timeout
                    completion = await self.backend(spec).complete(spec, attempt, sink)
            except TimeoutError:
                error: ProviderError = ProviderTimeout(f"{spec.id}: timeout after {timeout:g}s", spec.id)
            except ProviderError as exc:
                error = exc
            except anyio.get_cancelled_exc_class():
                self._record(spec, started, caller, agent, run_id, held, outcome="cancelled", hops=hops)
                raise
            else:
                completion = _scrubbed(completion, secrets)  # a provider may echo a key in its answer
                self._record(spec, started, caller, agent, run_id, held, completion=completion, hops=hops)
                return ChatResult(
                    completion, spec, (time.monotonic() - started) * 1000, planned.complexity, hops
                )
            hops.append(Hop(spec.id, error.kind, str(error)))
            self._record(
                spec, started, caller, agent, run_id, held, outcome=error.kind, error=str(error), hops=hops
            )
            if not isinstance(error, self.fallback_on):
                raise AllModelsFailed(str(error), error.kind, hops)
            if isinstance(error, ContextWindowExceeded):
                candidates = [c for c in candidates if _larger_context(c.spec, spec)]
        last = hops[-1]
        raise AllModelsFailed(
            f"all {len(hops)} candidate model(s) failed; last: {last.message}", last.error_kind, hops
        )


def budgets_of(config: BudgetConfig, roles: Mapping[str, UserBudgetConfig | None]) -> Budgets:
    """The ledger's budgets from betty.yaml's: ``llm_router.limits.budgets`` and ``roles.<r>.budgets``."""
    per_user = config.per_user
    return Budgets(
        **config.model_dump(exclude={"per_user"}),
        per_user=UserBudget(per_user.day_usd, per_user.day_tokens) if per_user else None,
        per_role={
            name: UserBudget(b.day_usd, b.day_tokens, setting=f"roles.{name}.budgets")
            for name, b in roles.items()
            if b is not None
        },
    )


def _scrubbed(completion: Completion, secrets: list[str]) -> Completion:
    """``completion`` with every secret replaced in its text and its tool calls' arguments."""
    if not secrets:
        return completion
    completion.text = scrub(completion.text, secrets)
    completion.tool_calls = [
        ToolCall(c.id, scrub(c.name, secrets), scrub(c.arguments, secrets)) for c in completion.tool_calls
    ]
    return completion


def _larger_context(candidate: ModelSpec, failed: ModelSpec) -> bool:
    if candidate.context_window is None:
        return False
    return failed.context_window is None or candidate.context_window > failed.context_window


__all__ = ["ChatResult", "Hop", "LlmService"]
