"""``llm_consensus``: one question to several models at once, with stances, an optional second round
and an optional judge.

Every call is an ordinary routed call (``LlmService.chat``: its own fallbacks, deadline, budget check
and ledger row); the calls of one round run concurrently, and every row carries the consensus id.
Before anything is sent, ``Consensus.plan`` resolves the models and prices the worst case (estimated
prompt tokens and ``max_tokens`` out for every call of every round and the judge, each at the dearest
model its fallback chain may reach, at configured prices) and checks it against ``max_cost_usd``,
``token_limit`` and the ledger budgets: a fan-out that could break one is refused whole.

A model that fails leaves an answer with its error and the others still count; the consensus fails
only when every model does. ``blind`` (the default) keeps model names out of what other models and the
judge are shown: answers are "Answer 1", "Answer 2"... with their stances.

    request = ConsensusRequest("Tabs or spaces?", models=("gpt-4o", "sonnet"))
    consensus = await Consensus.plan(service, request, consensus_id=new_run_id(), caller="llm_consensus")
    result = await consensus.run()   # {"answers": [...], "judge": ..., "totals": ..., "status": ...}
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from betty_mcp.core.errors import AllModelsFailed, ArgumentsError, BettyError, BudgetExceeded, ConfigError
from betty_mcp.core.secrets import scrub
from betty_mcp.llm.ledger import check_batch, tagged
from betty_mcp.llm.models import ModelCatalog, ModelSpec
from betty_mcp.llm.routing import RouteRequest, route
from betty_mcp.llm.service import LlmService, estimate_tokens
from betty_mcp.llm.types import ChatRequest

KIND = "llm.consensus"  # what run tools and traces call a consensus run
DEFAULT_MAX_TOKENS = 1024  # sent to every model, so the worst case the pre-check prices is a real bound
DEFAULT_MODEL_COUNT = 5
MAX_MODELS = 10
STANCES = {
    "for": "Argue FOR: make the strongest honest case in favour (of the proposal, or for answering yes), "
    "and say what would change your mind.",
    "against": "Argue AGAINST: make the strongest honest case against (the proposal, or for answering "
    "no), and say what would change your mind.",
    "neutral": "Stay neutral: weigh both sides evenly before you conclude.",
}
REVISE = (
    "Other members of the panel answered the same question. Their first answers:\n\n{others}\n\n"
    "Reconsider your answer in their light: keep what holds, correct what they show to be wrong, and "
    "give your final answer in full{stance}."
)
JUDGE_SYSTEM = (
    "You judge a panel: {count} models answered the same question independently{stances}. Compare their "
    "answers; do not invent a new answer unless all of them are wrong. Reply with one JSON object with "
    'three string fields: "agreement" (what the answers agree on), "disagreement" (where and why they '
    'differ) and "recommendation" (the answer you recommend, and why).'
)
VERDICT_FIELDS = ("agreement", "disagreement", "recommendation")
VERDICT_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "consensus_verdict",
        "schema": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in VERDICT_FIELDS},
            "required": list(VERDICT_FIELDS),
            "additionalProperties": False,
        },
    },
}
# Words a revision or verdict prompt adds around the answers it quotes (a generous estimate).
PROMPT_OVERHEAD_TOKENS = 200

# Called as each call ends: the progress line ("2/3 answered: openai/gpt-4o") and the trace event.
Observer = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ConsensusRequest:
    prompt: str
    models: tuple[str, ...]  # as asked: aliases or provider/model (``default_models`` when none given)
    stances: tuple[str | None, ...] = ()  # one per model (``align_stances``); for | against | neutral | text
    system_prompt: str | None = None
    judge: str | None = None
    blind: bool = True
    rounds: int = 1
    max_cost_usd: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS  # per answer (and for the judge)
    temperature: float | None = None
    token_limit: int | None = None  # tokens the whole fan-out may use (an agent run's remaining max_tokens)

    def stance(self, index: int) -> str | None:
        return self.stances[index] if index < len(self.stances) else None


def default_models(catalog: ModelCatalog, configured: Sequence[str] = ()) -> tuple[str, ...]:
    """``configured`` (``llm_router.consensus.models``) if given; else the first model with its key of
    each provider, in configuration order, at most five (topped up to two from the other configured
    models when fewer providers are ready)."""
    if configured:
        return tuple(configured[:MAX_MODELS])
    ready = [s for s in catalog.all() if s.available and s.type != "embedded"]
    picked: list[str] = []
    for spec in ready:
        if spec.provider not in {catalog.specs[p].provider for p in picked}:
            picked.append(spec.id)
    picked = picked[:DEFAULT_MODEL_COUNT]
    picked += [s.id for s in ready if s.id not in picked][: max(0, 2 - len(picked))]
    if not picked:
        raise ConfigError(
            "llm_consensus has no models to ask: no provider in llm_router is configured with its key; "
            "name the models with 'models'"
        )
    return tuple(picked)


def align_stances(
    models: Sequence[str], stances: Sequence[str | None] | Mapping[str, str] | None, catalog: ModelCatalog
) -> tuple[str | None, ...]:
    """One stance per model: a list in the models' order, or an object keyed by a model as given
    (or its provider/model id); ArgumentsError for a stance naming no model of the consensus,
    ConfigError for an unknown model."""
    if not stances:
        return ()
    if not isinstance(stances, Mapping):
        if len(stances) > len(models):
            raise ArgumentsError(f"{len(stances)} stances for {len(models)} models; give at most one each")
        return tuple(s or None for s in stances)
    names = [{m, catalog.resolve(m).id} for m in models]  # as given, and as provider/model
    aligned: list[str | None] = [None] * len(models)
    for key, stance in stances.items():
        hits = [i for i, known in enumerate(names) if key in known]
        if not hits:
            raise ArgumentsError(
                f"a stance is given for '{key}', which is not among the models: {', '.join(models)}"
            )
        for i in hits:
            aligned[i] = stance or None
    return tuple(aligned)


def stance_instruction(stance: str | None) -> str | None:
    if not stance:
        return None
    return STANCES.get(stance.strip().lower()) or f"Take this stance: {stance.strip()}"


@dataclass
class Answer:
    """One model's answer in one round (or the judge's verdict), as results show it."""

    model: str  # as asked
    stance: str | None
    round: int
    state: str = "pending"  # pending | answered | failed
    model_used: str | None = None
    provider: str | None = None
    response: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_ms: float = 0.0
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None

    @property
    def answered(self) -> bool:
        return self.state == "answered"

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_used": self.model_used,
            "provider": self.provider,
            "stance": self.stance,
            "round": self.round,
            "response": self.response,
            "tokens": {
                "prompt": self.prompt_tokens,
                "completion": self.completion_tokens,
                "total": self.prompt_tokens + self.completion_tokens,
            },
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 1),
            "fallbacks": self.fallbacks,
            "error": self.error,
            "error_kind": self.error_kind,
        }


@dataclass
class Verdict:
    """The judge's synthesis: JSON fields when it answered in JSON, else its text as the recommendation."""

    answer: Answer
    agreement: str | None = None
    disagreement: str | None = None
    recommendation: str | None = None
    format: str | None = None  # json | text
    note: str | None = None  # why the text fallback, or how the judge was asked again

    def as_dict(self) -> dict[str, Any]:
        data = self.answer.as_dict()
        del data["stance"], data["round"]
        return {
            **data,
            "agreement": self.agreement,
            "disagreement": self.disagreement,
            "recommendation": self.recommendation,
            "format": self.format,
            "note": self.note,
        }


@dataclass(frozen=True)
class _Slot:
    index: int
    asked: str
    spec: ModelSpec | None  # None: not callable as configured (``problem`` says why)
    stance: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Estimate:
    """The worst case the pre-check priced: every call, at ``max_tokens`` out."""

    call_costs: tuple[float, ...]
    tokens: int
    unpriced: tuple[str, ...]  # models (or fallbacks) without a configured price: counted as $0

    def as_dict(self) -> dict[str, Any]:
        return {
            "worst_case_usd": round(sum(self.call_costs), 8),
            "worst_case_tokens": self.tokens,
            "calls": len(self.call_costs),
            "unpriced": list(self.unpriced),
        }


class Consensus:
    """One fan-out, planned (``plan``), then run (``run``); ``snapshot`` shows it at any moment."""

    def __init__(
        self,
        service: LlmService,
        request: ConsensusRequest,
        slots: list[_Slot],
        judge: ModelSpec | None,
        estimate: Estimate,
        *,
        consensus_id: str,
        caller: str,
        agent: str | None,
        run_id: str | None,
    ) -> None:
        self.service = service
        self.request = request
        self.slots = slots
        self.judge_spec = judge
        self.estimate = estimate
        self.id = consensus_id
        self.caller = caller
        self.agent = agent
        self.run_id = run_id
        self.status = "running"
        self.error: str | None = None
        self.first = [Answer(s.asked, s.stance, 1) for s in slots]
        self.revised: dict[int, Answer] | None = None  # round 2, by slot: the models that answered round 1
        self.verdict: Verdict | None = None
        self.steps: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.wall_ms: float | None = None

    # -- planning ---------------------------------------------------------------------------------

    @classmethod
    async def plan(
        cls,
        service: LlmService,
        request: ConsensusRequest,
        *,
        consensus_id: str,
        caller: str = "llm_consensus",
        agent: str | None = None,
        run_id: str | None = None,
    ) -> Consensus:
        """Resolve every model and check the worst case before anything is sent: ConfigError for an
        unknown model, BudgetExceeded (naming the budget and by how much) for a fan-out that could pass
        ``max_cost_usd``, ``token_limit`` or a ledger budget."""
        if not service.config.enabled:
            raise ConfigError("llm_router.enabled is false in betty.yaml: LLM calls are switched off")
        if not request.models:
            raise ArgumentsError("llm_consensus needs at least one model")
        if len(request.models) > MAX_MODELS:
            raise ArgumentsError(
                f"llm_consensus asks at most {MAX_MODELS} models; {len(request.models)} given"
            )
        if request.rounds not in (1, 2):
            raise ArgumentsError(f"rounds must be 1 or 2, not {request.rounds}")
        catalog = service.models
        slots = [
            _slot(i, name, request.stance(i), catalog) for i, name in enumerate(request.models)
        ]  # an unknown model raises here
        judge = catalog.resolve(request.judge) if request.judge else None
        if judge is not None and not judge.available:
            raise ConfigError(f"judge '{request.judge}' needs the environment variable {judge.api_key_env}")
        estimate = _estimate(request, slots, judge, catalog)
        what = f"this consensus ({len(estimate.call_costs)} calls)"
        total = sum(estimate.call_costs)
        if request.max_cost_usd is not None and total > request.max_cost_usd + 1e-9:
            raise BudgetExceeded(
                f"{what} refused: max_cost_usd of ${request.max_cost_usd:g} would be passed by "
                f"${total - request.max_cost_usd:.6f} (the worst case is ${total:.6f}: "
                f"{request.max_tokens} tokens out per call at configured prices); ask fewer models, "
                "lower max_tokens or raise max_cost_usd",
                budget="max_cost_usd",
            )
        if request.token_limit is not None and estimate.tokens > request.token_limit:
            raise BudgetExceeded(
                f"{what} refused: the run's remaining {request.token_limit:,} tokens would be passed by "
                f"{estimate.tokens - request.token_limit:,} (the worst case is {estimate.tokens:,} tokens)",
                budget="max_tokens",
            )
        await check_batch(
            service.accounts,
            service.budgets,
            call_costs=estimate.call_costs,
            estimated_tokens=estimate.tokens,
            run_id=run_id,
            what=what,
        )
        return cls(
            service,
            request,
            slots,
            judge,
            estimate,
            consensus_id=consensus_id,
            caller=caller,
            agent=agent,
            run_id=run_id,
        )

    # -- running ----------------------------------------------------------------------------------

    async def run(self, observe: Observer | None = None) -> dict[str, Any]:
        """Ask every model (then revise, then judge, as asked); the result, also when some failed.

        Cancelling stops every outstanding call (each ends as a ``cancelled`` ledger row)."""
        try:
            with tagged(consensus_id=self.id):
                first = self.first
                await self._round(dict(enumerate(first)), observe)
                if self.request.rounds == 2 and sum(a.answered for a in first) >= 2:
                    self.revised = {
                        i: Answer(a.model, a.stance, 2) for i, a in enumerate(first) if a.answered
                    }
                    await self._round(self.revised, observe)
                if self.judge_spec is not None and any(a.answered for a in first):
                    await self._judge(observe)
            answered = [a for a in self.answers() if a.answered]
            self.status = "completed" if answered else "failed"
            if not answered:
                self.error = f"every model failed ({len(first)}): " + "; ".join(
                    f"{a.model}: {a.error_kind}" for a in first
                )
        except anyio.get_cancelled_exc_class():
            self.status, self.error = "cancelled", "the consensus was cancelled"
            for a in self._calls():
                if a.state == "pending":
                    a.state, a.error, a.error_kind = "failed", "cancelled", "cancelled"
            raise
        finally:
            self.wall_ms = (time.monotonic() - self.started) * 1000
        return self.snapshot()

    async def _round(self, answers: dict[int, Answer], observe: Observer | None) -> None:
        """Ask the models of ``answers`` (by slot) concurrently; each reports as it ends."""
        done = [0]

        async def one(slot: _Slot, answer: Answer) -> None:
            await self._call(slot.spec, self._messages(slot, answer.round), answer, slot.problem)
            done[0] += 1
            verb = "answered" if answer.round == 1 else "revised"
            line = f"{done[0]}/{len(answers)} {verb}: {answer.model_used or answer.model}"
            if not answer.answered:
                line += f" (failed: {answer.error_kind})"
            await self._observed(
                observe, line if answer.round == 1 else "round 2: " + line, answer, slot.index
            )

        async with anyio.create_task_group() as tg:
            for index, answer in answers.items():
                tg.start_soon(one, self.slots[index], answer)

    async def _judge(self, observe: Observer | None) -> None:
        spec = self.judge_spec
        assert spec is not None and self.request.judge is not None
        answer = Answer(self.request.judge, None, 0)
        verdict = self.verdict = Verdict(answer)
        messages = self._judge_messages()
        await self._call(spec, messages, answer, None, response_format=VERDICT_FORMAT)
        if answer.error_kind == "bad_request":  # a model without structured output: ask for the text
            verdict.note = f"the judge refused response_format ({answer.error}); asked again for JSON text"
            answer.state, answer.error, answer.error_kind = "pending", None, None
            await self._call(spec, messages, answer, None)
        if answer.answered:
            _read_verdict(verdict)
        line = f"judge: {answer.model_used or answer.model}"
        line += f" ({verdict.format})" if answer.answered else f" (failed: {answer.error_kind})"
        await self._observed(observe, line, answer, None)

    async def _call(
        self,
        spec: ModelSpec | None,
        messages: list[dict[str, Any]],
        answer: Answer,
        problem: str | None,
        *,
        response_format: dict[str, Any] | None = None,
    ) -> None:
        if spec is None:
            answer.state, answer.error, answer.error_kind = "failed", problem, "not_configured"
            return
        request = ChatRequest(
            messages=messages,
            temperature=self.request.temperature,
            max_tokens=self.request.max_tokens,
            response_format=response_format,
        )
        routing = RouteRequest(
            model=spec.id, prompt=self.request.prompt, structured=response_format is not None
        )
        started = time.monotonic()
        try:
            result = await self.service.chat(
                request, routing, caller=self.caller, agent=self.agent, run_id=self.run_id
            )
        except BettyError as exc:
            hops = exc.hops if isinstance(exc, AllModelsFailed) else []
            answer.state, answer.error = "failed", scrub(str(exc))
            answer.error_kind = getattr(exc, "kind", None) or exc.code or "error"
            answer.fallbacks = [h.as_dict() for h in hops]
            answer.latency_ms += (time.monotonic() - started) * 1000
            return
        completion = result.completion
        answer.state = "answered"
        answer.model_used, answer.provider = result.spec.id, result.spec.provider
        answer.response = completion.text
        answer.prompt_tokens += completion.prompt_tokens
        answer.completion_tokens += completion.completion_tokens
        if completion.cost_usd is not None:
            answer.cost_usd = (answer.cost_usd or 0.0) + completion.cost_usd
        answer.latency_ms += result.latency_ms
        answer.fallbacks = [h.as_dict() for h in result.fallbacks]

    async def _observed(self, observe: Observer | None, line: str, answer: Answer, slot: int | None) -> None:
        """Record the call as a step and tell ``observe``; ``slot`` is the model's place (None: the judge)."""
        kind = "judge" if slot is None else f"round {answer.round} answer"
        summary = (
            f"{kind}" + (f" ({answer.stance})" if answer.stance else "")
            if answer.answered
            else f"{kind} failed: {answer.error}"
        )
        step = {
            "index": len(self.steps) + 1,
            "kind": "llm",
            "name": answer.model_used or answer.model,
            "ok": answer.answered,
            "summary": summary[:300],
            "arguments": None,
            "tokens": answer.prompt_tokens + answer.completion_tokens,
            "cost_usd": answer.cost_usd or 0.0,
            "ms": round(answer.latency_ms, 1),
            "error": answer.error,
            "refused": False,
        }
        self.steps.append(step)
        if observe is not None:
            event = {"slot": slot, "judge": slot is None, "line": line, **answer.as_dict()}
            await observe(line, event)

    # -- prompts ----------------------------------------------------------------------------------

    def _messages(self, slot: _Slot, round_: int) -> list[dict[str, Any]]:
        system = "\n\n".join(p for p in (self.request.system_prompt, stance_instruction(slot.stance)) if p)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": self.request.prompt})
        if round_ == 1:
            return messages
        own = self.first[slot.index]
        others = [a for i, a in enumerate(self.first) if i != slot.index and a.answered]
        keep = " (keep your assigned stance)" if slot.stance else ""
        messages.append({"role": "assistant", "content": own.response or ""})
        messages.append({"role": "user", "content": REVISE.format(others=self._quote(others), stance=keep)})
        return messages

    def _judge_messages(self) -> list[dict[str, Any]]:
        answers = [a for a in self.answers() if a.answered]
        with_stances = any(a.stance for a in answers)
        system = JUDGE_SYSTEM.format(
            count=len(answers), stances=", some arguing an assigned stance" if with_stances else ""
        )
        user = (
            f"The question:\n{self.request.prompt}\n\nThe answers:\n\n{self._quote(answers)}\n\n"
            "Reply with the JSON object only."
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _quote(self, answers: list[Answer]) -> str:
        """The answers as other models see them: numbered, with stances, named only when not blind."""
        parts = []
        for n, a in enumerate(answers, 1):
            head = f"Answer {n}" + ("" if self.request.blind else f" (from {a.model_used or a.model})")
            if a.stance:
                head += f" [stance: {a.stance}]"
            parts.append(f"{head}:\n{a.response or ''}")
        return "\n\n".join(parts)

    # -- the result -------------------------------------------------------------------------------

    def answers(self) -> list[Answer]:
        """Each model's final answer: its revision when it gave one, else its first answer."""
        revised = self.revised or {}
        return [revised[i] if i in revised and revised[i].answered else a for i, a in enumerate(self.first)]

    def _calls(self) -> list[Answer]:
        """Every call made or to be made: first answers, revisions, the judge."""
        revised = list((self.revised or {}).values())
        return [*self.first, *revised, *([self.verdict.answer] if self.verdict else [])]

    def snapshot(self) -> dict[str, Any]:
        """The result so far (``status`` running) or the final one; JSON-ready."""
        final = self.answers()
        answers = []
        for i, a in enumerate(final):
            data = a.as_dict()
            revision = (self.revised or {}).get(i)
            if revision is not None and revision.state == "failed":
                data["revision_error"] = revision.error
            answers.append(data)
        calls = self._calls()
        prompt = sum(a.prompt_tokens for a in calls)
        completion = sum(a.completion_tokens for a in calls)
        wall = self.wall_ms if self.wall_ms is not None else (time.monotonic() - self.started) * 1000
        result: dict[str, Any] = {
            "run_id": self.id,
            "consensus_id": self.id,
            "agent": KIND,
            "status": self.status,
            "answers": answers,
            "judge": self.verdict.as_dict() if self.verdict else None,
            "answer": self.verdict.recommendation if self.verdict else None,
            "totals": {
                "tokens": prompt + completion,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cost_usd": round(sum(a.cost_usd or 0.0 for a in calls), 8),
                "unpriced_calls": sum(a.answered and a.cost_usd is None for a in calls),
                "wall_ms": round(wall, 1),
                "calls": sum(a.state != "pending" for a in calls),
                "answered": sum(a.answered for a in final),
                "failed": sum(a.state == "failed" for a in final),
                "steps": len(self.steps),
            },
            "steps": list(self.steps),
            "estimate": self.estimate.as_dict(),
            "error": self.error,
        }
        if self.revised is not None:
            result["first_round"] = [a.as_dict() for a in self.first]
        return result

    def heartbeat(self) -> str:
        first = self.first
        return f"{KIND}: running, {sum(a.state != 'pending' for a in first)}/{len(first)} answered"


def _slot(index: int, name: str, stance: str | None, catalog: ModelCatalog) -> _Slot:
    spec = catalog.resolve(name)  # ConfigError for an unknown model: the whole consensus is refused
    if not spec.available:
        problem = f"{spec.id} needs the environment variable {spec.api_key_env}, which is not set"
        return _Slot(index, name, None, stance, problem)
    return _Slot(index, name, spec, stance)


def _estimate(
    request: ConsensusRequest, slots: list[_Slot], judge: ModelSpec | None, catalog: ModelCatalog
) -> Estimate:
    """Every call's worst case: estimated prompt tokens plus ``max_tokens`` out, at the dearest model of
    its fallback chain (configured prices; a model without one counts as $0 and is listed)."""
    out = request.max_tokens
    callable_slots = [s for s in slots if s.spec is not None]
    n = len(callable_slots)
    base = estimate_tokens([{"content": request.prompt}, {"content": request.system_prompt or ""}])
    calls: list[tuple[ModelSpec, int]] = []
    for slot in callable_slots:
        assert slot.spec is not None
        first = base + len(stance_instruction(slot.stance) or "") // 4
        calls.append((slot.spec, first))
        if request.rounds == 2 and n >= 2:  # its own answer and the others' quoted back
            calls.append((slot.spec, first + n * out + PROMPT_OVERHEAD_TOKENS))
    if judge is not None and n:
        calls.append((judge, base + n * out + PROMPT_OVERHEAD_TOKENS))
    costs: list[float] = []
    unpriced: list[str] = []
    tokens = 0
    for spec, prompt in calls:
        chain = [c.spec for c in route(RouteRequest(model=spec.id), catalog).candidates]
        priced = [c.cost(prompt, out) for c in chain]
        unpriced += [
            c.id for c, cost in zip(chain, priced, strict=True) if cost is None and c.id not in unpriced
        ]
        costs.append(max((p for p in priced if p is not None), default=0.0))
        tokens += prompt + out
    return Estimate(tuple(costs), tokens, tuple(unpriced))


_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def _read_verdict(verdict: Verdict) -> None:
    """The judge's JSON fields, or (its answer not being that JSON) its text as the recommendation."""
    text = verdict.answer.response or ""
    problem = None
    data: Any = None
    for candidate in (text.strip(), *(m.group(0) for m in _OBJECT.finditer(text))):
        try:
            data = json.loads(candidate)
            break
        except ValueError as exc:
            problem = f"not valid JSON ({exc})"
    if isinstance(data, dict) and any(isinstance(data.get(f), str) for f in VERDICT_FIELDS):
        verdict.format = "json"
        for name in VERDICT_FIELDS:
            value = data.get(name)
            setattr(verdict, name, value if isinstance(value, str) else None)
        return
    if data is not None:
        problem = f"JSON without {', '.join(VERDICT_FIELDS)}"
    verdict.format = "text"
    verdict.recommendation = text
    reason = f"the judge's answer is {problem}: its text is the recommendation"
    verdict.note = f"{verdict.note}; {reason}" if verdict.note else reason
