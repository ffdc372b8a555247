"""The tools one server offers: the built-in ones plus a tool per selected skill, rebuilt on reload.

tools = ToolRegistry(services)
tools.get("api_validate"), tools.list()
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
from betty_mcp.mcp.tools.llm import LlmQueryTool, ModelsListTool
from betty_mcp.mcp.tools.skills import SkillRunTool, SkillsListTool, SkillTool
from betty_mcp.services import Services

BUILTIN_TOOLS = (
    SkillsListTool,
    SkillRunTool,
    LlmQueryTool,
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
        skills = self.services.catalog.tools
        self.tools = {**self.builtin, **{name: SkillTool(self.services, s) for name, s in skills.items()}}
        return changed

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def list(self) -> list[Tool]:
        return list(self.tools.values())
