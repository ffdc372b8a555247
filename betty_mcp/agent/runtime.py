"""The agent loop: a Betty agent's model calls its allowed skills until it can answer.

One ``RunState`` holds the loop's state; limits are checked before and after every model
call. Each turn the model sees the agent's skills as function tools (the same names and
schemas as the MCP tools) or, for a model without native tool calling, the JSON plan format
of ``prompt.py``. Requested calls are vetted (the tool exists, the agent may use it, the
arguments match its schema) and refused otherwise: a refusal goes back to the model as the
call's result and nothing refused ever runs. Calls of one turn run concurrently.

- ``iterative``: loop until the model answers without calls; ``max_retries`` consecutive failed
  or refused skill calls end the run as failed (a success resets the count).
- ``oneshot``: one planning turn whose calls run, then one final turn without tools.

Statuses: completed, failed (skills kept failing, or the model failed in a way no fallback
fixes), budget_exceeded (max_steps, max_tokens, max_cost_usd, or a ledger budget; ``limit``
says which), timed_out, cancelled. Every run is traced (``trace.py``).

    runtime = AgentRuntime(catalog=catalog, runner=runner, llm=provide_llm, validator=validator,
                           store=store)
    result = await runtime.run("api.analyzer", "Review openapi.yaml", {"spec_path": "openapi.yaml"})
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from betty_mcp.agent.prompt import FINAL_TURN, parse_plan, plan_results_message, system_prompt
from betty_mcp.agent.state import RunLimits, RunResult, RunState, Step
from betty_mcp.agent.trace import TraceWriter, scrub_value, summarise
from betty_mcp.core.arguments import ArgumentValidator
from betty_mcp.core.catalog import Catalog, Skill
from betty_mcp.core.errors import (
    AgentError,
    AllModelsFailed,
    BettyError,
    BudgetExceeded,
    ConfigError,
    ProviderError,
    RunLimitReached,
    UnknownAgent,
)
from betty_mcp.core.identity import current_caller
from betty_mcp.core.manifests import AgentManifest
from betty_mcp.core.rules import failure_envelope, new_run_id, run_id_problem, tool_name_for
from betty_mcp.core.secrets import scrub, secret_values
from betty_mcp.llm.routing import AgentPreference, RouteRequest, route
from betty_mcp.llm.types import ChatRequest, Completion
from betty_mcp.run.runner import SkillResult, SkillRunner

if TYPE_CHECKING:
    from betty_mcp.llm.service import ChatResult, LlmService
    from betty_mcp.store import Store

OnStep = Callable[[Step, RunState], Awaitable[None]]
ProvideLlm = Callable[[], Awaitable["LlmService"]]
MAX_TOOL_RESULT_CHARS = 16_000


@dataclass(frozen=True)
class Toolbox:
    """The skills one agent may call in a run, and the ones it lists but cannot have."""

    skills: list[Skill]
    missing: dict[str, str]  # Betty name -> why it is not offered

    @classmethod
    def for_agent(cls, catalog: Catalog, manifest: AgentManifest) -> Toolbox:
        missing = catalog.skill_gaps(manifest.skills_available)
        wanted = dict.fromkeys(manifest.skills_available)
        return cls([catalog.skills[name] for name in wanted if name not in missing], missing)

    def tools(self) -> list[dict[str, Any]]:
        """OpenAI function tools, named and shaped exactly like the MCP tools."""
        return [
            {
                "type": "function",
                "function": {
                    "name": s.tool_name,
                    "description": s.manifest.description.strip() or s.name,
                    "parameters": s.input_schema,
                },
            }
            for s in self.skills
        ]

    def lookup(self, name: str) -> Skill | None:
        """An offered skill by tool name (``api_validate``) or Betty name (``api.validate``)."""
        return next((s for s in self.skills if name in (s.tool_name, s.name)), None)

    def names(self) -> str:
        return ", ".join(s.name for s in self.skills) or "none"


@dataclass
class _Call:
    """One skill call the model asked for, native or from a JSON plan."""

    id: str
    name: str
    arguments: Any
    raw: str = ""
    parse_error: str | None = None


@dataclass
class _Outcome:
    call: _Call
    step: Step
    content: str  # what the model is told
    structured: Any = field(default=None)


class AgentRuntime:
    """Runs agents of ``catalog`` with its skills (through ``runner``) and models (from ``llm()``)."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        runner: SkillRunner,
        llm: ProvideLlm,
        validator: ArgumentValidator,
        store: Store,
    ) -> None:
        self.catalog = catalog
        self.runner = runner
        self.llm = llm
        self.validator = validator
        self.store = store  # where traces go

    async def run(
        self,
        agent_name: str,
        task: str,
        context: dict[str, Any] | None = None,
        *,
        model: str | None = None,
        limits: RunLimits | None = None,
        run_id: str | None = None,
        on_step: OnStep | None = None,
    ) -> RunResult:
        """Run ``agent_name`` on ``task``; AgentError only for an unknown agent or a bad or reused run id."""
        agent = self.catalog.agents.get(agent_name)
        if agent is None:
            known = ", ".join(sorted(self.catalog.agents)) or "none"
            raise UnknownAgent(f"unknown agent '{agent_name}'; known agents: {known}")
        if run_id is not None and (problem := run_id_problem(run_id)) is not None:
            raise AgentError(problem)
        if run_id is not None and await self.store.events(run_id) is not None:
            raise AgentError(f"run id '{run_id}' is already used; each run needs its own")
        manifest = agent.manifest
        resolved = (limits or RunLimits()).resolved(manifest)
        toolbox = Toolbox.for_agent(self.catalog, manifest)
        state = RunState(
            run_id=run_id or new_run_id(),
            agent=agent.name,
            task=task,
            limits=resolved,
            context=context,
            model_override=model,
            missing_skills=list(toolbox.missing),
        )
        trace = TraceWriter(self.store, state.run_id)
        trace.event(
            "run_started",
            run_id=state.run_id,
            user=current_caller().user,
            agent=agent.name,
            task=summarise(task),
            context=summarise(json.dumps(context, ensure_ascii=False)) if context else None,
            model=model,
            reasoning_mode=manifest.reasoning_mode,
            limits=resolved.as_dict(),
            skills=[s.name for s in toolbox.skills],
            missing_skills=toolbox.missing,
        )
        try:
            with anyio.move_on_after(resolved.timeout_seconds or 0) as deadline:
                await self._loop(state, manifest, toolbox, trace, on_step)
            if deadline.cancelled_caught:
                state.finish(
                    "timed_out",
                    error=f"the run timed out after {resolved.timeout_seconds:g}s",
                    limit="timeout_seconds",
                )
        except anyio.get_cancelled_exc_class():
            state.finish("cancelled", error="the run was cancelled")
            with anyio.CancelScope(shield=True):
                self._close(state, trace)
            raise
        except Exception as exc:
            state.finish("failed", error=f"internal error: {type(exc).__name__}: {exc}")
            self._close(state, trace)
            raise
        return self._close(state, trace)

    # -- the loop -----------------------------------------------------------------------------

    async def _loop(
        self,
        state: RunState,
        manifest: AgentManifest,
        toolbox: Toolbox,
        trace: TraceWriter,
        on_step: OnStep | None,
    ) -> None:
        route_request = _route_request(manifest, state)
        try:
            service = await self.llm()
            planned = route(route_request, service.models)
        except ConfigError as exc:
            state.finish("failed", error=str(exc))
            return
        candidates = [c.spec.id for c in planned.candidates]
        plan_mode = bool(planned.candidates) and planned.candidates[0].spec.supports_tools is False
        state.messages = [
            {
                "role": "system",
                "content": system_prompt(
                    manifest, toolbox.skills, context=state.context, plan_mode=plan_mode
                ),
            },
            {"role": "user", "content": state.task},
        ]
        oneshot = manifest.reasoning_mode == "oneshot"
        max_failures = max(1, state.limits.max_retries or 0)
        while state.running:
            final_turn = oneshot and state.llm_calls >= 1
            try:
                state.limits.enforce(state, before_model_call=True)
            except RunLimitReached as exc:
                state.finish("budget_exceeded", error=str(exc), limit=exc.limit)
                return
            tools = toolbox.tools() if toolbox.skills and not plan_mode and not final_turn else None
            chat = await self._ask(service, state, route_request, candidates, tools, trace, on_step)
            if chat is None:
                return
            completion = chat.completion
            textual = plan_mode or chat.spec.supports_tools is False
            calls, answer = _interpret(completion, textual, state)
            try:
                state.limits.enforce(state, before_model_call=False)
            except RunLimitReached as exc:
                state.finish("budget_exceeded", error=str(exc), limit=exc.limit)
                state.answer = answer or None  # what the model said, kept as a partial result
                return
            if final_turn or not calls:
                state.finish("completed", answer=answer)
                return
            outcomes = await self._execute(state, calls, toolbox, trace, on_step)
            _feed_back(state, completion, outcomes, native=bool(completion.tool_calls), final_next=oneshot)
            if not oneshot and state.consecutive_failures >= max_failures:
                last = outcomes[-1].step.error if outcomes else None
                state.finish(
                    "failed",
                    error=f"{state.consecutive_failures} consecutive skill calls failed "
                    f"(max_retries {state.limits.max_retries}); last error: {last}",
                )

    async def _ask(
        self,
        service: LlmService,
        state: RunState,
        route_request: RouteRequest,
        candidates: list[str],
        tools: list[dict[str, Any]] | None,
        trace: TraceWriter,
        on_step: OnStep | None,
    ) -> ChatResult | None:
        """One model call, recorded as a step; None when the run ends with it."""
        request = ChatRequest(messages=list(state.messages), tools=tools)
        trace.event(
            "llm_request",
            turn=state.llm_calls + 1,
            candidates=candidates,
            messages=len(request.messages),
            last_message=summarise(str(request.messages[-1].get("content") or "")),
            tools=[t["function"]["name"] for t in tools or []],
        )
        state.llm_calls += 1
        index = state.next_index()
        expected = candidates[0] if candidates else "(no model)"
        started = time.monotonic()
        try:
            chat = await service.chat(
                request, route_request, caller="agent_run", agent=state.agent, run_id=state.run_id
            )
        except anyio.get_cancelled_exc_class():
            state.add_step(_llm_failure(index, expected, "interrupted", started))
            raise
        except BudgetExceeded as exc:
            step = _llm_failure(index, expected, str(exc), started)
            trace.event("llm_error", error=str(exc), budget=exc.budget)
            await self._record(state, step, on_step)
            state.finish("budget_exceeded", error=str(exc), limit=exc.budget)
            return None
        except (ProviderError, ConfigError) as exc:
            hops = exc.hops if isinstance(exc, AllModelsFailed) else []
            step = _llm_failure(index, hops[-1].model if hops else expected, str(exc), started)
            trace.event(
                "llm_error",
                error=str(exc),
                kind=exc.kind if isinstance(exc, ProviderError) else "config",
                fallbacks=[h.as_dict() for h in hops],
            )
            await self._record(state, step, on_step)
            state.finish("failed", error=str(exc))
            return None
        completion = chat.completion
        cost = completion.cost_usd
        if cost is None:
            cost = chat.spec.cost(completion.prompt_tokens, completion.completion_tokens) or 0.0
        requested = [c.name for c in completion.tool_calls]
        summary = f"asked for {', '.join(requested)}" if requested else "answered"
        summary += _route_note(chat)
        step = Step(
            index=index,
            kind="llm",
            name=chat.spec.id,
            ok=True,
            summary=summary,
            tokens=completion.total_tokens,
            cost_usd=cost,
            ms=round(chat.latency_ms, 1),
        )
        trace.event(
            "llm_response",
            model=chat.spec.id,
            text=summarise(completion.text),
            tool_calls=[
                {"id": c.id, "name": c.name, "arguments": summarise(c.arguments)}
                for c in completion.tool_calls
            ],
            tokens={"prompt": completion.prompt_tokens, "completion": completion.completion_tokens},
            cost_usd=cost,
            ms=step.ms,
            fallbacks=[h.as_dict() for h in chat.fallbacks],
        )
        await self._record(state, step, on_step)
        return chat

    async def _execute(
        self,
        state: RunState,
        calls: list[_Call],
        toolbox: Toolbox,
        trace: TraceWriter,
        on_step: OnStep | None,
    ) -> list[_Outcome]:
        """Vet every call, refuse the bad ones, run the others concurrently; outcomes in call order."""
        outcomes: list[_Outcome | None] = [None] * len(calls)
        jobs: list[tuple[int, int, _Call, Skill, dict[str, Any]]] = []
        for position, call in enumerate(calls):
            index = state.next_index()
            vetted = self._vet(call, toolbox, state.agent)
            if isinstance(vetted, str):
                step = Step(
                    index=index,
                    kind="skill",
                    name=call.name,
                    ok=False,
                    refused=True,
                    arguments=call.arguments,
                    summary=f"refused: {vetted}",
                    error=vetted,
                )
                trace.event(
                    "refusal",
                    call_id=call.id,
                    name=call.name,
                    arguments=summarise(call.raw or json.dumps(call.arguments, default=str)),
                    reason=vetted,
                )
                content = json.dumps({"ok": False, "refused": True, "error": vetted}, ensure_ascii=False)
                outcomes[position] = _Outcome(call, step, content)
                await self._record(state, step, on_step)
            else:
                jobs.append((position, index, call, *vetted))

        async def run_one(position: int, index: int, call: _Call, skill: Skill, args: dict[str, Any]) -> None:
            outcomes[position] = await self._run_skill(state, index, call, skill, args, trace, on_step)

        async with anyio.create_task_group() as tg:
            for job in jobs:
                tg.start_soon(run_one, *job)
        done = [o for o in outcomes if o is not None]
        for outcome in done:
            state.consecutive_failures = 0 if outcome.step.ok else state.consecutive_failures + 1
        return done

    def _vet(self, call: _Call, toolbox: Toolbox, agent: str) -> str | tuple[Skill, dict[str, Any]]:
        """The skill and arguments to run, or why the call is refused."""
        skill = toolbox.lookup(call.name)
        if skill is None:
            missing = next((n for n in toolbox.missing if call.name in (n, tool_name_for(n))), None)
            if missing is not None:
                return f"skill '{missing}' is not available in this run: {toolbox.missing[missing]}"
            catalog = self.catalog
            known = catalog.skills.get(call.name) or next(
                (s for s in catalog.skills.values() if s.tool_name == call.name), None
            )
            if known is not None:
                return f"'{call.name}' is not allowed for agent '{agent}'; it may use only: {toolbox.names()}"
            return f"there is no tool named '{call.name or '(empty)'}'; you may use only: {toolbox.names()}"
        if call.parse_error:
            return f"arguments for '{skill.name}' are not valid JSON ({call.parse_error}); send a JSON object"
        problem = self.validator.problems(skill.input_schema, call.arguments)
        if problem:
            return f"invalid arguments for '{skill.name}': {problem}"
        return skill, call.arguments

    async def _run_skill(
        self,
        state: RunState,
        index: int,
        call: _Call,
        skill: Skill,
        args: dict[str, Any],
        trace: TraceWriter,
        on_step: OnStep | None,
    ) -> _Outcome:
        trace.event(
            "skill_call",
            call_id=call.id,
            skill=skill.name,
            arguments=summarise(json.dumps(args, ensure_ascii=False, default=str)),
        )
        state.skill_calls += 1
        started = time.monotonic()
        try:
            result = await self.runner.run(skill, args)
        except anyio.get_cancelled_exc_class():
            ms = round((time.monotonic() - started) * 1000, 1)
            state.add_step(
                Step(
                    index=index,
                    kind="skill",
                    name=skill.name,
                    ok=False,
                    arguments=args,
                    summary="interrupted",
                    error="interrupted",
                    ms=ms,
                )
            )
            trace.event(
                "skill_result", call_id=call.id, skill=skill.name, ok=False, summary="interrupted", ms=ms
            )
            raise
        except (OSError, BettyError) as exc:
            envelope = failure_envelope(scrub(str(exc)))
            result = SkillResult(ok=False, structured=envelope, text=json.dumps(envelope))
            result.duration_ms = (time.monotonic() - started) * 1000
        summary = _skill_summary(result)
        step = Step(
            index=index,
            kind="skill",
            name=skill.name,
            ok=result.ok,
            arguments=args,
            summary=summary,
            ms=round(result.duration_ms, 1),
            error=None if result.ok else summary,
        )
        trace.event(
            "skill_result", call_id=call.id, skill=skill.name, ok=result.ok, summary=summary, ms=step.ms
        )
        await self._record(state, step, on_step)
        return _Outcome(call, step, _cap(result.text), result.structured)

    @staticmethod
    async def _record(state: RunState, step: Step, on_step: OnStep | None) -> None:
        state.add_step(step)
        if on_step is not None:
            await on_step(step, state)

    @staticmethod
    def _close(state: RunState, trace: TraceWriter) -> RunResult:
        state.finish("failed", error="the run ended without an answer")  # no-op unless nothing set a status
        secrets = secret_values()
        state.answer = scrub_value(state.answer, secrets)
        state.error = scrub_value(state.error, secrets)
        for step in state.steps:
            step.arguments = scrub_value(step.arguments, secrets)
            step.summary = scrub_value(step.summary, secrets)
            step.error = scrub_value(step.error, secrets)
        result = state.result(trace.path)
        trace.event(
            "run_finished",
            status=result.status,
            answer=summarise(result.answer),
            error=result.error,
            limit=result.limit,
            models_used=result.models_used,
            missing_skills=result.missing_skills,
            totals=result.totals,
        )
        return result


# -- helpers ---------------------------------------------------------------------------------


def _route_request(manifest: AgentManifest, state: RunState) -> RouteRequest:
    return RouteRequest(model=state.model_override, agent=AgentPreference.of(manifest), prompt=state.task)


def _interpret(completion: Completion, textual: bool, state: RunState) -> tuple[list[_Call], str]:
    """The calls a reply asks for (native tool calls, or a JSON plan) and its answer text."""
    if completion.tool_calls:
        calls: list[_Call] = []
        seen: set[str] = set()
        for i, tc in enumerate(completion.tool_calls):
            call_id = tc.id if tc.id and tc.id not in seen else f"call_{state.llm_calls}_{i}"
            seen.add(call_id)
            try:
                arguments, error = json.loads(tc.arguments or "{}"), None
            except ValueError as exc:
                arguments, error = None, str(exc)
            calls.append(_Call(call_id, tc.name, arguments, raw=tc.arguments, parse_error=error))
        return calls, completion.text
    if textual:
        plan = parse_plan(completion.text)
        if plan is not None:
            calls = [
                _Call(f"plan_{state.llm_calls}_{i}", c.skill, c.inputs) for i, c in enumerate(plan.calls)
            ]
            return calls, plan.final_answer if plan.final_answer is not None else completion.text
    return [], completion.text


def _feed_back(
    state: RunState, completion: Completion, outcomes: list[_Outcome], *, native: bool, final_next: bool
) -> None:
    if native:
        state.messages.append(
            {
                "role": "assistant",
                "content": completion.text or "",  # not null: llama.cpp's server rejects null content
                "tool_calls": [
                    {
                        "id": o.call.id,
                        "type": "function",
                        "function": {"name": o.call.name, "arguments": o.call.raw or "{}"},
                    }
                    for o in outcomes
                ],
            }
        )
        for o in outcomes:
            state.messages.append({"role": "tool", "tool_call_id": o.call.id, "content": o.content})
        if final_next:
            state.messages.append({"role": "user", "content": FINAL_TURN})
        return
    state.messages.append({"role": "assistant", "content": completion.text or ""})
    results = []
    for o in outcomes:
        try:
            shown: Any = json.loads(o.content)
        except ValueError:
            shown = o.content
        results.append({"skill": o.call.name, "ok": o.step.ok, "result": shown})
    state.messages.append({"role": "user", "content": plan_results_message(results, final=final_next)})


def _route_note(chat: ChatResult) -> str:
    """What a step says about how its model was reached: preferences passed over, failures, the demo model."""
    passed = [h.model for h in chat.fallbacks if h.error_kind == "not_configured"]
    failed = [h.model for h in chat.fallbacks if h.error_kind != "not_configured"]
    note = ""
    if chat.spec.type == "embedded":
        note += " by the embedded demo model (a small base model; configure a provider for real answers)"
    if passed:
        note += f"; not configured, passed over: {', '.join(passed)}"
    if failed:
        note += f"; after {', '.join(failed)} failed"
    return note


def _llm_failure(index: int, model: str, error: str, started: float) -> Step:
    return Step(
        index=index,
        kind="llm",
        name=model,
        ok=False,
        summary=f"failed: {summarise(error, 200)}",
        error=error,
        ms=round((time.monotonic() - started) * 1000, 1),
    )


def _skill_summary(result: SkillResult) -> str:
    data = result.structured
    if result.ok:
        shown = {k: v for k, v in data.items() if k not in ("ok", "status")}
        return "ok" + (
            f": {summarise(json.dumps(shown, ensure_ascii=False, default=str), 160)}" if shown else ""
        )
    errors = data.get("errors") or []
    first = errors[0] if errors else {}
    message = first.get("message") if isinstance(first, dict) else str(first)
    return f"failed: {summarise(message or 'no error message', 240)}"


def _cap(text: str) -> str:
    if len(text) <= MAX_TOOL_RESULT_CHARS:
        return text
    return text[:MAX_TOOL_RESULT_CHARS] + f"... (cut: {len(text) - MAX_TOOL_RESULT_CHARS} more characters)"
