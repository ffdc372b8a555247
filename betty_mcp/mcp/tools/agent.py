"""Agent tools: ``agent_run`` and its background companions ``run_status``, ``run_result``,
``run_cancel``, plus ``agents_list``."""

from __future__ import annotations

from typing import Any

from betty_mcp.core.rules import MAX_RETRIES
from betty_mcp.mcp.tools import (
    DEFAULT_WAIT_SECONDS,
    WAIT_INPUTS,
    CallContext,
    ServiceTool,
    ToolResult,
    ToolSpec,
)

RUN_ID = {"type": "string", "minLength": 1, "description": "The run id agent_run returned."}
RUN_ID_INPUT = {
    "type": "object",
    "properties": {"run_id": RUN_ID},
    "required": ["run_id"],
    "additionalProperties": False,
}

RUN_OUTPUT = {
    "type": "object",
    "properties": {
        "run_id": {"type": "string"},
        "agent": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "completed", "failed", "budget_exceeded", "timed_out", "cancelled"],
        },
        "answer": {"type": ["string", "null"]},
        "steps": {"type": "array", "items": {"type": "object"}},
        "totals": {"type": ["object", "null"]},
    },
    "required": ["run_id", "status", "steps"],
}


class AgentRunTool(ServiceTool):
    spec = ToolSpec(
        name="agent_run",
        title="agent.run",
        description=(
            "Hand a task to a Betty agent: an LLM (chosen by the agent's llm_config and the routing "
            "rules) plans, calls the agent's allowed skills and iterates within limits. Returns the "
            "answer, every step, tokens and cost. With wait=false it returns a run id at once: follow "
            "it with run_status, run_result and run_cancel."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "agent": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The agent's name (see agents_list).",
                },
                "task": {"type": "string", "minLength": 1, "description": "What the agent should do."},
                "context": {"type": "object", "description": "Facts for the agent, e.g. file paths."},
                "model": {"type": "string", "description": "Use this model instead of the agent's own."},
                "limits": {
                    "type": "object",
                    "properties": {
                        "max_steps": {"type": "integer", "minimum": 1, "maximum": 100},
                        "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
                        "max_tokens": {"type": "integer", "minimum": 1},
                        "max_cost_usd": {"type": "number", "minimum": 0},
                        "max_retries": {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
                    },
                    "additionalProperties": False,
                },
                **WAIT_INPUTS,
            },
            "required": ["agent", "task"],
            "additionalProperties": False,
        },
        output_schema=RUN_OUTPUT,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        from betty_mcp.agent import RunLimits, RunRequest

        request = RunRequest(
            arguments["agent"],
            arguments["task"],
            arguments.get("context"),
            arguments.get("model"),
            RunLimits(**arguments.get("limits", {})),
        )
        if not arguments.get("wait", True):
            return ToolResult.of(await self.services.submit_agent_run(request))
        handle = self.services.start_agent_run(request)
        try:
            result = await self.services.runs.wait(
                handle, arguments.get("wait_seconds", DEFAULT_WAIT_SECONDS), ctx.progress
            )
        except BaseException:
            handle.scope.cancel()  # the caller gave up on a run it was waiting for: stop it
            raise
        return run_result(result)


class RunStatusTool(ServiceTool):
    spec = ToolSpec(
        name="run_status",
        title="run.status",
        description="The status of an agent run: running or finished, steps so far, the last step, totals.",
        input_schema=RUN_ID_INPUT,
        read_only=True,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        return ToolResult.of(await self.services.runs.status(arguments["run_id"]))


class RunResultTool(ServiceTool):
    spec = ToolSpec(
        name="run_result",
        title="run.result",
        description=(
            "The result of an agent run; waits up to wait_seconds (default 0) for it to finish, and "
            "returns the partial result (status running) otherwise."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "run_id": RUN_ID,
                "wait_seconds": {"type": "number", "minimum": 0, "maximum": 3600, "default": 0},
            },
            "required": ["run_id"],
            "additionalProperties": False,
        },
        output_schema=RUN_OUTPUT,
        read_only=True,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        runs = self.services.runs
        result = await runs.result(arguments["run_id"], arguments.get("wait_seconds", 0), ctx.progress)
        return run_result(result)


class RunCancelTool(ServiceTool):
    spec = ToolSpec(
        name="run_cancel",
        title="run.cancel",
        description="Cancel an agent run: its model call stops and its running skills are killed.",
        input_schema=RUN_ID_INPUT,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        return ToolResult.of(await self.services.runs.cancel(arguments["run_id"]))


class AgentsListTool(ServiceTool):
    spec = ToolSpec(
        name="agents_list",
        title="agents.list",
        description="The agents agent_run can use: their skills (and any missing), mode and models.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={
            "type": "object",
            "properties": {"agents": {"type": "array", "items": {"type": "object"}}},
            "required": ["agents"],
        },
        read_only=True,
    )

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> ToolResult:
        agents = sorted(self.services.agents().values(), key=lambda a: a.name)
        return ToolResult.of({"agents": [self.services.describe_agent(a) for a in agents]})


def run_result(result: dict[str, Any]) -> ToolResult:
    """A run's (partial) result: an error result unless the run completed or is still going."""
    return ToolResult.of(result, is_error=result["status"] not in ("completed", "running"))
