"""The use cases both front ends call (the MCP tools and the CLI): find and run a skill, ask an LLM,
run an agent, describe an agent. Nothing here knows about MCP.

Each use case serves the current caller (``core.identity``): skills and agents outside their role's set
are answered like ones that do not exist, and their LLM calls and runs are theirs.

Parts are built on first use, so a one-shot CLI ``query`` builds no catalog, runner or zygote, and
start-up does no LLM work.

    services = Services(load_settings())
    result = await services.run_skill(services.skill("api.validate"), {"spec_path": "openapi.yaml"})
    answer = await services.query_llm({"prompt": "Hello"})
    verdict = await services.consensus({"prompt": "Tabs or spaces?", "models": ["gpt-4o", "sonnet"]})
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from betty_mcp.core.access import Access
from betty_mcp.core.arguments import ArgumentValidator
from betty_mcp.core.catalog import Agent, Catalog, Skill, load_catalog
from betty_mcp.core.config import Settings
from betty_mcp.core.errors import AgentError, ArgumentsError, BettyError, UnknownAgent
from betty_mcp.core.identity import acting_as, current_caller
from betty_mcp.core.secrets import key_env_names, register_secret_names

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from betty_mcp.agent import AgentRuntime, OnStep, RunRequest, RunResult
    from betty_mcp.agent.queue import QueuedRun, RunQueue
    from betty_mcp.agent.runs import RunHandle, RunManager
    from betty_mcp.core.llm_config import LlmRouterConfig
    from betty_mcp.llm.consensus import Consensus, Observer
    from betty_mcp.llm.messages import MessagesService
    from betty_mcp.llm.routing import AgentPreference
    from betty_mcp.llm.service import LlmService
    from betty_mcp.llm.types import StreamSink
    from betty_mcp.run.invocation import Invocations
    from betty_mcp.run.runner import SkillResult, SkillRunner
    from betty_mcp.store import Store

log = logging.getLogger(__name__)
Progress = Callable[[str], Awaitable[None]]
CONSENSUS_SKILL = "llm.consensus"  # the bundled skill an agent's run serves in-process


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        llm: LlmService | None = None,
        reserved_tool_names: frozenset[str] = frozenset(),
    ) -> None:
        self.settings = settings
        # Every configured api_key_env holds a secret, whatever its name: kept from handlers (unless a
        # skill declares it), scrubbed from logs, traces and results. Before any part is built.
        register_secret_names(key_env_names(settings.llm_router))
        self.validator = ArgumentValidator()
        self.access = Access(settings.roles)
        # Names a skill's tool may not take (the front end's own tools); reported by the catalog.
        self.reserved_tool_names = reserved_tool_names
        self._catalog: Catalog | None = None
        self._invocations: Invocations | None = None
        self._runner: SkillRunner | None = None
        self._llm = llm  # given by tests and benchmarks; otherwise built on first use
        self._runs: RunManager | None = None
        self._task_group: TaskGroup | None = None
        self._messages: MessagesService | None = None
        self._store: Store | None = None

    # -- parts, built on first use --------------------------------------------------------------

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self.reload()
        assert self._catalog is not None
        return self._catalog

    def reload(self) -> bool:
        """Re-read every source; True when what clients see (tools, schemas, resources) changed.

        Handler interfaces already read (the cache) shape the schemas at once; the others are read
        later (``read_interfaces``) or on a skill's first call (``ready``).
        """
        catalog = load_catalog(self.settings, self.reserved_tool_names)
        for skill in list(catalog.skills.values()):
            known = self.invocations.known_interface(skill)
            if known is not None:
                catalog.replace_skill(self.invocations.with_interface(skill, known))
        previous = self._catalog
        catalog.stamp = catalog.fingerprint()  # now, while the files are as loaded
        changed = previous is None or catalog.stamp != previous.stamp
        for problem in catalog.problems:
            log.warning("%s", problem)
        self._catalog = catalog
        self.validator.forget()
        return changed

    @property
    def invocations(self) -> Invocations:
        if self._invocations is None:
            from betty_mcp.run.invocation import Invocations

            self._invocations = Invocations(self.settings)
        return self._invocations

    @property
    def runner(self) -> SkillRunner:
        if self._runner is None:
            from betty_mcp.run.runner import SkillRunner

            self._runner = SkillRunner(self.settings, self.invocations)
        return self._runner

    async def llm(self) -> LlmService:
        """The LLM service (LiteLLM's import is paid in a worker thread, on first use)."""
        if self._llm is None:
            import anyio.to_thread

            from betty_mcp.llm.service import LlmService

            settings, store = self.settings, self.store
            roles = {name: role.budgets for name, role in settings.roles.items()}
            self._llm = await anyio.to_thread.run_sync(
                lambda: LlmService(settings.router, store, role_budgets=roles)
            )
        return self._llm

    async def warm_up(self) -> None:
        """Pay the one-time costs now, so that first calls cost what the next ones do: start the
        zygote when there are skills, load the argument checker, and load the LLM path (LiteLLM's
        import: seconds) when a model that goes through it is configured. Serving calls this once
        the client is being served, never before ``initialize`` is answered."""
        import anyio.to_thread

        started = time.monotonic()
        done = ["argument checker"]
        if self.catalog.skills:
            self.runner.warm_up()
            done.append("zygote")
        await anyio.to_thread.run_sync(self.validator.warm_up)  # every tool call's argument check
        router = self.settings.router
        if router.enabled and router.providers:
            await (await self.llm()).warm_up()
            import betty_mcp.llm.embedded  # noqa: F401 (llm_query's note on the embedded model)

            done.append("LLM path")
        log.info("warmed up (%s) in %.1fs", ", ".join(done), time.monotonic() - started)

    @property
    def store(self) -> Store:
        """The ledger, budgets, runs and traces: SQLite in the workspace, or PostgreSQL (``database_url``)
        when set; the driver is imported, and the database reached, only on first use."""
        if self._store is None:
            from betty_mcp.store import open_store

            self._store = open_store(self.settings)
        return self._store

    async def aclose(self) -> None:
        """Write what is still queued for the store and let go of its connections."""
        if self._runs is not None and self._runs.queue is not None:
            await self._runs.queue.aclose()
        if self._store is not None:
            await self._store.aclose()

    def serve_runs(self, task_group: TaskGroup) -> None:
        """Background runs will live in ``task_group`` (the serving process's), beyond any request."""
        self._task_group = task_group

    @property
    def runs(self) -> RunManager:
        """The background runs (imported on first use: start-up stays light)."""
        if self._runs is None:
            if self._task_group is None:
                raise AgentError("background runs need a serving betty-mcp (start it with betty-mcp serve)")
            from betty_mcp.agent.runs import RunManager

            limits = self.settings.limits
            self._runs = RunManager(
                self._task_group,
                self.store,
                heartbeat=limits.run_heartbeat_seconds,
                lost_after=limits.run_lost_after_seconds,
                queue=self._run_queue(),
            )
        return self._runs

    def _run_queue(self) -> RunQueue | None:
        """The shared database's run queue; None with the workspace's SQLite file."""
        if not self.settings.database:
            return None
        from betty_mcp.agent.queue import RunQueue

        limits = self.settings.limits
        return RunQueue(
            self.settings.database,
            heartbeat=limits.run_heartbeat_seconds,
            lost_after=limits.run_lost_after_seconds,
        )

    async def work_queue(self, concurrency: int) -> None:
        """Run queued runs, ``concurrency`` at a time, until cancelled (``serve`` on a shared database,
        and ``betty-mcp worker``). Each runs as the caller who queued it, to its end."""
        queue = self.runs.queue
        if queue is None:
            raise AgentError(
                "queued runs need a shared database: set database_url in betty.yaml "
                "(or $BETTY_MCP_DATABASE_URL) to a PostgreSQL URL"
            )
        await self.store.upgrade()  # the queue's tables are a migration
        await queue.work(self.run_queued, concurrency)

    async def run_queued(self, queued: QueuedRun) -> None:
        """One queued run, on the worker that took it: claimed (never run twice), then run as its owner;
        the job lasts as long as the run."""
        runs = self.runs
        if not await runs.claim(queued.run_id):
            log.info("run %s: cancelled or taken before this worker got to it", queued.run_id)
            return
        with acting_as(queued.owner):
            try:
                handle = await self._start_queued(queued)
            except BettyError as exc:
                await runs.fail(queued, str(exc))
                return
        try:
            await handle.done.wait()
        finally:
            handle.scope.cancel()  # the worker is stopping: so does the run (a no-op once it ended)

    async def _start_queued(self, queued: QueuedRun) -> RunHandle:
        if queued.kind == "agent":
            from betty_mcp.agent import RunRequest

            return self.start_agent_run(RunRequest.of(queued.arguments), run_id=queued.run_id)
        return await self.start_consensus(queued.arguments, consensus_id=queued.run_id)

    def close(self) -> None:
        """End what runs in the background: interface captures, the runner's zygote."""
        if self._invocations is not None:
            from betty_mcp.run.interface_capture import stop_captures

            stop_captures()
        if self._runner is not None:
            self._runner.close()

    # -- skills ---------------------------------------------------------------------------------

    def check_arguments(self, schema: dict[str, Any], arguments: Any, subject: str) -> None:
        problems = self.validator.problems(schema, arguments)
        if problems:
            raise ArgumentsError(f"invalid arguments for {subject}: {problems}")

    def may_use_tool(self, name: str) -> bool:
        """Whether the current caller's role includes the tool ``name`` (a front end's own tool)."""
        return self.access.tool(current_caller(), name)

    def may_use_skill(self, skill: Skill) -> bool:
        """Whether the current caller's role includes ``skill``, by its tool name or its Betty name."""
        return self.access.tool(current_caller(), skill.tool_name, skill.name)

    def skills(self) -> dict[str, Skill]:
        """The catalog's skills the current caller may use, by Betty name."""
        return {name: s for name, s in self.catalog.skills.items() if self.may_use_skill(s)}

    def agents(self) -> dict[str, Agent]:
        """The catalog's agents the current caller may run, by name."""
        caller = current_caller()
        return {name: a for name, a in self.catalog.agents.items() if self.access.agent(caller, name)}

    def skill(self, name: str) -> Skill:
        """A skill that may be run by name (``skill_run``, the CLI), or why not. A skill outside the
        caller's role is unknown to them."""
        skills = self.skills()
        skill = skills.get(name)
        if skill is None:
            close = [s for s in skills if name.split(".")[0] in s][:5]
            hint = f"; similar: {', '.join(close)}" if close else "; list skills with skills_list"
            raise ArgumentsError(f"unknown skill '{name}'{hint}")
        if skill.manifest.status not in self.settings.tools.statuses:
            raise ArgumentsError(
                f"skill '{name}' is {skill.manifest.status}; add it to tools.statuses in betty.yaml to run it"
            )
        return skill

    def find_skills(
        self, query: str = "", *, tag: str | None = None, status: str | None = None
    ) -> list[Skill]:
        """Skills matching every word of ``query`` (name hits first, then tags, then text)."""
        statuses = [status] if status else self.settings.tools.statuses
        words = query.lower().split()
        found = [
            s
            for s in self.skills().values()
            if s.manifest.status in statuses and (tag is None or tag in s.manifest.tags)
        ]
        if not words:
            return sorted(found, key=lambda s: s.name)
        scored = sorted(((_match_score(s, words), s) for s in found), key=lambda p: (-p[0], p[1].name))
        return [s for score, s in scored if score > 0]

    async def ready(self, skill: Skill) -> Skill:
        """``skill`` with its handler's real interface read (once per handler version; the catalog keeps
        it), so its schema says what the handler takes."""
        if skill.interface is not None:
            return skill
        import anyio.to_thread

        found = await anyio.to_thread.run_sync(self.invocations.with_interface, skill)
        if self.catalog.skills.get(found.name) is skill:
            self.catalog.replace_skill(found)
        return found

    async def read_interfaces(self) -> list[str]:
        """Read every handler interface not known yet, one at a time; the names whose schema changed."""
        changed = []
        with self.invocations.interfaces.batch():
            for skill in list(self.catalog.skills.values()):
                if skill.interface is None:
                    found = await self.ready(skill)
                    if found.input_schema != skill.input_schema:
                        changed.append(found.name)
        return changed

    async def run_skill(
        self,
        skill: Skill,
        arguments: dict[str, Any],
        progress: Progress | None = None,
        *,
        checked: bool = False,
    ) -> SkillResult:
        """Run ``skill``, checking ``arguments`` against its schema unless the caller has (``checked``).

        ArgumentsError when they do not fit; a failing handler is a result, not an exception.
        """
        if not checked:
            skill = await self.ready(skill)
            self.check_arguments(skill.input_schema, arguments, f"skill '{skill.name}'")
        return await self.runner.run(skill, arguments, progress)

    # -- LLMs -----------------------------------------------------------------------------------

    async def query_llm(self, arguments: dict[str, Any], stream: StreamSink | None = None) -> dict[str, Any]:
        """``llm_query``'s use case: route, ask, account; the result as tools and the CLI show it.

        Raises BudgetExceeded, ConfigError or a ProviderError (AllModelsFailed names every hop).
        """
        from betty_mcp.llm.embedded import NOTE
        from betty_mcp.llm.routing import RouteRequest
        from betty_mcp.llm.types import ChatRequest

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
        service = await self.llm()
        result = await service.chat(request, routing, caller="llm_query", stream=stream)
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
        if fmt is not None and fmt.get("type") != "text":
            try:
                out["json"] = json.loads(completion.text)
            except json.JSONDecodeError as exc:
                out["json_error"] = f"the model's answer is not valid JSON: {exc.msg} at char {exc.pos}"
        return out

    # -- consensus ------------------------------------------------------------------------------

    async def plan_consensus(
        self,
        arguments: dict[str, Any],
        *,
        agent: str | None = None,
        run_id: str | None = None,
        consensus_id: str | None = None,
        cost_limit: float | None = None,
        token_limit: int | None = None,
    ) -> Consensus:
        """``llm_consensus``'s arguments as a consensus ready to run. Raises before anything is sent:
        ArgumentsError or ConfigError (a bad stance, an unknown model), BudgetExceeded (the worst case
        would pass ``max_cost_usd``, ``cost_limit``, ``token_limit`` or a ledger budget).

        Its calls carry ``run_id`` (an agent run asking for a second opinion) or, by default, the
        consensus's own id, so the run budgets apply to the fan-out as a whole."""
        from betty_mcp.core.rules import new_run_id
        from betty_mcp.llm.consensus import (
            DEFAULT_MAX_TOKENS,
            Consensus,
            ConsensusRequest,
            align_stances,
            default_models,
        )

        service = await self.llm()
        given = arguments.get("models")
        models = tuple(given) if given else default_models(service.models, _consensus_models(service.config))
        max_cost = arguments.get("max_cost_usd")
        if cost_limit is not None:
            max_cost = cost_limit if max_cost is None else min(max_cost, cost_limit)
        request = ConsensusRequest(
            prompt=arguments["prompt"],
            models=models,
            stances=align_stances(models, arguments.get("stances"), service.models),
            system_prompt=arguments.get("system_prompt"),
            judge=arguments.get("judge"),
            blind=arguments.get("blind", True),
            rounds=arguments.get("rounds", 1),
            max_cost_usd=max_cost,
            max_tokens=arguments.get("max_tokens") or DEFAULT_MAX_TOKENS,
            temperature=arguments.get("temperature"),
            token_limit=token_limit,
        )
        consensus_id = consensus_id or new_run_id()
        return await Consensus.plan(
            service,
            request,
            consensus_id=consensus_id,
            caller="llm_consensus",
            agent=agent,
            run_id=run_id or consensus_id,
        )

    async def run_consensus(self, consensus: Consensus, observe: Observer | None = None) -> dict[str, Any]:
        """Run a planned consensus to its end, traced in the store (``betty://runs/<id>``).

        ``observe(line, event)`` hears each call end. The result is returned when some model answered
        and when none did (``status`` failed, ``error`` says why); cancellation propagates."""
        from betty_mcp.agent.trace import TraceWriter, summarise
        from betty_mcp.core.secrets import scrub_data, secret_values
        from betty_mcp.llm.consensus import KIND

        request = consensus.request
        trace = TraceWriter(self.store, consensus.id)
        trace.event(
            "run_started",
            run_id=consensus.id,
            user=current_caller().user,
            agent=KIND,
            task=summarise(request.prompt),
            models=list(request.models),
            stances=list(request.stances),
            judge=request.judge,
            blind=request.blind,
            rounds=request.rounds,
            max_tokens=request.max_tokens,
            estimate=consensus.estimate.as_dict(),
            parent_run=consensus.run_id if consensus.run_id != consensus.id else None,
        )

        async def traced(line: str, event: dict[str, Any]) -> None:
            fields = {**event, "response": summarise(event.get("response"))}
            trace.event("llm_response" if event["error"] is None else "llm_error", **fields)
            if observe is not None:
                await observe(line, event)

        try:
            result = await consensus.run(traced)
        finally:  # no await in here: a cancelled consensus still records its end
            shown = consensus.snapshot()
            trace.event(
                "run_finished",
                status="failed" if shown["status"] == "running" else shown["status"],
                answer=summarise(shown["answer"]),
                error=shown["error"],
                totals=shown["totals"],
            )
        return scrub_data(result, secret_values())

    async def consensus(
        self, arguments: dict[str, Any], observe: Observer | None = None, **plan: Any
    ) -> dict[str, Any]:
        """``llm_consensus`` run to its end here (the CLI, the bundled skill, an agent's call)."""
        return await self.run_consensus(await self.plan_consensus(arguments, **plan), observe)

    async def start_consensus(
        self, arguments: dict[str, Any], *, consensus_id: str | None = None
    ) -> RunHandle:
        """``llm_consensus`` as a background run of the serving process (planned, and so refused, first);
        follow it with ``runs.wait``/``runs.get``/``runs.cancel``."""
        from betty_mcp.llm.consensus import KIND

        runs = self.runs
        consensus = await self.plan_consensus(arguments, consensus_id=consensus_id)

        async def work(run_id: str, note: Progress) -> None:
            await self.run_consensus(consensus, lambda line, event: note(line))

        return runs.start_job(KIND, arguments["prompt"], consensus, work)

    async def submit_consensus(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``llm_consensus`` with ``wait: false``: planned (and so refused) here, then queued for any worker
        on a shared database, else started here; what the caller sees at once."""
        if self.runs.queue is None:
            return (await self.start_consensus(arguments)).snapshot()
        from betty_mcp.agent.queue import QueuedRun
        from betty_mcp.llm.consensus import KIND

        consensus = await self.plan_consensus(arguments)
        shown = {**consensus.snapshot(), "status": "queued"}
        queued = QueuedRun(consensus.id, "consensus", KIND, arguments["prompt"], current_caller(), arguments)
        await self.runs.enqueue(queued, shown)
        return shown

    # -- the gateway (Anthropic Messages) -------------------------------------------------------

    async def messages(self) -> MessagesService:
        """The gateway's use case: Anthropic Messages through the router (LiteLLM loaded in a thread)."""
        if self._messages is None:
            import anyio.to_thread

            from betty_mcp.llm import anthropic_adapter
            from betty_mcp.llm.messages import MessagesService

            llm = await self.llm()
            await anyio.to_thread.run_sync(anthropic_adapter.load)
            self._messages = MessagesService(llm, agents=self.agent_preference)
        return self._messages

    def agent_preference(self, name: str) -> AgentPreference | None:
        """A Betty agent's model preferences (its ``llm_config`` / ``llm_preference``), or None if unknown."""
        from betty_mcp.llm.routing import AgentPreference

        agent = self.catalog.agents.get(name)
        if agent is None:
            log.warning("gateway: a request names Betty agent '%s', which is not in the catalog", name)
            return None
        return AgentPreference.of(agent.manifest)

    async def aclose_llm(self) -> None:
        """Close the gateway's pooled upstream connections."""
        if self._messages is not None:
            from betty_mcp.llm import anthropic_adapter

            await anthropic_adapter.close_client()

    # -- agents ---------------------------------------------------------------------------------

    def agent(self, name: str) -> Agent:
        """An agent the current caller may run; one outside their role is unknown to them."""
        agents = self.agents()
        agent = agents.get(name)
        if agent is None:
            known = ", ".join(sorted(agents)) or "none"
            raise UnknownAgent(f"unknown agent '{name}'; known agents: {known}")
        return agent

    def describe_agent(self, agent: Agent) -> dict[str, Any]:
        """What ``agents_list`` and ``betty-mcp agents`` show of an agent."""
        m = agent.manifest
        gaps = self.catalog.skill_gaps(m.skills_available)
        return {
            "name": agent.name,
            "description": m.description.strip(),
            "version": m.version,
            "status": m.status,
            "reasoning_mode": m.reasoning_mode,
            "skills_available": m.skills_available,
            "missing_skills": list(gaps),
            "why_missing": gaps,
            "llm_config": m.llm_config.model_dump(exclude_none=True) if m.llm_config else None,
            "llm_preference": m.llm_preference,
            "example_task": m.example_task,
            "source": agent.source,
        }

    def agent_runtime(self, *, runner: SkillRunner | None = None) -> AgentRuntime:
        from betty_mcp.agent import AgentRuntime

        return AgentRuntime(
            catalog=self.catalog,
            runner=runner or self.runner,
            llm=self.llm,
            validator=self.validator,
            store=self.store,
        )

    async def run_agent(
        self, request: RunRequest, *, run_id: str | None = None, on_step: OnStep | None = None
    ) -> RunResult:
        """Run an agent to the end (the CLI's ``run``, and every background run)."""
        from betty_mcp.core.rules import new_run_id

        self.agent(request.agent)
        run_id = run_id or new_run_id()  # named now: a consensus the agent asks for counts against it
        runner = cast("SkillRunner", _AgentSkills(self, run_id, request))
        return await self.agent_runtime(runner=runner).run(
            request.agent,
            request.task,
            request.context,
            model=request.model,
            limits=request.limits,
            run_id=run_id,
            on_step=on_step,
        )

    def start_agent_run(self, request: RunRequest, *, run_id: str | None = None) -> RunHandle:
        """Start a background run (named ``run_id``: a queued one); follow it with
        ``runs.wait``/``runs.get``/``runs.cancel``."""
        self.agent(request.agent)
        return self.runs.start(
            request.agent,
            request.task,
            lambda run_id, on_step: self.run_agent(request, run_id=run_id, on_step=on_step),
            run_id=run_id,
        )

    async def submit_agent_run(self, request: RunRequest) -> dict[str, Any]:
        """``agent_run`` with ``wait: false``: queued for any worker on a shared database, else started
        here; what the caller sees at once (``run_status``'s answer)."""
        if self.runs.queue is None:
            handle = self.start_agent_run(request)
            return {"run_id": handle.run_id, "agent": handle.agent, "status": "running", "steps": []}
        self.agent(request.agent)  # an unknown agent is refused before anything is queued
        from betty_mcp.agent.queue import QueuedRun
        from betty_mcp.core.rules import new_run_id

        queued = QueuedRun(
            new_run_id(), "agent", request.agent, request.task, current_caller(), request.as_dict()
        )
        shown = {"run_id": queued.run_id, "agent": request.agent, "status": "queued", "steps": []}
        await self.runs.enqueue(queued, {**shown, "totals": None, "answer": None, "error": None})
        return shown


class _AgentSkills:
    """The skills of one agent run: each runs as a process (the services' runner), except the bundled
    ``llm.consensus``, served here so that its calls carry the run's id and stay within its limits
    (``max_cost_usd`` and ``max_tokens`` less what the run has spent) and its ledger budgets."""

    def __init__(self, services: Services, run_id: str, request: RunRequest) -> None:
        self.services = services
        self.run_id = run_id
        self.request = request

    async def run(
        self, skill: Skill, arguments: dict[str, Any], progress: Progress | None = None
    ) -> SkillResult:
        if skill.name != CONSENSUS_SKILL or skill.source != "bundled":
            return await self.services.runner.run(skill, arguments, progress)
        from betty_mcp.core.rules import failure_envelope
        from betty_mcp.run.runner import SkillResult

        started = time.perf_counter()
        limits = self.request.limits
        spent = await self.services.store.spend(run_id=self.run_id)  # the run's calls so far
        cost_left = None if limits.max_cost_usd is None else max(0.0, limits.max_cost_usd - spent.cost_usd)
        tokens_left = None if limits.max_tokens is None else max(0, limits.max_tokens - spent.tokens)
        try:
            out = await self.services.consensus(
                arguments,
                agent=self.request.agent,
                run_id=self.run_id,
                cost_limit=cost_left,
                token_limit=tokens_left,
            )
        except BettyError as exc:
            structured = failure_envelope(str(exc), exc.code, **exc.details())
        else:
            ok = out["status"] == "completed"
            shown = {k: v for k, v in out.items() if k not in ("steps", "first_round", "status")}
            structured = {"ok": ok, "status": "success" if ok else "failed", **shown}
            structured["consensus_status"] = out["status"]
            if not ok:
                structured["errors"] = [{"code": "all_models_failed", "message": out["error"]}]
        text = json.dumps(structured, ensure_ascii=False, default=str)
        result = SkillResult(ok=structured["ok"], structured=structured, text=text)
        result.duration_ms = (time.perf_counter() - started) * 1000
        return result


def _consensus_models(router: LlmRouterConfig) -> list[str]:
    """``llm_router.consensus.models``: read once the llm_router schema declares the block."""
    block = getattr(router, "consensus", None)
    models = block.get("models") if isinstance(block, dict) else getattr(block, "models", None)
    return list(models or [])


def response_format(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Accept the OpenAI shapes as they are, and wrap a bare JSON Schema into a json_schema format."""
    if value is None or value.get("type") in ("json_object", "json_schema", "text"):
        return value
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}


def _match_score(skill: Skill, words: list[str]) -> int:
    """How well a skill matches every query word: name hits count most, then tags, then text."""
    name, tags = skill.name.lower(), [t.lower() for t in skill.manifest.tags]
    text = skill.manifest.description.lower()
    score = 0
    for word in words:
        if word in name:
            score += 3
        elif any(word in t for t in tags):
            score += 2
        elif word in text:
            score += 1
        else:
            return 0
    return score
