"""Running Betty agents: a model calls the agent's allowed skills until it can answer.

runtime = services.agent_runtime()          # catalog, runner, LLM service, validator, store
result = await runtime.run("api.analyzer", "Review openapi.yaml")
result.status, result.answer, [s.summary for s in result.steps]
"""

from betty_mcp.agent.prompt import Plan, PlannedCall, parse_plan, system_prompt
from betty_mcp.agent.runtime import AgentRuntime, OnStep, Toolbox
from betty_mcp.agent.state import RunLimits, RunRequest, RunResult, RunState, Step
from betty_mcp.agent.trace import TraceWriter, list_runs, summarise_trace

__all__ = [
    "AgentRuntime",
    "OnStep",
    "Plan",
    "PlannedCall",
    "RunLimits",
    "RunRequest",
    "RunResult",
    "RunState",
    "Step",
    "Toolbox",
    "TraceWriter",
    "list_runs",
    "parse_plan",
    "summarise_trace",
    "system_prompt",
]
