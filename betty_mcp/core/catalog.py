"""The catalog: every skill and agent found in the configured sources, plus what was wrong.

Sources, in precedence order (the first to define a name wins; later ones are reported as
shadowed): user folders (``--skills-dir``/``--agents-dir``), a Betty checkout
(``--betty-home``), then the skills and agents bundled with betty-mcp. A broken manifest
is recorded as a problem and skipped; it never stops the server. The catalog knows
nothing about MCP beyond the tool-name rules hosts impose.

    catalog = load_catalog(settings)
    catalog.skills["api.validate"].input_schema
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

from betty_mcp.core.config import Settings
from betty_mcp.core.errors import ManifestError
from betty_mcp.core.handler_interface import HandlerInterface
from betty_mcp.core.manifest_cache import ManifestCache
from betty_mcp.core.manifests import (
    TYPE_ALIASES,
    AgentManifest,
    Param,
    SkillManifest,
    parse_manifest,
    read_yaml,
)
from betty_mcp.core.rules import (
    Resolver,
    folder_name_problem,
    handler_path,
    handler_problem,
    skill_gaps,
    tool_name_for,
    tool_name_problem,
)

Source = Literal["user", "betty-home", "bundled"]
M = TypeVar("M", SkillManifest, AgentManifest)

DOC_FILES = ("SKILL.md", "README.md")


@dataclass(frozen=True)
class Problem:
    severity: Literal["error", "warning"]
    path: str
    message: str

    def __str__(self) -> str:
        return (
            f"{self.severity}: {self.message}"
            if self.message.startswith(self.path)
            else (f"{self.severity}: {self.path}: {self.message}")
        )


@dataclass(frozen=True)
class Skill:
    manifest: SkillManifest
    directory: Path
    source: Source
    # From the manifest at load; from the handler's real interface once that is read (run/invocation).
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    interface: HandlerInterface | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def tool_name(self) -> str:
        return tool_name_for(self.manifest.name)

    @cached_property
    def manifest_path(self) -> Path:
        return self.directory / "skill.yaml"

    @cached_property
    def handler(self) -> Path:
        path = handler_path(self.directory, self.manifest.handler, self.manifest.name)
        assert path is not None  # the catalog keeps only skills with a handler
        return path

    @property
    def params(self) -> list[Param]:
        return self.manifest.params

    @cached_property
    def docs(self) -> Path | None:
        folder = str(self.directory)
        found = next((n for n in DOC_FILES if os.path.isfile(os.path.join(folder, n))), None)
        return self.directory / found if found else None

    @property
    def project_root(self) -> Path:
        """The root a handler's own conventions are relative to (its checkout for a Betty home)."""
        return self.directory.parent.parent


@dataclass(frozen=True)
class Agent:
    manifest: AgentManifest
    directory: Path
    source: Source

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def manifest_path(self) -> Path:
        return self.directory / "agent.yaml"


@dataclass
class Catalog:
    skills: dict[str, Skill] = field(default_factory=dict)
    agents: dict[str, Agent] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # Betty names of the skills that get their own MCP tool, by tool name.
    tools: dict[str, Skill] = field(default_factory=dict)
    stamp: tuple[Any, ...] = ()  # the fingerprint taken when the catalog was loaded

    def replace_skill(self, skill: Skill) -> None:
        """Put a newer version of a skill (e.g. with its handler's interface) where the old one was."""
        self.skills[skill.name] = skill
        if self.tools.get(skill.tool_name) is not None and self.tools[skill.tool_name].name == skill.name:
            self.tools[skill.tool_name] = skill

    def skill_gaps(self, wanted: list[str]) -> dict[str, str]:
        """The listed skills an agent cannot use here, each with why (``rules.skill_gaps``)."""
        return skill_gaps(wanted, {name: s.manifest.status for name, s in self.skills.items()})

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever what a client sees (tools, schemas, resources) changes.

        Built from file stamps, never from the manifests' content: re-serialising a hostile manifest
        (a huge description, an alias bomb in an unknown field) must cost nothing.
        """
        return (
            tuple((s.name, _stamp(s.manifest_path), _stamp(s.handler), s.docs) for s in self.skills.values()),
            tuple((a.name, _stamp(a.manifest_path)) for a in self.agents.values()),
            tuple(self.tools),
        )


def _stamp(path: Path | None) -> tuple[int, int] | None:
    try:
        stat = os.stat(path) if path else None
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if stat else None


def bundled_root() -> Path:
    """``betty_mcp/_bundled`` in an installed wheel; the checkout's root when run from source."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_bundled"
    return installed if installed.is_dir() else package.parent


def sources(settings: Settings, kind: Literal["skills", "agents"]) -> list[tuple[Source, Path]]:
    """The folders holding skills (or agents), in precedence order."""
    user_dirs = settings.skills_dirs if kind == "skills" else settings.agents_dirs
    found: list[tuple[Source, Path]] = [("user", d) for d in user_dirs]
    if settings.betty_home:
        found.append(("betty-home", settings.betty_home / kind))
    if settings.bundled:
        found.append(("bundled", bundled_root() / kind))
    return found


def input_schema(params: list[Param]) -> dict[str, Any]:
    """JSON Schema 2020-12 (MCP's default dialect) for a skill's inputs."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {p.name: p.json_schema() for p in params},
        "additionalProperties": False,
    }
    required = [p.name for p in params if p.required and p.default is None]
    if required:
        schema["required"] = required
    return schema


def output_schema(manifest: SkillManifest) -> dict[str, Any] | None:
    """A schema for the normalised result, only when every declared output has a JSON type.

    Properties are not required: handlers may omit an output, and clients reject a result
    that breaks a declared schema, so only what the manifest really promises is declared.
    """
    outputs = manifest.typed_outputs
    if not outputs:
        return None
    properties: dict[str, Any] = {"ok": {"type": "boolean"}, "status": {"type": "string"}}
    for out in outputs:
        json_type = TYPE_ALIASES.get((out.type or "").lower())
        if json_type is None or out.type in ("file", "path", "filepath", "enum"):
            return None
        properties[out.name] = {
            "type": json_type,
            **({"description": out.description} if out.description else {}),
        }
    return {"type": "object", "properties": properties, "required": ["ok"]}


def _scan(root: Path, filename: str) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p / filename for p in root.iterdir() if (p / filename).is_file())


def _selected(name: str, settings: Settings) -> bool:
    sel = settings.tools
    included = any(fnmatch.fnmatchcase(name, pat) for pat in sel.include)
    return included and not any(fnmatch.fnmatchcase(name, pat) for pat in sel.exclude)


def load_catalog(settings: Settings, reserved_tool_names: frozenset[str] = frozenset()) -> Catalog:
    catalog = Catalog()
    cache = ManifestCache(settings.cache_dir / "manifests.json")
    resolve = Resolver()
    for source, root in sources(settings, "skills"):
        if source != "bundled" and not root.is_dir():
            catalog.problems.append(Problem("error", str(root), "skills folder does not exist"))
        for path in _scan(root, "skill.yaml"):
            _add_skill(catalog, path, source, cache, resolve)
    for source, root in sources(settings, "agents"):
        if source == "user" and not root.is_dir():
            catalog.problems.append(Problem("error", str(root), "agents folder does not exist"))
        for path in _scan(root, "agent.yaml"):
            _add_agent(catalog, path, source, cache)
    cache.save()
    _assign_tools(catalog, settings, reserved_tool_names)
    _check_agent_skills(catalog)
    return catalog


def _loaded(catalog: Catalog, model: type[M], path: Path, cache: ManifestCache) -> M | None:
    """The manifest at ``path``, or None with the problem recorded (a broken file never stops loading)."""
    try:
        return parse_manifest(model, cache.data(path, read_yaml), str(path))
    except ManifestError as exc:
        catalog.problems.append(Problem("error", str(path), str(exc)))
        return None


def _add_skill(catalog: Catalog, path: Path, source: Source, cache: ManifestCache, resolve: Resolver) -> None:
    manifest = _loaded(catalog, SkillManifest, path, cache)
    if manifest is None:
        return
    directory = path.parent
    if (problem := folder_name_problem(manifest.name, path)) is not None:
        catalog.problems.append(Problem("warning", str(path), problem))
    for warning in manifest.load_warnings:
        catalog.problems.append(Problem("warning", str(path), warning))
    if (problem := handler_problem(directory, manifest.handler, manifest.name, resolve)) is not None:
        catalog.problems.append(Problem("error", str(path), problem))
        return
    existing = catalog.skills.get(manifest.name)
    if existing is not None:
        catalog.problems.append(_shadowed("skill", manifest.name, existing, path, source))
        return
    catalog.skills[manifest.name] = Skill(
        manifest=manifest,
        directory=directory,
        source=source,
        input_schema=input_schema(manifest.params),
        output_schema=output_schema(manifest),
    )


def _add_agent(catalog: Catalog, path: Path, source: Source, cache: ManifestCache) -> None:
    manifest = _loaded(catalog, AgentManifest, path, cache)
    if manifest is None:
        return
    existing = catalog.agents.get(manifest.name)
    if existing is not None:
        catalog.problems.append(_shadowed("agent", manifest.name, existing, path, source))
        return
    catalog.agents[manifest.name] = Agent(manifest=manifest, directory=path.parent, source=source)


def _shadowed(kind: str, name: str, existing: Skill | Agent, path: Path, source: Source) -> Problem:
    """A second definition of a name: an error within one source, else the earlier source wins."""
    if existing.source == source:
        return Problem(
            "error",
            str(path),
            f"{kind} '{name}' is also defined in {existing.manifest_path}; the first one is kept",
        )
    return Problem(
        "warning",
        str(path),
        f"{kind} '{name}' is also defined in {existing.manifest_path} ({existing.source}), "
        "which takes precedence",
    )


def _assign_tools(catalog: Catalog, settings: Settings, reserved: frozenset[str]) -> None:
    """Map Betty names to tool names, reporting names hosts would reject and collisions."""
    seen: dict[str, Skill] = {}
    for skill in catalog.skills.values():
        name = skill.tool_name
        if (problem := tool_name_problem(skill.name)) is not None:
            catalog.problems.append(
                Problem("warning", str(skill.manifest_path), f"{problem}; reach it through skill_run")
            )
            continue
        if name in reserved:
            if skill.source != "bundled":  # a bundled skill shadowed by its built-in tool is by design
                catalog.problems.append(
                    Problem(
                        "warning",
                        str(skill.manifest_path),
                        f"tool name '{name}' is a built-in tool; reach this skill through skill_run",
                    )
                )
            continue
        other = seen.setdefault(name, skill)
        if other is not skill:
            catalog.problems.append(
                Problem(
                    "error",
                    str(skill.manifest_path),
                    f"'{skill.name}' and '{other.name}' both map to tool name '{name}'; only '{other.name}' "
                    "gets the tool, use skill_run for the other",
                )
            )
            continue
        if skill.manifest.status in settings.tools.statuses and _selected(skill.name, settings):
            catalog.tools[name] = skill


def _check_agent_skills(catalog: Catalog) -> None:
    for agent in catalog.agents.values():
        gaps = catalog.skill_gaps(agent.manifest.skills_available)
        if gaps:
            listed = "; ".join(f"{name} ({why})" for name, why in gaps.items())
            catalog.problems.append(
                Problem("warning", str(agent.manifest_path), f"agent '{agent.name}' cannot use: {listed}")
            )
