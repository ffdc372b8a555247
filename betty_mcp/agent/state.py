"""The agent loop's data: its limits, its steps, the one state object it mutates, and its result.

Everything here is plain data and JSON-serialisable through ``as_dict()``; the loop itself
lives in ``runtime.py``.

    limits = RunLimits(max_steps=5).resolved(agent.manifest)   # fills timeout and retries
    state = RunState(run_id="r1", agent="api.analyzer", task="...", limits=limits)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from betty_mcp.core.errors import RunLimitReached
from betty_mcp.core.manifests import AgentManifest

RunStatus = Literal["running", "completed", "failed", "budget_exceeded", "timed_out", "cancelled"]
DEFAULT_TIMEOUT_SECONDS = 300.0


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class RunLimits:
    """What one run may spend. ``None`` for timeout and retries means "the agent's own setting".

    ``max_steps`` counts model calls; ``max_retries`` consecutive failed (or refused) skill calls
    end an iterative run (0 behaves like 1: the first failure does).
    """

    max_steps: int = 10
    timeout_seconds: float | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    max_retries: int | None = None

    def resolved(self, manifest: AgentManifest) -> RunLimits:
        handling = manifest.error_handling
        return replace(
            self,
            timeout_seconds=self.timeout_seconds or handling.timeout_seconds or DEFAULT_TIMEOUT_SECONDS,
            max_retries=handling.max_retries if self.max_retries is None else self.max_retries,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def enforce(self, state: RunState, *, before_model_call: bool) -> None:
        """Raise RunLimitReached once ``state`` has used up a limit (checked around every model call)."""
        if before_model_call and state.llm_calls >= self.max_steps:
            raise RunLimitReached(
                f"step limit reached: {self.max_steps} model calls without a final answer", limit="max_steps"
            )
        if self.max_tokens is not None and state.tokens >= self.max_tokens:
            raise RunLimitReached(
                f"max_tokens reached: spent {state.tokens} tokens of {self.max_tokens}", limit="max_tokens"
            )
        if self.max_cost_usd is not None and state.cost_usd >= self.max_cost_usd:
            raise RunLimitReached(
                f"max_cost_usd reached: spent ${state.cost_usd:.4f} of {self.max_cost_usd}",
                limit="max_cost_usd",
            )


@dataclass(frozen=True)
class RunRequest:
    """One agent run asked for: the agent, its task, facts for it, a model override and limits."""

    agent: str
    task: str
    context: dict[str, Any] | None = None
    model: str | None = None
    limits: RunLimits = field(default_factory=RunLimits)

    def as_dict(self) -> dict[str, Any]:
        """As JSON (a queued run's job carries it)."""
        return asdict(self)

    @classmethod
    def of(cls, fields: dict[str, Any]) -> RunRequest:
        return cls(**{**fields, "limits": RunLimits(**(fields.get("limits") or {}))})


@dataclass
class Step:
    """One model call (``kind="llm"``, ``name`` = model id) or one skill call (``name`` = Betty name)."""

    index: int
    kind: Literal["llm", "skill"]
    name: str
    ok: bool
    summary: str
    arguments: Any = None
    tokens: int = 0
    cost_usd: float = 0.0
    ms: float = 0.0
    error: str | None = None
    refused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    status: RunStatus
    run_id: str
    agent: str
    answer: str | None
    steps: list[Step]
    totals: dict[str, Any]
    missing_skills: list[str] = field(default_factory=list)
    models_used: list[str] = field(default_factory=list)
    error: str | None = None
    limit: str | None = None  # which limit ended the run: max_steps, max_tokens, max_cost_usd, a budget name
    trace_path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [s.as_dict() for s in self.steps]
        return data


@dataclass
class RunState:
    """Everything the loop knows about one run; the only mutable state of a run."""

    run_id: str
    agent: str
    task: str
    limits: RunLimits
    context: dict[str, Any] | None = None
    model_override: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    tokens: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0
    skill_calls: int = 0
    consecutive_failures: int = 0
    status: RunStatus = "running"
    answer: str | None = None
    error: str | None = None
    limit: str | None = None
    missing_skills: list[str] = field(default_factory=list)
    models_used: list[str] = field(default_factory=list)
    started_at: str = field(default_factory=now_iso)
    started: float = field(default_factory=time.monotonic)
    _next_index: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    def next_index(self) -> int:
        self._next_index += 1
        return self._next_index

    def add_step(self, step: Step) -> None:
        self.steps.append(step)
        if step.kind == "llm":
            self.tokens += step.tokens
            self.cost_usd += step.cost_usd
            if step.ok and step.name not in self.models_used:
                self.models_used.append(step.name)

    def finish(
        self,
        status: RunStatus,
        *,
        answer: str | None = None,
        error: str | None = None,
        limit: str | None = None,
    ) -> None:
        """Set the final status once; later calls (e.g. a timeout racing a failure) are ignored."""
        if not self.running:
            return
        self.status, self.error, self.limit = status, error, limit
        if answer is not None:
            self.answer = answer

    def totals(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8),
            "llm_calls": self.llm_calls,
            "skill_calls": self.skill_calls,
            "steps": len(self.steps),
            "ms": round((time.monotonic() - self.started) * 1000, 1),
        }

    def result(self, trace_path: str | None = None) -> RunResult:
        return RunResult(
            status=self.status,
            run_id=self.run_id,
            agent=self.agent,
            answer=self.answer,
            steps=sorted(self.steps, key=lambda s: s.index),
            totals=self.totals(),
            missing_skills=list(self.missing_skills),
            models_used=list(self.models_used),
            error=self.error,
            limit=self.limit,
            trace_path=trace_path,
        )
