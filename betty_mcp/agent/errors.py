"""The agent runtime's own error: a run that cannot even start."""

from betty_mcp.errors import BettyError


class AgentError(BettyError):
    """An agent run cannot start: unknown agent, or an invalid run id."""
