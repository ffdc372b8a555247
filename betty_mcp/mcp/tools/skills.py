"""Skill tools: one tool per selected skill, plus ``skills_list`` and ``skill_run``.

The two catalog tools are always present, so a host that caps its tool count (Cursor sends
40) can still find and run every skill.
"""

from __future__ import annotations

from typing import Any

from betty_mcp.core.catalog import Skill
from betty_mcp.core.rules import STATUSES
from betty_mcp.mcp.tools import CallContext, ServiceTool, ToolResult, ToolSpec
from betty_mcp.services import Services


def skill_description(skill: Skill) -> str:
    text = (skill.manifest.description or f"Betty skill {skill.name}").strip()
    if skill.manifest.status != "active":
        text += f" (status: {skill.manifest.status})"
    return text


async def run_skill(
    services: Services, skill: Skill, arguments: dict[str, Any], ctx: CallContext, *, checked: bool
) -> ToolResult:
    result = await services.run_skill(skill, arguments, ctx.progress, checked=checked)
    return ToolResult(result.structured, result.text, is_error=not result.ok)


class SkillTool(ServiceTool):
    """A skill's own tool: name ``api_validate``, title ``api.validate``."""

    def __init__(self, services: Services, skill: Skill) -> None:
        super().__init__(services)
        self.skill = skill
        self.spec = ToolSpec(
            name=skill.tool_name,
            title=skill.name,
            description=skill_description(skill),
            input_schema=skill.input_schema,
            output_schema=skill.output_schema,
        )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        return await run_skill(self.services, self.skill, arguments, ctx, checked=True)  # by the server


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


class SkillsListTool(ServiceTool):
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
                "status": {"type": "string", "enum": list(STATUSES)},
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

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        found = self.services.find_skills(
            arguments.get("query") or "", tag=arguments.get("tag"), status=arguments.get("status")
        )
        limit = arguments.get("limit", 50)
        with_schema = arguments.get("include_schemas", True)
        return ToolResult.of(
            {"skills": [_skill_entry(s, with_schema) for s in found[:limit]], "total": len(found)}
        )


class SkillRunTool(ServiceTool):
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

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        skill = self.services.skill(arguments["name"])
        return await run_skill(self.services, skill, arguments.get("arguments") or {}, ctx, checked=False)
