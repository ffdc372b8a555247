"""The domain rules every layer shares, each defined once: statuses, names, ids, limits, envelopes.

Standard library only (handler processes import it too). Each check returns why something is
wrong, or None, so callers choose the severity and the wording around it.

    tool_name_for("api.validate")              # "api_validate"
    skill_gaps(["api.validate", "x.y"], {"api.validate": "active"})   # {"x.y": "no such skill ..."}
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from betty_mcp.core.errors import PathOutsideWorkspace

# -- skills and agents ------------------------------------------------------------------------

SkillStatus = Literal["draft", "active", "deprecated", "archived"]
STATUSES: tuple[SkillStatus, ...] = ("draft", "active", "deprecated", "archived")  # lifecycle order
USABLE_STATUS: SkillStatus = "active"  # what an agent may call, and what gets a tool by default

# Betty names: lowercase dotted parts, e.g. ``api.validate`` (what skill.create and the registry accept;
# manifests found on disk are read more leniently: MANIFEST_NAME).
BETTY_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$")
MANIFEST_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"

# Agents: how many consecutive failed skill calls a run may retry, at most.
MAX_RETRIES = 20
DEFAULT_RETRIES = 3

# -- what every handler finds in its environment ---------------------------------------------

WORKSPACE_ENV = "BETTY_WORKSPACE"  # the folder the handler works in
ALLOWED_ROOTS_ENV = "BETTY_ALLOWED_ROOTS"  # more folders path arguments may point into (os.pathsep)

# -- MCP tool names ---------------------------------------------------------------------------

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Claude Code names a tool mcp__<server>__<tool> and caps the whole at 64 characters.
HOST_PREFIX = "mcp__betty__"
MAX_TOOL_NAME = 64 - len(HOST_PREFIX)


def tool_name_for(betty_name: str) -> str:
    """``api.validate`` -> ``api_validate``: the MCP tool (and model function) name of a skill."""
    return betty_name.replace(".", "_")


def tool_name_problem(betty_name: str) -> str | None:
    """Why a skill's tool name would be refused by hosts, or None."""
    name = tool_name_for(betty_name)
    if len(name) > MAX_TOOL_NAME:
        return f"tool name '{name}' has {len(name)} characters, over hosts' limit of {MAX_TOOL_NAME}"
    if not TOOL_NAME.match(name):
        return f"tool name '{name}' may hold only letters, digits, '_' and '-'"
    return None


def betty_name_problem(name: Any) -> str | None:
    """Why ``name`` is not a valid Betty name for a new skill or agent, or None."""
    if not isinstance(name, str) or not name:
        return "a name is required (a non-empty string like 'data.clean')"
    if not BETTY_NAME.match(name):
        return (
            f"'{name}' is not a Betty name: use lowercase dotted parts, each starting with a letter "
            "and made of a-z, 0-9, '_' and '-' (e.g. 'data.clean')"
        )
    problem = tool_name_problem(name)
    return f"'{name}' is too long: {problem}" if problem else None


def skill_gaps(wanted: Iterable[str], statuses: Mapping[str, str]) -> dict[str, str]:
    """The skills an agent lists but cannot use, each with why: unknown, not active, or no valid tool name.

    ``statuses`` maps every known skill's Betty name to its status.
    """
    gaps: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        status = statuses.get(name)
        if status is None:
            gaps[name] = "no such skill in the catalog"
        elif status != USABLE_STATUS:
            gaps[name] = f"skill status is {status}, not {USABLE_STATUS}"
        elif (problem := tool_name_problem(name)) is not None:
            gaps[name] = problem
    return gaps


# -- manifests on disk ------------------------------------------------------------------------


def folder_name_problem(name: str, manifest_path: Path) -> str | None:
    """A manifest's ``name`` should be its folder's name (Betty finds skills by folder)."""
    folder = manifest_path.parent.name
    return None if name == folder else f"name '{name}' differs from its folder '{folder}'"


def handler_path(directory: Path, declared: str | None, name: str) -> Path | None:
    """A skill's handler: the one its manifest declares, else the one Betty's convention finds."""
    return directory / declared if declared else conventional_handler(directory, name)


class Resolver:
    """``Path.resolve()`` for many paths in the same folders, each folder resolved once.

    ``resolve(p)`` is ``resolve(p.parent) / p.name`` unless ``p`` is a symlink (or ``.``/``..``), so a
    catalogue of skills costs two ``lstat`` calls a skill instead of one per path component. Make one
    per pass over the files: folders are remembered as they were.
    """

    def __init__(self) -> None:
        self._known: dict[str, Path] = {}  # by the path's text: hashing a Path costs more than resolving

    def __call__(self, path: Path) -> Path:
        key = str(path)
        known = self._known.get(key)
        if known is not None:
            return known
        parent = path.parent
        if parent == path or not path.is_absolute() or path.name in ("", ".", "..") or os.path.islink(key):
            resolved = path.resolve()
        else:
            resolved = self(parent) / path.name
        self._known[key] = resolved
        return resolved


def handler_problem(
    directory: Path, declared: str | None, name: str, resolve: Callable[[Path], Path] = Path.resolve
) -> str | None:
    """Why the skill has no usable handler: none found, missing, or outside the skill's folder."""
    path = handler_path(directory, declared, name)
    if path is None:
        return (
            "no handler: declare entrypoints[0].handler, or name it by Betty's convention "
            f"({name.replace('.', '_')}.py, {name.rsplit('.', 1)[-1]}.py, or the folder's only .py file)"
        )
    shown = declared or path.name
    try:
        folder = resolve(directory)
        resolved = resolve(path)
    except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop, a name too long, a NUL
        return f"handler '{shown}' cannot be resolved: {exc}"
    if not resolved.is_relative_to(folder):
        return f"handler '{shown}' resolves to {resolved}, outside the skill's folder {folder}"
    if not resolved.is_file():
        return f"handler '{shown}' not found in {directory}"
    return None


def conventional_handler(folder: Path, name: str) -> Path | None:
    """The handler of a skill.yaml without entrypoints/execution, by Betty's naming convention.

    ``<name with dots as underscores>.py`` (``api.validate`` -> ``api_validate.py``, as Betty names
    them), else ``<last dotted part>.py`` (``api.validate`` -> ``validate.py``), else the only ``.py``
    file in the folder that is not a test or ``__init__.py``. None when nothing (or several) fit.
    """
    for candidate in (name.replace(".", "_").replace("-", "_") + ".py", name.rsplit(".", 1)[-1] + ".py"):
        if (folder / candidate).is_file():
            return folder / candidate
    scripts = [
        p
        for p in sorted(folder.glob("*.py"))
        if p.name != "__init__.py" and not p.name.startswith("test_") and not p.name.endswith("_test.py")
    ]
    return scripts[0] if len(scripts) == 1 else None


def confined(path: Path, root: Path) -> Path:
    """``path`` with every symlink followed, refused unless it stays inside ``root`` (resolved too).

    Every file betty-mcp itself reads or writes in a workspace goes through this: a symlink placed in
    ``.betty-mcp/`` or ``registry/`` must not lead a read or a write out of it.
    """
    try:
        resolved = path.resolve()
        base = root.resolve()
    except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop, a NUL
        raise PathOutsideWorkspace(f"{path} cannot be resolved: {exc}") from None
    if resolved != base and not resolved.is_relative_to(base):
        raise PathOutsideWorkspace(f"{path} leads to {resolved}, outside {base}; refusing to follow it")
    return resolved


# -- runs and saved outputs -------------------------------------------------------------------

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
OUTPUT_ID = re.compile(r"^[0-9a-f]{12}$")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


def new_output_id() -> str:
    return uuid.uuid4().hex[:12]


def run_id_problem(run_id: str) -> str | None:
    if RUN_ID.match(run_id) and ".." not in run_id:
        return None
    return f"run id {run_id!r} must be letters, digits, '.', '_' or '-' (at most 128)"


# -- results ----------------------------------------------------------------------------------


def failure_envelope(message: str, code: str | None = None, **details: Any) -> dict[str, Any]:
    """The one failure shape of every result: ``{"ok": false, "status": "failed", "errors": [...]}``."""
    error: dict[str, Any] = {"code": code, "message": message} if code else {"message": message}
    return {"ok": False, "status": "failed", "errors": [{**error, **details}]}
