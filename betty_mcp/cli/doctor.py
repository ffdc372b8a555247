"""``betty-mcp doctor``: is the config valid, are keys present, are endpoints up, is the embedded model ready?

Each finding says what was checked, what was found, and (when it is a problem) how to fix it.
Endpoints are probed with one short GET to the address the config names, nothing else.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from betty_mcp.core.config import find_config_file, load_settings
from betty_mcp.core.errors import BettyError

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "ok": self.ok, "detail": self.detail, "fix": self.fix}


def _probe(url: str) -> str | None:
    """None when the URL answers at all (any HTTP status); otherwise why not."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def diagnose(config: Path | None = None, workspace: Path | None = None) -> list[Finding]:
    from betty_mcp.llm.embedded import readiness
    from betty_mcp.llm.models import ModelCatalog

    try:
        path = find_config_file(config)
        settings = load_settings(config, workspace=workspace)
    except BettyError as exc:
        return [
            Finding("config", False, str(exc), "fix the field named above, then run betty-mcp doctor again")
        ]
    findings = [
        Finding("config", True, f"{path} is valid" if path else "no betty.yaml found; using defaults")
    ]
    models = ModelCatalog(settings.router)
    seen_keys: set[str] = set()
    seen_bases: set[str] = set()
    for spec in models.all():
        if spec.api_key_env and spec.api_key_env not in seen_keys:
            seen_keys.add(spec.api_key_env)
            present = bool(spec.key())
            findings.append(
                Finding(
                    f"key {spec.api_key_env}",
                    present,
                    f"set, for provider '{spec.provider}'"
                    if present
                    else f"not set; provider '{spec.provider}' is skipped",
                    f"export {spec.api_key_env}=... in the environment that starts betty-mcp",
                )
            )
        if spec.api_base and spec.type in ("openai_compatible", "ollama") and spec.api_base not in seen_bases:
            seen_bases.add(spec.api_base)
            url = spec.api_base + ("/api/tags" if spec.type == "ollama" else "/models")
            problem = _probe(url)
            findings.append(
                Finding(
                    f"endpoint {spec.provider}",
                    problem is None,
                    f"{spec.api_base} answers"
                    if problem is None
                    else f"{spec.api_base} does not answer: {problem}",
                    f"start the server at {spec.api_base}, or correct providers.{spec.provider}.endpoint",
                )
            )
    ready, detail = readiness()
    findings.append(Finding("embedded model", ready, detail, "pip install 'betty-mcp[local]'"))
    return findings
