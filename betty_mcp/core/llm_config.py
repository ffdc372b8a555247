"""The ``llm_router`` block of ``betty.yaml``: providers, models, routing rules, limits, budgets.

It accepts the multi-LLM design's block verbatim and extends it (README: "LLM configuration"):
provider ``type``, per-model aliases, prices, capabilities and fallback chains, request
timeout, call deadline and budgets. API keys never live here, only the names of the
environment variables that hold them; a literal key is refused with a message saying where
to put it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from betty_mcp.core.secrets import key_env_names

ProviderType = Literal["openai", "anthropic", "ollama", "openai_compatible", "embedded"]
Complexity = Literal["simple", "medium", "complex"]
# What the gateway makes of an Anthropic Messages request (README: "Route Claude Code through betty").
RequestClass = Literal["default", "background", "think", "long_context"]

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What keys look like: a literal in the file is refused wherever it appears.
KEY_LIKE = re.compile(
    r"^(sk-|sk_|pk-|xai-|gsk_|AIza|hf_|ghp_|anthropic-|key-)[A-Za-z0-9_\-]{8,}$|^[A-Za-z0-9]{40,}$"
)


def _refuse_literal_key(where: str) -> str:
    return (
        f"{where} holds what looks like a literal API key; keys never go in betty.yaml. Put it in an "
        "environment variable (e.g. export OPENAI_API_KEY=...) and name that variable with api_key_env"
    )


class ModelConfig(BaseModel):
    """One model of a provider; a bare string in ``models:`` is a ModelConfig with just a name."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    alias: str | None = None
    litellm_model: str | None = Field(default=None, description="Override the model string sent to LiteLLM.")
    context_window: int | None = Field(default=None, gt=0)
    supports_tools: bool | None = None
    input_cost_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million prompt tokens."
    )
    output_cost_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million output tokens."
    )
    fallbacks: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw


class ProviderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: ProviderType | None = None
    models: list[ModelConfig] = []
    api_key_env: str | None = None
    endpoint: str | None = Field(default=None, description="Base URL; api_base is accepted as a synonym.")
    timeout_seconds: float | None = Field(default=None, gt=0)
    api_key: Any = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _synonyms(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "api_base" in raw:
            raw = dict(raw)
            base = raw.pop("api_base")
            raw.setdefault("endpoint", base)
        return raw

    @field_validator("api_key")
    @classmethod
    def _no_literal_keys(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(_refuse_literal_key("api_key"))
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if KEY_LIKE.match(value) or not ENV_NAME.match(value):
            if KEY_LIKE.match(value):
                raise ValueError(_refuse_literal_key("api_key_env"))
            raise ValueError(
                f"api_key_env must name an environment variable (like OPENAI_API_KEY), not {value!r}"
            )
        return value


class RoutingRule(BaseModel):
    """``agent_pattern`` (a glob on the agent's name), ``task_complexity`` or, for gateway requests,
    ``request_class`` picks a provider/model."""

    model_config = ConfigDict(extra="forbid")

    agent_pattern: str | None = None
    task_complexity: Complexity | None = None
    request_class: RequestClass | None = None
    preferred_provider: str | None = None
    preferred_model: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> RoutingRule:
        chosen = [f for f in (self.agent_pattern, self.task_complexity, self.request_class) if f is not None]
        if len(chosen) != 1:
            raise ValueError(
                "a routing rule needs exactly one of agent_pattern or task_complexity (or request_class)"
            )
        if self.preferred_provider is None and self.preferred_model is None:
            raise ValueError("a routing rule needs preferred_provider and/or preferred_model")
        return self


class UserBudgetConfig(BaseModel):
    """What one user may spend in a UTC day (``budgets.per_user``, or their role's ``roles.<r>.budgets``)."""

    model_config = ConfigDict(extra="forbid")

    day_usd: float | None = Field(default=None, ge=0)
    day_tokens: int | None = Field(default=None, ge=0)


class BudgetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    per_call_usd: float | None = Field(default=None, ge=0)
    per_run_usd: float | None = Field(default=None, ge=0)
    per_day_usd: float | None = Field(default=None, ge=0)
    per_run_tokens: int | None = Field(default=None, ge=0)
    per_day_tokens: int | None = Field(default=None, ge=0)
    per_user: UserBudgetConfig | None = None  # each user's own day, unless their role has budgets


class LlmLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_timeout_seconds: float = Field(default=60, gt=0)
    # Hosts abort tool calls at ~60 s without a result; stay below unless progress keeps them waiting.
    deadline_seconds: float = Field(default=55, gt=0)
    budgets: BudgetConfig = BudgetConfig()


class GatewayConfig(BaseModel):
    """How ``betty-mcp gateway`` classifies Anthropic Messages requests and whom it lets through."""

    model_config = ConfigDict(extra="forbid")

    long_context_tokens: int = Field(
        default=60_000, gt=0, description="Estimated prompt tokens above which a request is long_context."
    )
    background_models: list[str] = Field(
        default=["*haiku*"], description="Globs on the requested model that make a request background."
    )
    passthrough: bool = Field(
        default=False,
        description="Forward the client's own Anthropic key, and only to providers of type anthropic.",
    )


class ConsensusConfig(BaseModel):
    """``llm_consensus``'s defaults: the models asked when a call names none."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = []


class LlmRouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    default_provider: str | None = None
    default_model: str | None = None
    providers: dict[str, ProviderConfig] = {}
    routing_rules: list[RoutingRule] = []
    aliases: dict[str, str] = {}
    fallbacks: dict[str, list[str]] = {}
    embedded_fallback: bool = Field(
        default=True, description="Try the embedded model when nothing else answers."
    )
    limits: LlmLimits = LlmLimits()
    consensus: ConsensusConfig = ConsensusConfig()
    gateway: GatewayConfig = GatewayConfig()

    @model_validator(mode="after")
    def _references_exist(self) -> LlmRouterConfig:
        if self.default_provider and self.default_provider not in self.providers:
            raise ValueError(
                f"default_provider '{self.default_provider}' is not among the providers: "
                f"{', '.join(self.providers) or 'none configured'}"
            )
        for i, rule in enumerate(self.routing_rules):
            if rule.preferred_provider and rule.preferred_provider not in self.providers:
                raise ValueError(f"routing_rules.{i}: unknown provider '{rule.preferred_provider}'")
        return self

    def key_env_names(self) -> list[str]:
        """Every environment variable a configured provider reads its key from: their values are secrets."""
        return key_env_names(self.model_dump(include={"providers"}, exclude_none=True))
