"""The tools one server offers: the built-in ones plus a tool per selected skill, rebuilt on reload.

tools = ToolRegistry(services)
tools.get("api_validate"), tools.list()
tools.allowed(tool)        # may the current caller use it (their role's tool set)?
"""

from __future__ import annotations

from betty_mcp.mcp.tools import Tool
from betty_mcp.mcp.tools.agent import (
    AgentRunTool,
    AgentsListTool,
    RunCancelTool,
    RunResultTool,
    RunStatusTool,
)
from betty_mcp.mcp.tools.llm import LlmConsensusTool, LlmQueryTool, ModelsListTool
from betty_mcp.mcp.tools.skills import SkillRunTool, SkillsListTool, SkillTool
from betty_mcp.services import Services

BUILTIN_TOOLS = (
    SkillsListTool,
    SkillRunTool,
    LlmQueryTool,
    LlmConsensusTool,
    ModelsListTool,
    AgentRunTool,
    RunStatusTool,
    RunResultTool,
    RunCancelTool,
    AgentsListTool,
)


class ToolRegistry:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.builtin: dict[str, Tool] = {t.spec.name: t(services) for t in BUILTIN_TOOLS}
        services.reserved_tool_names = frozenset(self.builtin)
        self.tools: dict[str, Tool] = {}
        self.reload()

    def reload(self) -> bool:
        """Re-read the skill sources; True when what clients see changed."""
        changed = self.services.reload()
        self._rebuild()
        return changed

    async def read_interfaces(self) -> bool:
        """Read the handler interfaces not known yet (in the background); True when a schema changed."""
        changed = await self.services.read_interfaces()
        self._rebuild()
        return bool(changed)

    def _rebuild(self) -> None:
        skills = self.services.catalog.tools
        self.tools = {**self.builtin, **{name: SkillTool(self.services, s) for name, s in skills.items()}}

    async def ready(self, name: str) -> Tool | None:
        """The tool ``name``, its skill's handler interface read first so its schema is the real one."""
        tool = self.tools.get(name)
        if isinstance(tool, SkillTool) and tool.skill.interface is None:
            skill = await self.services.ready(tool.skill)
            if skill is not tool.skill:
                tool = self.tools[name] = SkillTool(self.services, skill)
        return tool

    def allowed(self, tool: Tool) -> bool:
        """Whether the current caller may use ``tool`` (a skill's by its tool or its Betty name)."""
        if isinstance(tool, SkillTool):
            return self.services.may_use_skill(tool.skill)
        return self.services.may_use_tool(tool.spec.name)

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def list(self) -> list[Tool]:
        return list(self.tools.values())
