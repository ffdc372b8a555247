"""LLM config, routing and the fallback walk: pure functions and a fake backend, no network."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from betty_mcp.core.config import load_settings
from betty_mcp.core.errors import AllModelsFailed, BudgetExceeded, ConfigError, provider_error
from betty_mcp.core.llm_config import LlmRouterConfig
from betty_mcp.llm.models import ModelCatalog
from betty_mcp.llm.routing import AgentPreference, RouteRequest, estimate_complexity, route
from betty_mcp.llm.service import LlmService
from betty_mcp.llm.types import ChatRequest, Completion
from betty_mcp.store import SqliteStore
from tests.fakes.fake_backend import FakeBackend

DESIGN_BLOCK = """
llm_router:
  enabled: true
  default_provider: anthropic
  providers:
    anthropic:
      models: [claude-opus-4, claude-sonnet-4, claude-haiku-4-5]
      api_key_env: ANTHROPIC_API_KEY
    openai:
      models: [gpt-4, gpt-3.5-turbo]
      api_key_env: OPENAI_API_KEY
    local:
      models: [llama-3-70b, mistral-large]
      endpoint: http://localhost:11434
  routing_rules:
    - agent_pattern: "api.*"
      preferred_provider: openai
      preferred_model: gpt-4
    - agent_pattern: "*.analyzer"
      preferred_provider: anthropic
      preferred_model: claude-sonnet-4
    - task_complexity: simple
      preferred_provider: local
      preferred_model: llama-3-70b
"""

KEYS = {"OPENAI_API_KEY": "sk-test-openai-000000", "ANTHROPIC_API_KEY": "sk-ant-test-000000"}


@pytest.fixture
def design(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelCatalog:
    for key, value in KEYS.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "betty.yaml").write_text(DESIGN_BLOCK)
    return ModelCatalog(load_settings(tmp_path / "betty.yaml", workspace=tmp_path).router)


def ids(request: RouteRequest, models: ModelCatalog) -> list[str]:
    return [c.spec.id for c in route(request, models).candidates]


def test_the_design_block_loads_verbatim(design: ModelCatalog) -> None:
    assert design.resolve("gpt-4").litellm_model == "openai/gpt-4"
    local = design.resolve("llama-3-70b")
    assert (local.type, local.api_base, local.litellm_model) == (
        "openai_compatible",
        "http://localhost:11434/v1",
        "openai/llama-3-70b",
    )
    assert design.resolve("anthropic/claude-sonnet-4").api_key_env == "ANTHROPIC_API_KEY"


def test_agent_patterns_route_before_complexity_and_default(design: ModelCatalog) -> None:
    long_task = "Design the API and analyze its trade-offs. " * 20
    assert ids(RouteRequest(agent=AgentPreference(name="api.designer"), prompt=long_task), design)[:2] == [
        "openai/gpt-4",
        "anthropic/claude-opus-4",
    ]
    assert ids(RouteRequest(agent=AgentPreference(name="code.analyzer"), prompt=long_task), design)[0] == (
        "anthropic/claude-sonnet-4"
    )
    assert ids(RouteRequest(prompt="What is 2+2?"), design)[:2] == [
        "local/llama-3-70b",
        "anthropic/claude-opus-4",
    ]
    assert ids(RouteRequest(prompt=long_task), design)[0] == "anthropic/claude-opus-4"
    assert ids(RouteRequest(prompt=long_task), design)[-1] == "embedded/gemma-3-270m"


def test_explicit_model_then_agent_llm_config_come_first(design: ModelCatalog) -> None:
    agent = AgentPreference(
        name="api.designer",
        primary_provider="anthropic",
        primary_model="claude-haiku-4-5",
        fallback_provider="local",
        fallback_model="mistral-large",
    )
    assert ids(RouteRequest(agent=agent, prompt="x"), design)[:3] == [
        "anthropic/claude-haiku-4-5",
        "local/mistral-large",
        "openai/gpt-4",
    ]
    assert ids(RouteRequest(model="gpt-3.5-turbo", agent=agent), design) == ["openai/gpt-3.5-turbo"]
    assert ids(RouteRequest(model="openai/gpt-4o-mini"), design) == ["openai/gpt-4o-mini"], (
        "unlisted models of a provider"
    )
    assert ids(RouteRequest(agent=AgentPreference(name="x", preference="openai"), prompt="x"), design)[0] == (
        "openai/gpt-4"
    )


def test_models_without_keys_are_skipped_and_reported(
    design: ModelCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    planned = route(
        RouteRequest(agent=AgentPreference(name="api.designer"), prompt="design and analyze"), design
    )
    assert planned.candidates[0].spec.id == "anthropic/claude-opus-4"
    assert [(s.id, why) for s, why in planned.skipped] == [("openai/gpt-4", "OPENAI_API_KEY is not set")]
    with pytest.raises(ConfigError, match="needs the environment variable OPENAI_API_KEY"):
        route(RouteRequest(model="gpt-4"), design)


def test_complexity_heuristic() -> None:
    assert estimate_complexity("What is the capital of France?") == "simple"
    assert estimate_complexity("Summarise this paragraph: " + "word " * 100) == "medium"
    assert estimate_complexity("Design a schema and analyze the trade-offs") == "complex"
    assert estimate_complexity("x" * 5000) == "complex"
    assert estimate_complexity("Give a JSON answer", structured=True) == "complex"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"providers": {"openai": {"api_key": "sk-live-abcdefghijklmnop"}}}, "keys never go in betty.yaml"),
        (
            {"providers": {"openai": {"api_key_env": "sk-abcdefghijklmnopqrstu"}}},
            "looks like a literal API key",
        ),
        ({"providers": {"openai": {"api_key_env": "not a name"}}}, "must name an environment variable"),
        ({"default_provider": "nobody"}, "default_provider 'nobody' is not among the providers"),
        ({"routing_rules": [{"agent_pattern": "a.*"}]}, "needs preferred_provider and/or preferred_model"),
        ({"providers": {"x": {"type": "telepathy"}}}, "providers.x.type"),
    ],
)
def test_bad_llm_config_names_the_field(tmp_path: Path, block: dict, message: str) -> None:
    (tmp_path / "betty.yaml").write_text(yaml.safe_dump({"llm_router": block}))
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "betty.yaml")
    assert message in str(caught.value) and "betty.yaml: llm_router" in str(caught.value)
    assert "sk-live-abcdefghijklmnop" not in str(caught.value)


def service(tmp_path: Path, block: dict, backend: FakeBackend) -> LlmService:
    config = LlmRouterConfig.model_validate(block)
    store = SqliteStore(tmp_path / "usage.sqlite", tmp_path / "runs")
    return LlmService(config, store, backends={"litellm": backend, "embedded": backend})


LOCAL_PAIR = {
    "default_model": "a/one",
    "providers": {
        "a": {
            "endpoint": "http://127.0.0.1:9/v1",
            "models": [{"name": "one", "context_window": 1000, "fallbacks": ["b/two"]}],
        },
        "b": {"endpoint": "http://127.0.0.1:9/v1", "models": [{"name": "two", "context_window": 8000}]},
    },
    "embedded_fallback": False,
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["rate_limit", "server", "timeout", "connection"])
async def test_retryable_errors_fall_back_at_once_and_every_hop_is_recorded(
    tmp_path: Path, kind: str
) -> None:
    backend = FakeBackend(
        {
            "a/one": [provider_error(kind, f"a/one: {kind}")],
            "b/two": [Completion("from two", prompt_tokens=3, completion_tokens=2)],
        }
    )
    svc = service(tmp_path, LOCAL_PAIR, backend)
    result = await svc.chat(
        ChatRequest([{"role": "user", "content": "hi"}]), RouteRequest(prompt="hi"), caller="test"
    )
    assert result.spec.id == "b/two" and result.completion.text == "from two"
    assert [(h.model, h.error_kind) for h in result.fallbacks] == [("a/one", kind)]
    assert backend.calls[1].started - backend.calls[0].started < 1.0
    assert [r.outcome for r in await svc.accounts.records()] == ["ok", kind]  # type: ignore[attr-defined]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["auth", "bad_request"])
async def test_auth_and_bad_request_errors_never_fall_back(tmp_path: Path, kind: str) -> None:
    backend = FakeBackend({"a/one": [provider_error(kind, f"a/one: {kind}: nope")]})
    with pytest.raises(AllModelsFailed) as caught:
        await service(tmp_path, LOCAL_PAIR, backend).chat(
            ChatRequest([{"role": "user", "content": "x"}]), RouteRequest(), caller="test"
        )
    assert caught.value.kind == kind and [c.model for c in backend.calls] == ["a/one"]


@pytest.mark.anyio
async def test_context_window_errors_move_to_a_larger_model(tmp_path: Path) -> None:
    block = {
        **LOCAL_PAIR,
        "providers": {
            **LOCAL_PAIR["providers"],
            "c": {"endpoint": "http://127.0.0.1:9/v1", "models": [{"name": "small", "context_window": 500}]},
        },
        "fallbacks": {"a/one": ["c/small", "b/two"]},
    }
    block["providers"]["a"]["models"][0]["fallbacks"] = []
    backend = FakeBackend({"a/one": [provider_error("context_window", "a/one: context_window: too long")]})
    result = await service(tmp_path, block, backend).chat(
        ChatRequest([{"role": "user", "content": "x"}]), RouteRequest(), caller="test"
    )
    assert [c.model for c in backend.calls] == ["a/one", "b/two"], "the smaller window is skipped"
    assert result.spec.id == "b/two"


@pytest.mark.anyio
async def test_the_whole_walk_has_one_deadline(tmp_path: Path) -> None:
    backend = FakeBackend(delay=5)
    started = time.monotonic()
    with pytest.raises(AllModelsFailed) as caught:
        await service(tmp_path, LOCAL_PAIR, backend).chat(
            ChatRequest([{"role": "user", "content": "x"}]),
            RouteRequest(),
            caller="test",
            deadline_seconds=0.5,
        )
    assert time.monotonic() - started < 3
    assert caught.value.kind == "timeout"


@pytest.mark.anyio
async def test_budgets_refuse_a_call_and_say_which(tmp_path: Path) -> None:
    block = {
        **LOCAL_PAIR,
        "providers": {
            "a": {
                "endpoint": "http://127.0.0.1:9/v1",
                "models": [
                    {"name": "one", "input_cost_per_mtok": 1_000_000, "output_cost_per_mtok": 1_000_000}
                ],
            }
        },
        "limits": {"budgets": {"per_day_usd": 9.0, "per_call_usd": 1000}},
    }
    backend = FakeBackend(
        {"a/one": [Completion("a", prompt_tokens=6, completion_tokens=2, cost_usd=8.0)] * 3}
    )
    svc = service(tmp_path, block, backend)
    request = ChatRequest([{"role": "user", "content": "hi"}])
    await svc.chat(request, RouteRequest(), caller="test")
    with pytest.raises(BudgetExceeded) as caught:
        await svc.chat(request, RouteRequest(), caller="test")
    assert caught.value.budget == "per_day" and "daily budget" in str(caught.value)
    assert len(backend.calls) == 1, "the refused call never reached the model"
