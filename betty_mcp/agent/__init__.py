"""Running Betty agents: a model calls the agent's allowed skills until it can answer.

from betty_mcp.agent import AgentRuntime
result = await AgentRuntime(app).run("api.analyzer", "Review openapi.yaml")
result.status, result.answer, [s.summary for s in result.steps]
"""

from betty_mcp.agent.errors import AgentError
from betty_mcp.agent.prompt import Plan, PlannedCall, parse_plan, system_prompt
from betty_mcp.agent.runtime import AgentRuntime, OnStep, Toolbox, new_run_id
from betty_mcp.agent.state import RunLimits, RunResult, RunState, Step
from betty_mcp.agent.trace import TraceWriter, list_runs, read_trace, run_summary

__all__ = [
    "AgentError",
    "AgentRuntime",
    "OnStep",
    "Plan",
    "PlannedCall",
    "RunLimits",
    "RunResult",
    "RunState",
    "Step",
    "Toolbox",
    "TraceWriter",
    "list_runs",
    "new_run_id",
    "parse_plan",
    "read_trace",
    "run_summary",
    "system_prompt",
]
