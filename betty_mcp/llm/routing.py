"""Routing: a pure function from a request and the config to an ordered list of candidate models.

Order of preference (the first that is configured and has its key wins; the rest are the
fallback chain, each followed by its own configured fallbacks):

1. an explicit model argument (then only its own fallbacks);
2. the agent's ``llm_config`` (primary, then fallback) or ``llm_preference``; a preference this
   configuration does not know (a provider or model not configured) is passed over and reported in
   ``unresolved``, so an agent asking for claude-sonnet-4 on a machine with no configuration still
   runs, on the embedded model, as ``llm_query`` would;
3. routing rules: ``agent_pattern`` globs first, then ``request_class`` (gateway requests), then, for
   a gateway request whose Claude model name is aliased (``aliases: {claude-haiku-4-5: fast}``) or
   configured, that model; then ``task_complexity`` (given, or estimated);
4. for a gateway request, the Claude model it names at a provider of type ``anthropic``, if any;
5. the default provider/model;
6. the embedded model, last, so a machine with no keys still answers.

Complexity heuristic (``estimate_complexity``): *complex* when the prompt is long (> 4,000
characters) or asks for two or more kinds of deep work (design, analyse, compare, prove,
refactor, step by step...) or structured output with a schema; *simple* when it is short
(< 400 characters), has no code and asks for none of those; *medium* otherwise.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from betty_mcp.core.errors import ConfigError
from betty_mcp.core.llm_config import Complexity, RequestClass
from betty_mcp.core.manifests import AgentManifest
from betty_mcp.llm.models import EMBEDDED, ModelCatalog, ModelSpec, provider_type

DEEP_WORK = re.compile(
    r"\b(design|architect|analy[sz]e|analysis|compare|contrast|prove|derive|refactor|debug|optimi[sz]e|"
    r"step[- ]by[- ]step|trade-?offs?|evaluate|critique|plan|reason|explain why)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class AgentPreference:
    name: str | None = None
    primary_provider: str | None = None
    primary_model: str | None = None
    fallback_provider: str | None = None
    fallback_model: str | None = None
    preference: str | None = None  # the simpler ``llm_preference: <provider>``

    @classmethod
    def of(cls, manifest: AgentManifest) -> AgentPreference:
        """A Betty agent's preferences: its ``llm_config``, or its ``llm_preference``."""
        config = manifest.llm_config
        return cls(
            name=manifest.name,
            primary_provider=config.primary_provider if config else None,
            primary_model=config.primary_model if config else None,
            fallback_provider=config.fallback_provider if config else None,
            fallback_model=config.fallback_model if config else None,
            preference=manifest.llm_preference,
        )


@dataclass(frozen=True)
class RouteRequest:
    model: str | None = None
    agent: AgentPreference | None = None
    complexity: Complexity | None = None
    prompt: str = ""
    structured: bool = False
    # Gateway requests: the class the request was put in, and the model the client asked for (a hint
    # that rules override, unlike ``model``).
    request_class: RequestClass | None = None
    requested_model: str | None = None


@dataclass(frozen=True)
class Candidate:
    spec: ModelSpec
    reason: str


@dataclass
class Route:
    candidates: list[Candidate]
    complexity: Complexity
    skipped: list[tuple[ModelSpec, str]] = field(default_factory=list)
    # Preferences (an agent's) naming no configured model: (what was asked for, why it was passed over).
    unresolved: list[tuple[str, str]] = field(default_factory=list)


def estimate_complexity(prompt: str, *, structured: bool = False) -> Complexity:
    deep = len({m.lower() for m in DEEP_WORK.findall(prompt)})
    if len(prompt) > 4000 or deep >= 2 or structured:
        return "complex"
    if len(prompt) < 400 and deep == 0 and "```" not in prompt:
        return "simple"
    return "medium"


def _pick(models: ModelCatalog, provider: str | None, model: str | None) -> ModelSpec | None:
    if model and provider:
        return (
            models.resolve(f"{provider}/{model}")
            if provider in models.config.providers
            else models.resolve(model)
        )
    if model:
        return models.resolve(model)
    if provider:
        return models.provider_default(provider)
    return None


def _agent_pick(
    models: ModelCatalog, provider: str | None, model: str | None, why: str
) -> tuple[ModelSpec | None, tuple[str, str] | None]:
    """An agent's preferred model, or (None, why it is passed over) when nothing configured matches."""
    if not provider and not model:
        return None, None
    asked = "/".join(p for p in (provider, model) if p)
    try:
        spec = _pick(models, provider, model)
    except ConfigError as exc:
        spec, problem = None, str(exc).split("; known models")[0]
    else:
        problem = f"provider '{provider}' lists no models"
    if spec is not None:
        return spec, None
    if provider and provider not in models.config.providers:
        problem = f"no provider '{provider}' in llm_router.providers"
    return None, (asked, f"{why} {asked} is not configured ({problem}); passed over")


def _preferred(
    request: RouteRequest, models: ModelCatalog, complexity: Complexity, unresolved: list[tuple[str, str]]
) -> list[Candidate]:
    config = models.config
    chosen: list[Candidate] = []
    agent = request.agent
    if agent is not None:
        for provider, model, why in (
            (agent.primary_provider, agent.primary_model, "agent primary"),
            (agent.fallback_provider, agent.fallback_model, "agent fallback"),
            (agent.preference, None, "agent llm_preference"),
        ):
            spec, passed_over = _agent_pick(models, provider, model, why)
            if spec is not None:
                chosen.append(Candidate(spec, why))
            elif passed_over is not None:
                unresolved.append(passed_over)
        for rule in config.routing_rules:
            if rule.agent_pattern and agent.name and fnmatch.fnmatchcase(agent.name, rule.agent_pattern):
                spec = _pick(models, rule.preferred_provider, rule.preferred_model)
                if spec is not None:
                    chosen.append(Candidate(spec, f"rule agent_pattern {rule.agent_pattern}"))
    if request.request_class is not None:
        for rule in config.routing_rules:
            if rule.request_class == request.request_class:
                spec = _pick(models, rule.preferred_provider, rule.preferred_model)
                if spec is not None:
                    chosen.append(Candidate(spec, f"rule request_class {request.request_class}"))
    asked = request.requested_model
    if asked and (asked in config.aliases or asked in models.aliases or asked in models.specs):
        chosen.append(Candidate(models.resolve(asked), f"requested model {asked}"))
    for rule in config.routing_rules:
        if rule.task_complexity == complexity:
            spec = _pick(models, rule.preferred_provider, rule.preferred_model)
            if spec is not None:
                chosen.append(Candidate(spec, f"rule task_complexity {complexity}"))
    if asked:
        anthropic = [name for name, p in config.providers.items() if provider_type(name, p) == "anthropic"]
        if anthropic:
            chosen.append(Candidate(models.resolve(f"{anthropic[0]}/{asked}"), f"requested model {asked}"))
    default = _pick(models, config.default_provider, config.default_model)
    if default is not None:
        chosen.append(Candidate(default, "default"))
    return chosen


def _with_fallbacks(chosen: list[Candidate], models: ModelCatalog) -> list[Candidate]:
    """Each candidate followed by its configured fallback chain, first occurrence kept."""
    ordered: list[Candidate] = []
    seen: set[str] = set()

    def add(candidate: Candidate) -> None:
        if candidate.spec.id in seen:
            return
        seen.add(candidate.spec.id)
        ordered.append(candidate)
        chain = [*candidate.spec.fallbacks, *models.config.fallbacks.get(candidate.spec.id, [])]
        chain += [
            f for alias in models.aliases_of(candidate.spec) for f in models.config.fallbacks.get(alias, [])
        ]
        for name in chain:
            add(Candidate(models.resolve(name), f"fallback of {candidate.spec.id}"))

    for candidate in chosen:
        add(candidate)
    return ordered


def route(request: RouteRequest, models: ModelCatalog) -> Route:
    complexity = request.complexity or estimate_complexity(request.prompt, structured=request.structured)
    if request.model:
        explicit = models.resolve(request.model)
        if not explicit.available:
            raise ConfigError(
                f"model '{request.model}' needs the environment variable {explicit.api_key_env}, "
                "which is not set"
            )
        return Route(_with_fallbacks([Candidate(explicit, "explicit model")], models), complexity)
    unresolved: list[tuple[str, str]] = []
    ordered = _with_fallbacks(_preferred(request, models, complexity, unresolved), models)
    if models.config.embedded_fallback or not ordered:
        ordered = _with_fallbacks([*ordered, Candidate(EMBEDDED, "embedded last resort")], models)
    usable = [c for c in ordered if c.spec.available]
    skipped = [(c.spec, f"{c.spec.api_key_env} is not set") for c in ordered if not c.spec.available]
    return Route(usable, complexity, skipped, unresolved)
