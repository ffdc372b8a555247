"""The project's exceptions (a shallow tree, each a thing a person can act on); argument errors in words."""

from typing import Any


class BettyError(Exception):
    """Base of every error betty-mcp raises on purpose."""


class ConfigError(BettyError):
    """The configuration file or a flag is invalid."""


class ManifestError(BettyError):
    """A skill.yaml or agent.yaml is broken; the message names the file, the field and the problem."""


class ArgumentsError(BettyError):
    """Tool arguments do not match the tool's input schema."""


class PathOutsideWorkspace(ArgumentsError):
    """A path argument resolves outside the workspace and the allowed roots."""


class BudgetExceeded(BettyError):
    """A call would exceed a configured budget; `budget` names which one (e.g. "per_day")."""

    def __init__(self, message: str, *, budget: str) -> None:
        super().__init__(message)
        self.budget = budget


class ProviderError(BettyError):
    """An LLM provider failed; ``kind`` says how, and whether another model may do better."""

    RETRYABLE = frozenset({"rate_limit", "server", "timeout", "connection", "not_found", "context_window"})

    def __init__(self, message: str, kind: str, model: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.model = model

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


def describe_argument_error(error: Any, schema: dict[str, Any]) -> str:
    """One jsonschema error about tool arguments, said for a person: missing, unknown, or wrong."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        prefix = f"in '{where}': " if where else ""
        return f"{prefix}missing required argument '{missing}'"
    if error.validator == "additionalProperties" and not where:
        accepted = ", ".join(schema.get("properties", {})) or "none"
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return f"unknown argument(s) {', '.join(repr(e) for e in extra)}; accepted: {accepted}"
    if error.validator == "type" and not where:
        return f"arguments must be an object, got {type(error.instance).__name__}"
    return f"argument '{where}': {error.message}" if where else error.message
