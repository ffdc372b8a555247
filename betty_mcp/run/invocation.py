"""How a skill's handler is invoked: argv, environment, working directory, stdin.

Pure functions; the runner owns the process. The argument style comes from the manifest's
``mcp.arguments`` (see ``McpOptions``); the default is Betty's own convention.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from betty_mcp.core.catalog import Skill
from betty_mcp.core.config import SETTINGS_ENV, Settings
from betty_mcp.core.errors import ArgumentsError, PathOutsideWorkspace
from betty_mcp.core.rules import ALLOWED_ROOTS_ENV, WORKSPACE_ENV
from betty_mcp.core.secrets import without_secrets

INTERPRETERS = {
    "python": sys.executable,
    "python3": sys.executable,
    "bash": "bash",
    "sh": "sh",
    "node": "node",
}


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdin: bytes | None = None


def interpreter(skill: Skill) -> str:
    runtime = skill.manifest.runtime.lower()
    if runtime not in INTERPRETERS:
        raise ArgumentsError(
            f"skill '{skill.name}' declares runtime '{runtime}'; supported: {', '.join(INTERPRETERS)}"
        )
    return INTERPRETERS[runtime]


def working_directory(skill: Skill, settings: Settings) -> Path:
    """A Betty checkout's handlers run from its root, as Betty runs them; others from the workspace."""
    return skill.project_root if skill.source == "betty-home" else settings.workspace


def check_paths(skill: Skill, arguments: dict[str, Any], settings: Settings) -> None:
    """Refuse a path argument that resolves outside the workspace and the allowed roots."""
    cwd = working_directory(skill, settings)
    roots = [r.resolve() for r in settings.roots()]
    for param in skill.params:
        if not param.is_path or param.name not in arguments:
            continue
        value = arguments[param.name]
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, str):
                continue
            path = (cwd / Path(item).expanduser()).resolve()
            if not any(path == root or path.is_relative_to(root) for root in roots):
                raise PathOutsideWorkspace(
                    f"argument '{param.name}': '{item}' resolves to {path}, outside the workspace "
                    f"{settings.workspace}; use a path inside it or add an allowed root"
                )


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def betty_argv(skill: Skill, arguments: dict[str, Any]) -> list[str]:
    """Required inputs positional in declared order; optional ones ``--name value``; booleans as flags."""
    options = skill.manifest.mcp
    params = skill.params
    positional = (
        options.positional if options.positional is not None else [p.name for p in params if p.required]
    )
    argv = [_as_text(arguments[name]) for name in positional if name in arguments]
    for param in params:
        if param.name in positional or param.name not in arguments or arguments[param.name] is None:
            continue
        value = arguments[param.name]
        flag = "--" + (param.name.replace("_", "-") if options.flag_style == "kebab" else param.name)
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif param.default is True:
                argv.append("--no-" + flag[2:])
            continue
        argv += [flag, _as_text(value)]
    return argv


def base_environment(settings: Settings) -> dict[str, str]:
    """What every handler gets: this environment minus secrets, plus the workspace and settings."""
    env = without_secrets(os.environ)
    env[WORKSPACE_ENV] = str(settings.workspace)
    env[ALLOWED_ROOTS_ENV] = os.pathsep.join(str(r) for r in settings.roots()[1:])
    env[SETTINGS_ENV] = settings.model_dump_json()
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def child_environment(skill: Skill, settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (from base_environment, computed once by the runner) plus what this skill needs."""
    env = dict(base if base is not None else base_environment(settings))
    keep = list(skill.manifest.mcp.env)
    if skill.manifest.mcp.llm_keys:
        keep += settings.router.key_env_names()
    env.update({name: os.environ[name] for name in keep if name in os.environ})
    if skill.source == "betty-home":
        root = str(skill.project_root)
        env["BETTY_HOME"] = root
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def build_invocation(
    skill: Skill, arguments: dict[str, Any], settings: Settings, base_env: dict[str, str] | None = None
) -> Invocation:
    command = [interpreter(skill), str(skill.handler)]
    style = skill.manifest.mcp.arguments
    stdin = None
    if style == "json-argv":
        command.append(json.dumps(arguments, ensure_ascii=False))
    elif style == "json-stdin":
        stdin = json.dumps(arguments, ensure_ascii=False).encode()
    else:
        command += betty_argv(skill, arguments)
    return Invocation(
        argv=command,
        env=child_environment(skill, settings, base_env),
        cwd=working_directory(skill, settings),
        stdin=stdin,
    )
