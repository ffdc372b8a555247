"""Classifying Anthropic Messages requests and routing them: pure functions, no server."""

from __future__ import annotations

import json

import pytest

from betty_mcp.core.llm_config import LlmRouterConfig
from betty_mcp.llm.messages import agent_marker, classify, find_agent
from betty_mcp.llm.models import ModelCatalog
from betty_mcp.llm.routing import AgentPreference, RouteRequest, route

BASE = {
    "providers": {
        "local": {"endpoint": "http://127.0.0.1:9", "models": ["llama", "qwen", "big"]},
        "anthropic": {"type": "anthropic", "models": ["claude-sonnet-4-5"]},
    },
    "embedded_fallback": False,
}


def catalog(**extra: object) -> ModelCatalog:
    return ModelCatalog(LlmRouterConfig.model_validate({**BASE, **extra}))


def classified(**body: object) -> tuple[str, str, str | None]:
    request = {"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "hi"}], **body}
    found = classify(request, long_context_tokens=1000, background_models=["*haiku*"])
    return found.request_class, found.complexity, found.agent


def test_request_classes_and_their_complexity() -> None:
    assert classified() == ("default", "simple", None)
    assert classified(model="claude-haiku-4-5-20251001") == ("background", "simple", None)
    assert classified(thinking={"type": "enabled", "budget_tokens": 1024}) == ("think", "complex", None)
    assert classified(thinking={"type": "adaptive"}) == ("default", "simple", None), "Claude Code's default"
    long = [{"role": "user", "content": "word " * 2000}]
    assert classified(messages=long, model="claude-haiku-4-5") == ("long_context", "complex", None)
    deep = [{"role": "user", "content": "Design and analyse the trade-offs, step by step"}]
    assert classified(messages=deep)[1] == "complex"


def test_the_agent_marker_is_read_from_the_system_prompt_only() -> None:
    marker = agent_marker("api.designer")
    assert find_agent(f"You design APIs.\n{marker}") == "api.designer"
    assert find_agent([{"type": "text", "text": "intro"}, {"type": "text", "text": marker}]) == "api.designer"
    assert classified(system=[{"type": "text", "text": marker}])[2] == "api.designer"
    assert classified(messages=[{"role": "user", "content": marker}])[2] is None


def test_request_class_rules_come_before_complexity_rules() -> None:
    models = catalog(
        routing_rules=[
            {"request_class": "background", "preferred_provider": "local", "preferred_model": "qwen"},
            {"task_complexity": "simple", "preferred_provider": "local", "preferred_model": "llama"},
        ]
    )
    planned = route(RouteRequest(complexity="simple", request_class="background"), models)
    assert [c.spec.id for c in planned.candidates][:2] == ["local/qwen", "local/llama"]
    assert planned.candidates[0].reason == "rule request_class background"


def test_a_claude_model_name_can_be_aliased() -> None:
    models = catalog(aliases={"claude-haiku-4-5": "local/llama"})
    planned = route(RouteRequest(requested_model="claude-haiku-4-5", complexity="simple"), models)
    assert planned.candidates[0].spec.id == "local/llama"


def test_with_no_rule_the_claude_model_goes_to_anthropic_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    models = catalog(default_model="local/big")
    planned = route(RouteRequest(requested_model="claude-opus-4-8", complexity="medium"), models)
    assert [c.spec.id for c in planned.candidates] == ["anthropic/claude-opus-4-8", "local/big"]
    no_anthropic = ModelCatalog(
        LlmRouterConfig.model_validate(
            {**BASE, "providers": {"local": BASE["providers"]["local"]}, "default_model": "local/big"}
        )
    )
    planned = route(RouteRequest(requested_model="claude-opus-4-8", complexity="medium"), no_anthropic)
    assert [c.spec.id for c in planned.candidates] == ["local/big"]


def test_an_agent_rule_routes_a_subagent() -> None:
    models = catalog(
        routing_rules=[{"agent_pattern": "api.*", "preferred_provider": "local", "preferred_model": "big"}]
    )
    agent = AgentPreference(name="api.designer", primary_provider="openai", primary_model="gpt-4")
    planned = route(RouteRequest(agent=agent, request_class="default", complexity="simple"), models)
    assert planned.candidates[0].spec.id == "local/big"
    assert planned.unresolved and "openai/gpt-4" in planned.unresolved[0][0]


def test_a_rule_names_exactly_one_selector() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        LlmRouterConfig.model_validate(
            {
                **BASE,
                "routing_rules": [
                    {"request_class": "think", "task_complexity": "complex", "preferred_model": "big"}
                ],
            }
        )


def test_export_ccr_writes_providers_and_router_classes() -> None:
    from betty_mcp.gateway.exports import ccr_config

    config = LlmRouterConfig.model_validate(
        {
            **BASE,
            "default_model": "local/llama",
            "routing_rules": [
                {"request_class": "background", "preferred_provider": "local", "preferred_model": "qwen"},
                {
                    "request_class": "think",
                    "preferred_provider": "anthropic",
                    "preferred_model": "claude-sonnet-4-5",
                },
                {"request_class": "long_context", "preferred_provider": "local", "preferred_model": "big"},
                {"agent_pattern": "api.*", "preferred_provider": "local", "preferred_model": "big"},
            ],
            "gateway": {"long_context_tokens": 50000},
        }
    )
    out = ccr_config(config)
    providers = {p["name"]: p for p in out["Providers"]}
    assert providers["local"]["api_base_url"] == "http://127.0.0.1:9/v1/chat/completions"
    assert (
        providers["anthropic"]["api_key"] == "$ANTHROPIC_API_KEY" and "transformer" in providers["anthropic"]
    )
    assert out["Router"] == {
        "default": "local,llama",
        "background": "local,qwen",
        "think": "anthropic,claude-sonnet-4-5",
        "longContext": "local,big",
        "longContextThreshold": 50000,
    }
    assert "agent_pattern api.*" in out["_betty"]["not_expressed"]
    assert "sk-" not in json.dumps(out)
