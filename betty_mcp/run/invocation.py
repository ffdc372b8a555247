"""How a skill's handler is invoked: interpreter, environment, working directory, and its command line
built from the handler's real interface (read once per handler version, cached; ``interface.py``).

    invocations = Invocations(settings)
    skill = invocations.with_interface(skill)          # the parser's facts in the schema
    call = invocations.build(skill, {"spec_path": "openapi.yaml"})
    call.argv   # [python, handler.py, "openapi.yaml", "--rule-set", "all"]
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from betty_mcp.core.catalog import Skill
from betty_mcp.core.config import DATABASE_URL_ENV, SETTINGS_ENV, Settings
from betty_mcp.core.errors import ArgumentsError, ArgvError, PathOutsideWorkspace
from betty_mcp.core.handler_interface import HandlerInterface
from betty_mcp.core.rules import ALLOWED_ROOTS_ENV, WORKSPACE_ENV
from betty_mcp.core.secrets import without_secrets
from betty_mcp.run import argv
from betty_mcp.run.interface import InterfaceCache, interface_for

OTHER_RUNTIMES = {"bash": "bash", "sh": "sh", "node": "node"}
PYTHON_RUNTIMES = ("python", "python3")
NO_INTERFACE = HandlerInterface(source="manifest")


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    stdin: bytes | None = None


def base_environment(settings: Settings) -> dict[str, str]:
    """What every handler gets: this environment minus secrets, plus the workspace and settings. The
    shared database's URL (a password in it) is a secret too: only skills given the LLM keys get it."""
    env = without_secrets(os.environ, extra_names=[DATABASE_URL_ENV])
    env[WORKSPACE_ENV] = str(settings.workspace)
    env[ALLOWED_ROOTS_ENV] = os.pathsep.join(str(r) for r in settings.roots()[1:])
    env[SETTINGS_ENV] = settings.model_copy(update={"database_url": None}).model_dump_json()
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def llm_environment(settings: Settings) -> dict[str, str]:
    """What skills that call LLMs (``mcp.llm_keys``) get on top: the API keys, and the settings with the
    database in force, so that their calls count in the shared ledger and budgets."""
    env = {name: os.environ[name] for name in settings.router.key_env_names() if name in os.environ}
    if settings.database:
        env[SETTINGS_ENV] = settings.model_copy(update={"database_url": settings.database}).model_dump_json()
    return env


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
            path = _resolved(cwd, item, param.name)
            if not any(path == root or path.is_relative_to(root) for root in roots):
                raise PathOutsideWorkspace(
                    f"argument '{param.name}': '{item}' resolves to {path}, outside the workspace "
                    f"{settings.workspace}; use a path inside it or add an allowed root"
                )


def _resolved(cwd: Path, value: str, name: str) -> Path:
    """Where a path argument points; a value no path can be (a NUL, an unknown ``~user``) is refused."""
    if "\0" in value:
        raise ArgumentsError(f"argument '{name}': a path cannot contain a NUL character")
    try:
        return (cwd / Path(value).expanduser()).resolve()
    except (RuntimeError, OSError) as exc:  # ~nosuchuser, a symlink loop, a name too long
        raise ArgumentsError(f"argument '{name}': '{value[:200]}' is not a usable path ({exc})") from None


def _explicit(skill: Skill) -> dict[str, Any]:
    """The ``mcp`` mapping settings the manifest sets itself (they override the handler's parser)."""
    options = skill.manifest.mcp
    return {
        "style": options.arguments if "arguments" in options.model_fields_set else None,
        "flag_style": options.flag_style if "flag_style" in options.model_fields_set else None,
        "positional": options.positional,
    }


class Invocations:
    """How this server invokes each skill's handler. ``base_env`` is computed once."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_env = base_environment(settings)
        self.interfaces = InterfaceCache(settings.cache_dir / "interfaces.json")

    # -- where and how it runs --------------------------------------------------------------------

    def python(self, skill: Skill) -> str:
        """A Python handler's interpreter: its source's configured one, a checkout's .venv, or ours."""
        root = skill.project_root if skill.source == "betty-home" else skill.directory.parent
        for folder, python in self.settings.interpreters.items():
            if root == folder or root.is_relative_to(folder):
                return str(python)
        if skill.source == "betty-home":
            if self.settings.betty_home_python is not None:
                return str(self.settings.betty_home_python)
            own = skill.project_root / ".venv" / "bin" / "python"
            if own.is_file():
                return str(own)
        return sys.executable

    def interpreter(self, skill: Skill) -> str:
        runtime = skill.manifest.runtime.lower()
        if runtime in PYTHON_RUNTIMES:
            return self.python(skill)
        if runtime in OTHER_RUNTIMES:
            return OTHER_RUNTIMES[runtime]
        supported = ", ".join([*PYTHON_RUNTIMES, *OTHER_RUNTIMES])
        raise ArgumentsError(f"skill '{skill.name}' declares runtime '{runtime}'; supported: {supported}")

    def cwd(self, skill: Skill) -> Path:
        return working_directory(skill, self.settings)

    def env(self, skill: Skill) -> dict[str, str]:
        """The base environment plus what this skill needs (its declared secrets, a checkout's paths)."""
        env = dict(self.base_env)
        env.update({name: os.environ[name] for name in skill.manifest.mcp.env if name in os.environ})
        if skill.manifest.mcp.llm_keys:
            env.update(llm_environment(self.settings))
        if skill.source == "betty-home":
            root = str(skill.project_root)
            env["BETTY_HOME"] = root
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    # -- the handler's interface ------------------------------------------------------------------

    def reads_argparse(self, skill: Skill) -> bool:
        """Whether reading the handler's interface applies: a Python handler betty-mcp passes argv to."""
        return skill.manifest.runtime.lower() in PYTHON_RUNTIMES and _explicit(skill)["style"] is None

    def known_interface(self, skill: Skill) -> HandlerInterface | None:
        """The cached interface of this version of the handler, without running anything."""
        if not self.reads_argparse(skill):
            return NO_INTERFACE
        return self.interfaces.get(skill.handler, self.python(skill))

    def read_interface(self, skill: Skill) -> HandlerInterface:
        """The handler's interface: the cache, else read now (blocking: run it off the event loop)."""
        if not self.reads_argparse(skill):
            return NO_INTERFACE
        return interface_for(
            skill.handler,
            python=self.python(skill),
            env=self.env(skill),
            cwd=self.cwd(skill),
            cache=self.interfaces,
        )

    def with_interface(self, skill: Skill, interface: HandlerInterface | None = None) -> Skill:
        """``skill`` with its handler's interface and the schema derived from it (read if not given)."""
        found = interface or self.read_interface(skill)
        if skill.interface == found:
            return skill
        schema = argv.input_schema(skill.params, found, **_explicit(skill))
        return replace(skill, interface=found, input_schema=schema)

    def mismatches(self, skill: Skill) -> list[str]:
        """Where the manifest and the handler's parser disagree (for ``validate`` and ``doctor``)."""
        return argv.mismatches(skill.params, skill.interface or NO_INTERFACE, **_explicit(skill))

    def describe(self, skill: Skill) -> list[dict[str, Any]]:
        """How each input reaches the handler, and from what the mapping was derived."""
        return argv.describe(skill.interface or NO_INTERFACE, skill.params, **_explicit(skill))

    # -- one call ---------------------------------------------------------------------------------

    def build(self, skill: Skill, arguments: dict[str, Any]) -> Invocation:
        """The process to start for one call (``skill`` as given by ``with_interface``)."""
        explicit = _explicit(skill)
        interface = skill.interface or NO_INTERFACE
        mode = argv.argv_mode(interface, **explicit)
        command = [self.interpreter(skill), str(skill.handler)]
        stdin = None
        if mode == "json-stdin":
            stdin = json.dumps(arguments, ensure_ascii=False).encode()
        else:
            command += argv.build_argv(interface, skill.params, arguments, **explicit)
            if any("\0" in token for token in command):
                raise ArgvError(
                    "an argument holds a NUL character, which no command line can carry; "
                    "remove it (or give the skill mcp.arguments: json-stdin)"
                )
        return Invocation(argv=command, env=self.env(skill), cwd=self.cwd(skill), stdin=stdin)
