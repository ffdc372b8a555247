"""What ``models_list`` and ``betty-mcp models`` show: every model, its readiness and its prices."""

from __future__ import annotations

from typing import Any

from betty_mcp.core.llm_config import LlmRouterConfig
from betty_mcp.llm.embedded import readiness
from betty_mcp.llm.models import ModelCatalog, ModelSpec


def _per_mtok(per_token: float | None) -> float | None:
    return None if per_token is None else round(per_token * 1_000_000, 6)


def describe(spec: ModelSpec, models: ModelCatalog) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": spec.id,
        "aliases": models.aliases_of(spec),
        "provider": spec.provider,
        "type": spec.type,
        "api_base": spec.api_base,
        "api_key_env": spec.api_key_env,
        "key_present": bool(spec.key()) if spec.needs_key else None,
        "configured": spec.available,
        "capabilities": {"tools": spec.supports_tools, "context_window": spec.context_window},
        "prices_usd_per_mtok": {
            "input": _per_mtok(spec.input_cost_per_token),
            "output": _per_mtok(spec.output_cost_per_token),
        },
    }
    if spec.type == "embedded":
        ready, detail = readiness()
        entry["configured"] = ready
        entry["status"] = detail
    elif spec.needs_key and not entry["key_present"]:
        entry["status"] = f"set {spec.api_key_env} to use it"
    else:
        entry["status"] = "ready"
    return entry


def list_models(config: LlmRouterConfig) -> dict[str, Any]:
    models = ModelCatalog(config)
    default = models.provider_default(config.default_provider) if config.default_provider else None
    if config.default_model:
        default = models.resolve(config.default_model)
    return {
        "models": [describe(spec, models) for spec in models.all()],
        "default": default.id if default else None,
    }
