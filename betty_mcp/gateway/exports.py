"""What the gateway writes for other tools: Claude Code subagent files, a claude-code-router config.

files = claude_agent_files(services)          # one per active Betty agent
config = ccr_config(services.settings.router) # claude-code-router's config.json, as a dict
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from betty_mcp.core.llm_config import LlmRouterConfig
from betty_mcp.llm.messages import agent_marker
from betty_mcp.llm.models import ModelCatalog, provider_type
from betty_mcp.services import Services

MCP_SERVER = "betty"


def claude_name(agent: str) -> str:
    """A subagent name Claude Code accepts (lower-case letters, digits, hyphens): ``betty-api-designer``."""
    return "betty-" + re.sub(r"[^a-z0-9]+", "-", agent.lower()).strip("-")


@dataclass
class AgentFile:
    agent: str
    name: str
    text: str
    tools: list[str]
    missing: list[str] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return f"{self.name}.md"


def claude_agent_files(services: Services) -> list[AgentFile]:
    """One Claude Code subagent per active Betty agent; its tools are exactly its allowed skills' tools."""
    catalog = services.catalog
    files = []
    for agent in sorted(catalog.agents.values(), key=lambda a: a.name):
        m = agent.manifest
        if m.status != "active":
            continue
        tools, missing = [], []
        for skill_name in m.skills_available:
            skill = catalog.skills.get(skill_name)
            if skill is None or skill.tool_name not in catalog.tools:
                missing.append(skill_name)
                continue
            tools.append(f"mcp__{MCP_SERVER}__{skill.tool_name}")
        name = claude_name(m.name)
        front = {"name": name, "description": " ".join(m.description.split()), "tools": ", ".join(tools)}
        body = [f"You are the Betty agent `{m.name}`. {' '.join(m.description.split())}"]
        if m.system_prompt:
            body.append(m.system_prompt.strip())
        if m.capabilities:
            body.append("What you can do:\n" + "\n".join(f"- {c}" for c in m.capabilities))
        if m.workflow_pattern:
            body.append("How to work:\n" + m.workflow_pattern.strip())
        if tools:
            body.append("Use only these tools: " + ", ".join(tools) + ".")
        body.append(agent_marker(m.name))
        text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=10_000) + "---\n\n"
        text += "\n\n".join(body) + "\n"
        files.append(AgentFile(m.name, name, text, tools, missing))
    return files


# -- claude-code-router ------------------------------------------------------------------------------

CCR_CLASSES = {
    "default": "default",
    "background": "background",
    "think": "think",
    "long_context": "longContext",
}


def ccr_config(router: LlmRouterConfig, *, port: int = 3456) -> dict[str, Any]:
    """claude-code-router's ``config.json`` equivalent to ``router``: its Providers and Router classes.

    Keys are referenced as ``$VAR`` (CCR interpolates environment variables), never written out.
    What CCR cannot express (agent rules, fallback chains, budgets, the ledger) is listed in ``_betty``.
    """
    models = ModelCatalog(router)
    providers = []
    for name, provider in router.providers.items():
        kind = provider_type(name, provider)
        names = [m.name for m in provider.models]
        if kind == "embedded" or not names:
            continue
        spec = models.specs[f"{name}/{names[0]}"]
        if kind == "anthropic":
            base, transformer = (
                (provider.endpoint or "https://api.anthropic.com").rstrip("/") + "/v1/messages",
                ["Anthropic"],
            )
        elif kind == "ollama":
            base, transformer = (spec.api_base or "http://localhost:11434") + "/v1/chat/completions", []
        else:
            base, transformer = (
                (spec.api_base or "https://api.openai.com/v1").rstrip("/") + "/chat/completions",
                [],
            )
        entry: dict[str, Any] = {
            "name": name,
            "api_base_url": base,
            "api_key": f"${spec.api_key_env}" if spec.api_key_env else "none",
            "models": names,
        }
        if transformer:
            entry["transformer"] = {"use": transformer}
        providers.append(entry)

    def ccr_model(provider: str | None, model: str | None) -> str | None:
        try:
            if provider and model:
                spec = models.resolve(f"{provider}/{model}")
            elif model:
                spec = models.resolve(model)
            elif provider:
                spec = models.provider_default(provider)
            else:
                return None
        except Exception:  # a rule naming nothing CCR can reach is left out, and said so below
            return None
        if spec is None or spec.type == "embedded":
            return None
        return f"{spec.provider},{spec.name}"

    default = ccr_model(router.default_provider, router.default_model)
    classes: dict[str, Any] = {"default": default}
    for rule in router.routing_rules:
        if rule.request_class and rule.request_class in CCR_CLASSES:
            classes.setdefault(
                CCR_CLASSES[rule.request_class], ccr_model(rule.preferred_provider, rule.preferred_model)
            )
    for rule in router.routing_rules:  # task complexity, as near as CCR's classes come
        if rule.task_complexity == "simple":
            classes.setdefault("background", ccr_model(rule.preferred_provider, rule.preferred_model))
        elif rule.task_complexity == "complex":
            classes.setdefault("think", ccr_model(rule.preferred_provider, rule.preferred_model))
    for alias, target in router.aliases.items():
        if "haiku" in alias and "background" not in classes:
            classes["background"] = ccr_model(None, target)
    classes["longContextThreshold"] = router.gateway.long_context_tokens
    not_expressed = [f"agent_pattern {r.agent_pattern}" for r in router.routing_rules if r.agent_pattern]
    if router.fallbacks or any(m.fallbacks for p in router.providers.values() for m in p.models):
        not_expressed.append("fallback chains")
    budgets = router.limits.budgets.model_dump(exclude_none=True)
    if budgets:
        not_expressed.append("budgets " + ", ".join(budgets))
    return {
        "LOG": False,
        "HOST": "127.0.0.1",
        "PORT": port,
        "API_TIMEOUT_MS": int(router.limits.request_timeout_seconds * 1000),
        "Providers": providers,
        "Router": {k: v for k, v in classes.items() if v is not None},
        "_betty": {
            "generated_by": "betty-mcp export ccr",
            "not_expressed": not_expressed,
            "hint": "betty-mcp gateway keeps these; claude-code-router ignores this key",
        },
    }
