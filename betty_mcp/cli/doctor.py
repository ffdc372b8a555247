"""``betty-mcp doctor``: is the config valid, are keys present, are endpoints up, is the embedded model
ready, can every handler's interpreter import what the handler imports, do manifests and parsers agree?
Does the database answer, is it migrated, does this machine's clock agree with the database server's?

Each finding says what was checked, what was found, and (when it is a problem) how to fix it.
Endpoints are probed with one short GET to the address the config names, nothing else. Handlers are
not run: their imports are read from the source, and each interpreter is asked once which it finds.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from betty_mcp.cli.serve import Sources
from betty_mcp.core.config import find_config_file
from betty_mcp.core.errors import BettyError
from betty_mcp.core.secrets import without_secrets
from betty_mcp.run.interface_static import imported_modules
from betty_mcp.run.invocation import PYTHON_RUNTIMES
from betty_mcp.services import Services
from betty_mcp.store import Store

PROBE_TIMEOUT = 2.0
# Daily budgets start at midnight UTC by each instance's clock; run heartbeats are compared with the
# database server's: clocks further apart than this are reported.
MAX_CLOCK_SKEW_SECONDS = 2.0


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


def diagnose(sources: Sources) -> list[Finding]:
    from betty_mcp.llm.embedded import readiness
    from betty_mcp.llm.models import ModelCatalog

    try:
        path = find_config_file(sources.config)
        settings = sources.settings()
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
    services = Services(settings)
    try:
        findings += _checked_database(services)
    except BettyError as exc:  # database_url is not a PostgreSQL URL, or its driver is missing
        findings.append(Finding("database", False, str(exc), "correct database_url in betty.yaml"))
    return findings + handler_findings(services)


def _checked_database(services: Services) -> list[Finding]:
    import anyio

    async def check() -> list[Finding]:
        try:
            return await database_findings(services.store)
        finally:
            await services.aclose()

    return anyio.run(check)


async def database_findings(store: Store) -> list[Finding]:
    """Reachable, migrated, and (PostgreSQL) clocks in step; each with its fix."""
    try:
        status = await store.status()
    except BettyError as exc:
        return [Finding("database", False, str(exc), "start the database, or correct database_url")]
    findings = [
        Finding("database", True, f"{store.backend} at {store.where} answers"),
        Finding(
            "database schema",
            status.current,
            f"{len(status.applied)} migration(s) applied"
            + (f"; pending: {', '.join(status.pending)}" if status.pending else ", none pending"),
            "run betty-mcp db upgrade (serve also applies them on first use)",
        ),
    ]
    server_clock = getattr(store, "server_clock", None)  # a database server with a clock of its own
    if server_clock is None:
        return findings
    try:
        skew = (datetime.now(UTC) - await server_clock()).total_seconds()
    except BettyError as exc:
        return [*findings, Finding("database clock", False, str(exc), "check the database")]
    side = "ahead of" if skew > 0 else "behind"
    findings.append(
        Finding(
            "database clock",
            abs(skew) <= MAX_CLOCK_SKEW_SECONDS,
            f"this machine's clock is {abs(skew):.2f}s {side} the database server's",
            "synchronise the clocks (NTP): budgets' days and run heartbeats depend on them",
        )
    )
    return findings


def handler_findings(services: Services) -> list[Finding]:
    """Per skill: modules its handler imports that its interpreter lacks; manifest/parser disagreements."""
    invocations = services.invocations
    skills = [s for s in services.catalog.skills.values() if s.manifest.runtime.lower() in PYTHON_RUNTIMES]
    wanted: dict[tuple[str, str, str], set[str]] = {}  # (python, PYTHONPATH, cwd) -> modules
    needs: dict[str, tuple[tuple[str, str, str], set[str]]] = {}
    for skill in skills:
        env = invocations.env(skill)
        key = (invocations.python(skill), env.get("PYTHONPATH", ""), str(invocations.cwd(skill)))
        modules = {m for m in imported_modules(skill.handler) if not _local(m, skill.directory)}
        wanted.setdefault(key, set()).update(modules)
        needs[skill.name] = (key, modules)
    found = {key: _importable(key, sorted(modules)) for key, modules in wanted.items()}
    findings = []
    for skill in skills:
        key, modules = needs[skill.name]
        missing = sorted(m for m in modules if found[key].get(m) is False)
        if missing:
            findings.append(
                Finding(
                    f"skill {skill.name}",
                    False,
                    f"its handler imports {', '.join(missing)}, which {key[0]} cannot import",
                    f"install {' '.join(missing)} for {key[0]}, or name the interpreter that has them "
                    "(betty_home_python, or interpreters: in betty.yaml)",
                )
            )
        mismatches = invocations.mismatches(invocations.with_interface(skill))
        if mismatches:
            findings.append(
                Finding(
                    f"skill {skill.name} arguments",
                    False,
                    "; ".join(mismatches),
                    f"make {skill.manifest_path.name}'s inputs match the handler's parser "
                    f"(see 'betty-mcp skills show {skill.name}')",
                )
            )
    if skills and not findings:
        findings.append(Finding("skills", True, f"{len(skills)} handler(s): imports found, arguments agree"))
    return findings


def _local(module: str, folder: Path) -> bool:
    """A module the handler brings itself (a sibling file or package, or a relative import)."""
    return module == "." or (folder / f"{module}.py").is_file() or (folder / module).is_dir()


def _importable(key: tuple[str, str, str], modules: list[str]) -> dict[str, bool]:
    """Ask the interpreter once which of ``modules`` it can import (found, not imported)."""
    if not modules:
        return {}
    python, pythonpath, cwd = key
    code = (
        "import importlib.util, json, sys\n"
        "def found(m):\n"
        "    try:\n        return importlib.util.find_spec(m) is not None\n"
        "    except (ImportError, ValueError):\n        return False\n"
        "print(json.dumps({m: found(m) for m in sys.argv[1:]}))"
    )
    env = {**without_secrets(os.environ), "PYTHONPATH": pythonpath}
    try:
        out = subprocess.run(
            [python, "-c", code, *modules], capture_output=True, text=True, timeout=30, cwd=cwd, env=env
        )
        return json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return dict.fromkeys(modules, False)
