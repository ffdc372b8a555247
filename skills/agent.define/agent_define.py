#!/usr/bin/env python3
"""agent.define: validate an agent.yaml with the loader's models and Betty's rules, then register it.

Beyond the model (which checks ``reasoning_mode`` and field types): every skill in
``skills_available`` must exist in the catalog and be active, ``llm_config``/``llm_preference``
must name known providers, ``error_handling`` must be sane, and the version semantic. Every
problem is reported, each as one message; any problem means nothing is registered.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import Any

from betty_mcp.core.rules import folder_name_problem, skill_gaps
from betty_mcp.kit.registry import (
    Registry,
    RegistryError,
    definition_parser,
    load_manifest,
    manifest_file,
    parse_version,
)
from betty_mcp.kit.skillkit import run, workspace

BUILTIN_PROVIDERS = ("openai", "anthropic", "ollama", "openai_compatible", "embedded", "local")
RETRY_STRATEGIES = (
    "none",
    "immediate",
    "fixed",
    "fixed_delay",
    "constant",
    "linear",
    "linear_backoff",
    "exponential",
    "exponential_backoff",
)
MAX_TIMEOUT_SECONDS = 3600


def known_providers(settings: Any) -> list[str]:
    """Providers configured in ``llm_router.providers`` plus the built-in provider types."""
    names = list(settings.router.providers)
    return [*names, *(p for p in BUILTIN_PROVIDERS if p not in names)]


def skill_problems(manifest: Any, catalog: Any, source: str) -> list[dict[str, Any]]:
    statuses = {name: skill.manifest.status for name, skill in catalog.skills.items()}
    gaps = skill_gaps(manifest.skills_available, statuses)
    problems = []
    for index, name in enumerate(manifest.skills_available):
        if name not in gaps:
            continue
        where = f"{source}: skills_available.{index}"
        if name not in statuses:
            close = difflib.get_close_matches(name, list(catalog.skills), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            problems.append(
                {
                    "code": "unknown_skill",
                    "skill": name,
                    "message": f"{where}: skill '{name}' does not exist in the catalog{hint}",
                }
            )
        else:
            problems.append(
                {
                    "code": "inactive_skill",
                    "skill": name,
                    "message": f"{where}: skill '{name}': {gaps[name]} "
                    f"({catalog.skills[name].manifest_path})",
                }
            )
    return problems


def provider_problems(manifest: Any, providers: list[str], source: str) -> list[dict[str, Any]]:
    named = []
    if manifest.llm_config is not None:
        named += [
            (f"llm_config.{field}", getattr(manifest.llm_config, field))
            for field in ("primary_provider", "fallback_provider")
        ]
    named.append(("llm_preference", manifest.llm_preference))
    return [
        {
            "code": "unknown_provider",
            "provider": value,
            "message": f"{source}: {field}: unknown provider '{value}'; known: {', '.join(providers)}",
        }
        for field, value in named
        if value is not None and value not in providers
    ]


def error_handling_problems(manifest: Any, source: str) -> list[dict[str, Any]]:
    handling = manifest.error_handling
    problems = []
    if handling.timeout_seconds is not None and handling.timeout_seconds > MAX_TIMEOUT_SECONDS:
        problems.append(f"timeout_seconds: {handling.timeout_seconds:g} is above {MAX_TIMEOUT_SECONDS}")
    strategy = handling.retry_strategy
    if strategy is not None and strategy not in RETRY_STRATEGIES:
        known = ", ".join(RETRY_STRATEGIES)
        problems.append(f"retry_strategy: unknown strategy '{strategy}'; use one of {known}")
    return [{"code": "bad_error_handling", "message": f"{source}: error_handling.{p}"} for p in problems]


def handle(args: argparse.Namespace) -> dict[str, Any]:
    from betty_mcp.core.catalog import load_catalog
    from betty_mcp.core.config import settings_from_env

    path = manifest_file(args.manifest_path, "agents")
    raw, manifest = load_manifest("agents", path)
    source = str(path)
    settings = settings_from_env()
    problems = [
        *_version_problem(manifest.version, source),
        *skill_problems(manifest, load_catalog(settings), source),
        *provider_problems(manifest, known_providers(settings), source),
        *error_handling_problems(manifest, source),
    ]
    summary: dict[str, Any] = {
        "name": manifest.name,
        "version": manifest.version,
        "status": manifest.status,
        "manifest_path": source,
        "skills": manifest.skills_available,
        "reasoning_mode": manifest.reasoning_mode,
        "warnings": _warnings(manifest, path),
        "dry_run": args.dry_run,
    }
    if problems:
        return {"ok": False, "valid": False, "errors": problems, **summary}
    result: dict[str, Any] = {"valid": True, **summary, "registered": False, "action": "not_registered"}
    if args.register:
        registration = Registry(workspace()).register("agents", raw, source=source, dry_run=args.dry_run)
        result.update(registration.as_dict(), registered=registration.written)
    return result


def _version_problem(version: str, source: str) -> list[dict[str, Any]]:
    try:
        parse_version(version, subject=f"{source}: version")
    except RegistryError as exc:
        return [exc.as_error()]
    return []


def _warnings(manifest: Any, path: Path) -> list[str]:
    warnings = []
    if (problem := folder_name_problem(manifest.name, path)) is not None:
        warnings.append(f"{path}: {problem}")
    if not manifest.skills_available:
        warnings.append(f"{path}: skills_available: the agent lists no skills")
    return warnings


parser = definition_parser("agents")

if __name__ == "__main__":
    run(handle, parser)
