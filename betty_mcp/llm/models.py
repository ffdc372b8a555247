"""The models betty-mcp can call: every model of every configured provider, plus the embedded one.

A ``ModelSpec`` is everything needed to call one model and to account for it. Models are named
``provider/model`` (``openai/gpt-4``) or by alias (``gpt-4``, or a configured alias).

    models = ModelCatalog(config)
    models.resolve("gpt-4").litellm_model   # "openai/gpt-4"
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from betty_mcp.core.errors import ConfigError
from betty_mcp.core.llm_config import LlmRouterConfig, ModelConfig, ProviderConfig
from betty_mcp.core.secrets import DEFAULT_KEY_ENV

EMBEDDED_PROVIDER = "embedded"
EMBEDDED_MODEL = "gemma-3-270m"
KNOWN_TYPES = ("openai", "anthropic", "ollama", "openai_compatible", "embedded")
OLLAMA_DEFAULT = "http://localhost:11434"


@dataclass(frozen=True)
class ModelSpec:
    id: str
    provider: str
    type: str
    name: str
    litellm_model: str
    api_base: str | None = None
    api_key_env: str | None = None
    context_window: int | None = None
    supports_tools: bool | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    timeout_seconds: float | None = None
    fallbacks: tuple[str, ...] = ()

    @property
    def needs_key(self) -> bool:
        return self.api_key_env is not None

    def key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def available(self) -> bool:
        """Callable as configured: its key is set, or it needs none (local servers, embedded)."""
        return not self.needs_key or bool(self.key())

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.input_cost_per_token is None and self.output_cost_per_token is None:
            return None
        return prompt_tokens * (self.input_cost_per_token or 0.0) + completion_tokens * (
            self.output_cost_per_token or 0.0
        )


def provider_type(name: str, provider: ProviderConfig) -> str:
    if provider.type:
        return provider.type
    if provider.endpoint:
        return "openai_compatible"
    if name in KNOWN_TYPES:
        return name
    return name  # any other LiteLLM provider prefix (mistral, groq, ...), keys via api_key_env


def _openai_base(endpoint: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def _spec(provider_name: str, provider: ProviderConfig, model: ModelConfig) -> ModelSpec:
    kind = provider_type(provider_name, provider)
    api_base = None
    if kind == "ollama":
        prefix, api_base = "ollama_chat", (provider.endpoint or OLLAMA_DEFAULT).rstrip("/")
    elif kind == "openai_compatible":
        if not provider.endpoint:
            raise ConfigError(
                f"llm_router.providers.{provider_name}: type openai_compatible needs an endpoint"
            )
        prefix, api_base = "openai", _openai_base(provider.endpoint)
    else:
        prefix, api_base = ("openai" if kind == "openai" else kind), provider.endpoint
    free = kind in ("ollama", "openai_compatible", "embedded")
    per_token = 1_000_000
    return ModelSpec(
        id=f"{provider_name}/{model.name}",
        provider=provider_name,
        type=kind,
        name=model.name,
        litellm_model=model.litellm_model or f"{prefix}/{model.name}",
        api_base=api_base,
        api_key_env=provider.api_key_env or DEFAULT_KEY_ENV.get(kind),
        context_window=model.context_window,
        supports_tools=model.supports_tools,
        input_cost_per_token=model.input_cost_per_mtok / per_token
        if model.input_cost_per_mtok is not None
        else (0.0 if free else None),
        output_cost_per_token=model.output_cost_per_mtok / per_token
        if model.output_cost_per_mtok is not None
        else (0.0 if free else None),
        timeout_seconds=provider.timeout_seconds,
        fallbacks=tuple(model.fallbacks),
    )


EMBEDDED = ModelSpec(
    id=f"{EMBEDDED_PROVIDER}/{EMBEDDED_MODEL}",
    provider=EMBEDDED_PROVIDER,
    type="embedded",
    name=EMBEDDED_MODEL,
    litellm_model=f"{EMBEDDED_PROVIDER}/{EMBEDDED_MODEL}",
    context_window=32_768,
    supports_tools=False,
    input_cost_per_token=0.0,
    output_cost_per_token=0.0,
)


class ModelCatalog:
    def __init__(self, config: LlmRouterConfig) -> None:
        self.config = config
        self.specs: dict[str, ModelSpec] = {}
        self.aliases: dict[str, str] = {}
        names: dict[str, list[str]] = {}
        for provider_name, provider in config.providers.items():
            for model in provider.models:
                spec = _spec(provider_name, provider, model)
                self.specs[spec.id] = spec
                names.setdefault(model.name, []).append(spec.id)
                if model.alias:
                    self.aliases[model.alias] = spec.id
        if EMBEDDED.id not in self.specs:
            self.specs[EMBEDDED.id] = EMBEDDED
            names.setdefault(EMBEDDED_MODEL, []).append(EMBEDDED.id)
            self.aliases.setdefault("embedded", EMBEDDED.id)
        for name, ids in names.items():
            if len(ids) == 1:
                self.aliases.setdefault(name, ids[0])
        for alias, target in config.aliases.items():
            self.aliases[alias] = target
        self.ambiguous = {name: ids for name, ids in names.items() if len(ids) > 1}

    def resolve(self, name: str) -> ModelSpec:
        """An id, an alias, or ``provider/model`` of a configured provider (models it does not list too)."""
        seen: set[str] = set()
        while name in self.aliases and name not in self.specs and name not in seen:
            seen.add(name)
            name = self.aliases[name]
        if name in self.specs:
            return self.specs[name]
        provider_name, sep, model_name = name.partition("/")
        if sep and provider_name in self.config.providers:
            return _spec(provider_name, self.config.providers[provider_name], ModelConfig(name=model_name))
        if name in self.ambiguous:
            raise ConfigError(
                f"model '{name}' is offered by several providers; say which: "
                f"{', '.join(self.ambiguous[name])}"
            )
        known = ", ".join(sorted({*self.aliases, *self.specs})[:30])
        raise ConfigError(f"unknown model '{name}'; known models and aliases: {known}")

    def provider_default(self, provider_name: str) -> ModelSpec | None:
        provider = self.config.providers.get(provider_name)
        if provider is None or not provider.models:
            return None
        return self.specs[f"{provider_name}/{provider.models[0].name}"]

    def all(self) -> list[ModelSpec]:
        return list(self.specs.values())

    def aliases_of(self, spec: ModelSpec) -> list[str]:
        return sorted(alias for alias, target in self.aliases.items() if target == spec.id)
