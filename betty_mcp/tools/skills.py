"""Skill tools: one tool per selected skill, plus ``skills_list`` and ``skill_run``.

The two catalog tools are always present, so a host that caps its tool count (Cursor sends
40) can still find and run every skill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from betty_mcp.catalog import Skill
from betty_mcp.tools import CallContext, ToolResult, ToolSpec

if TYPE_CHECKING:
    from betty_mcp.app import BettyApp


def skill_description(skill: Skill) -> str:
    text = (skill.manifest.description or f"Betty skill {skill.name}").strip()
    if skill.manifest.status != "active":
        text += f" (status: {skill.manifest.status})"
    return text


async def run_skill(app: BettyApp, skill: Skill, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
    result = await app.runner.run(skill, arguments, progress=ctx.progress)
    return ToolResult(result.structured, result.text, is_error=not result.ok)


class SkillTool:
    """A skill's own tool: name ``api_validate``, title ``api.validate``."""

    def __init__(self, app: BettyApp, skill: Skill) -> None:
        self.app = app
        self.skill = skill
        self.spec = ToolSpec(
            name=skill.tool_name,
            title=skill.name,
            description=skill_description(skill),
            input_schema=skill.input_schema,
            output_schema=skill.output_schema,
        )

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        return await run_skill(self.app, self.skill, arguments, ctx)


def _skill_entry(skill: Skill, with_schema: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": skill.name,
        "tool": skill.tool_name,
        "version": skill.manifest.version,
        "status": skill.manifest.status,
        "description": skill.manifest.description.strip(),
        "tags": skill.manifest.tags,
        "source": skill.source,
    }
    if with_schema:
        entry["input_schema"] = skill.input_schema
    return entry


def _score(skill: Skill, words: list[str]) -> int:
    """How well a skill matches every query word: name hits count most, then tags, then text."""
    name, tags = skill.name.lower(), [t.lower() for t in skill.manifest.tags]
    text = skill.manifest.description.lower()
    score = 0
    for word in words:
        if word in name:
            score += 3
        elif any(word in t for t in tags):
            score += 2
        elif word in text:
            score += 1
        else:
            return 0
    return score


class SkillsListTool:
    spec = ToolSpec(
        name="skills_list",
        title="skills.list",
        description=(
            "Find Betty skills by name, tag or text. Returns each skill's Betty name, tool name and "
            "input schema; run any of them with skill_run."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Words to match in name, tags and description."},
                "tag": {"type": "string", "description": "Only skills with this tag."},
                "status": {"type": "string", "enum": ["active", "draft", "deprecated", "archived"]},
                "include_schemas": {"type": "boolean", "default": True},
                "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
            },
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "skills": {"type": "array", "items": {"type": "object"}},
                "total": {"type": "integer"},
            },
            "required": ["skills", "total"],
        },
        read_only=True,
    )

    def __init__(self, app: BettyApp) -> None:
        self.app = app

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        statuses = [arguments["status"]] if "status" in arguments else self.app.settings.tools.statuses
        tag = arguments.get("tag")
        words = (arguments.get("query") or "").lower().split()
        found = [
            s
            for s in self.app.catalog.skills.values()
            if s.manifest.status in statuses and (tag is None or tag in s.manifest.tags)
        ]
        if words:
            scored = sorted(((_score(s, words), s) for s in found), key=lambda pair: (-pair[0], pair[1].name))
            found = [s for score, s in scored if score > 0]
        else:
            found.sort(key=lambda s: s.name)
        limit = arguments.get("limit", 50)
        with_schema = arguments.get("include_schemas", True)
        return ToolResult.of(
            {"skills": [_skill_entry(s, with_schema) for s in found[:limit]], "total": len(found)}
        )


class SkillRunTool:
    spec = ToolSpec(
        name="skill_run",
        title="skill.run",
        description=(
            "Run any Betty skill by its Betty name (e.g. 'api.validate') with its arguments; "
            "find skills and their input schemas with skills_list."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "The skill's Betty name, e.g. 'api.validate'."},
                "arguments": {"type": "object", "description": "The skill's arguments.", "default": {}},
            },
            "required": ["name"],
            "additionalProperties": False,
        },
    )

    def __init__(self, app: BettyApp) -> None:
        self.app = app

    async def call(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        name = arguments["name"]
        skill = self.app.catalog.skills.get(name)
        if skill is None:
            close = [s for s in self.app.catalog.skills if name.split(".")[0] in s][:5]
            hint = f"; similar: {', '.join(close)}" if close else "; list skills with skills_list"
            return ToolResult.error(f"unknown skill '{name}'{hint}")
        if skill.manifest.status not in self.app.settings.tools.statuses:
            return ToolResult.error(
                f"skill '{name}' is {skill.manifest.status}; add it to tools.statuses in betty.yaml to run it"
            )
        skill_arguments = arguments.get("arguments") or {}
        problems = self.app.validate_arguments(skill.input_schema, skill_arguments)
        if problems:
            return ToolResult.error(f"invalid arguments for skill '{name}': {problems}")
        return await run_skill(self.app, skill, skill_arguments, ctx)
