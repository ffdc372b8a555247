"""The application state behind every transport: settings, catalog, runner and tools.

Built explicitly and passed in; nothing global. ``reload()`` re-reads the sources and tells
whether what clients see changed.

    app = BettyApp(load_settings())
    tool = app.tool("api_validate")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from betty_mcp.catalog import Catalog, load_catalog
from betty_mcp.config import Settings
from betty_mcp.errors import describe_argument_error
from betty_mcp.runner import SkillRunner
from betty_mcp.tools import Tool
from betty_mcp.tools.agent import AgentRunTool, AgentsListTool, RunCancelTool, RunResultTool, RunStatusTool
from betty_mcp.tools.llm import LlmQueryTool, ModelsListTool
from betty_mcp.tools.skills import SkillRunTool, SkillsListTool, SkillTool

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from jsonschema.protocols import Validator

    from betty_mcp.agent.runs import RunManager
    from betty_mcp.llm.service import LlmService

log = logging.getLogger(__name__)


class BettyApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runner = SkillRunner(settings)
        self.builtin_tools: dict[str, Tool] = {
            t.spec.name: t
            for t in (
                SkillsListTool(self),
                SkillRunTool(self),
                LlmQueryTool(self),
                ModelsListTool(self),
                AgentRunTool(self),
                RunStatusTool(self),
                RunResultTool(self),
                RunCancelTool(self),
                AgentsListTool(self),
            )
        }
        self._llm: LlmService | None = None
        self._runs: RunManager | None = None
        # The serving process's long-lived task group (set by the transport); None in one-shot CLI use.
        self.background: TaskGroup | None = None
        self.catalog = Catalog()
        self.tools: dict[str, Tool] = {}
        self._validators: dict[int, tuple[dict[str, Any], Validator]] = {}
        self.reload()

    def reload(self) -> bool:
        """Re-read every source; True when tools, schemas or resources changed."""
        catalog = load_catalog(self.settings, reserved_tool_names=frozenset(self.builtin_tools))
        changed = not self.catalog.skills or catalog.fingerprint() != self.catalog.fingerprint()
        for problem in catalog.problems:
            log.warning("%s", problem)
        self.catalog = catalog
        self._validators = {}
        self.tools = {**self.builtin_tools, **{n: SkillTool(self, s) for n, s in catalog.tools.items()}}
        return changed

    async def llm(self) -> LlmService:
        """The LLM service, built on first use: start-up does no LLM work."""
        if self._llm is None:
            import anyio.to_thread

            from betty_mcp.llm.service import LlmService

            settings = self.settings
            self._llm = await anyio.to_thread.run_sync(
                lambda: LlmService(settings.router, settings.ledger_path)
            )
        return self._llm

    @property
    def runs(self) -> RunManager:
        """Agent runs of this process (imported on first use: start-up stays light)."""
        if self._runs is None:
            from betty_mcp.agent.runs import RunManager

            self._runs = RunManager(self)
        return self._runs

    def tool(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def _validator(self, schema: dict[str, Any]) -> Validator:
        """Compiled once per schema object; the cache holds the schema, so ids are never reused."""
        cached = self._validators.get(id(schema))
        if cached is None:
            from jsonschema import Draft202012Validator  # off the start-up path

            cached = self._validators[id(schema)] = (schema, Draft202012Validator(schema))
        return cached[1]

    def validate_arguments(self, schema: dict[str, Any], arguments: Any) -> str | None:
        """A person-readable list of what is wrong with ``arguments``, or None when they are valid."""
        errors = sorted(self._validator(schema).iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        return "; ".join(describe_argument_error(e, schema) for e in errors[:10])
