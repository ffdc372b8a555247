"""Every exception betty-mcp raises on purpose: one shallow tree, each a thing a person can act on.

    BettyError
    ├── ConfigError                 betty.yaml or a flag is invalid
    ├── DocumentError               a YAML/JSON document cannot be read (too big, bad syntax, alias bomb)
    │   └── ManifestError           a skill.yaml or agent.yaml is broken (file, field, problem)
    ├── ArgumentsError              tool arguments do not fit the tool, or cannot be passed to the handler
    │   ├── PathOutsideWorkspace    a path argument leads outside the workspace and the allowed roots
    │   └── ArgvError               arguments the handler's command line cannot take
    ├── CaptureStopped              reading a handler's interface was stopped (the server is exiting)
    ├── StorageError                the database (database_url) cannot be reached, or is not migrated
    ├── BudgetExceeded              a call would exceed a ledger budget (``budget`` names it)
    ├── RunLimitReached             an agent run reached one of its own limits (``limit`` names it)
    ├── Unauthorized                an HTTP caller's bearer token is refused (``error`` is RFC 6750's)
    │   └── InsufficientScope       a valid token without the scopes the server requires
    ├── AgentError                  an agent run cannot start
    │   ├── UnknownAgent
    │   └── UnknownRun
    └── ProviderError               an LLM provider failed (``kind`` for people and the ledger)
        ├── RetryableProviderError  another model may do better: the fallback walk goes on
        │   ├── RateLimited             429
        │   ├── ProviderUnavailable     5xx, an empty stream
        │   ├── ProviderTimeout         408, 504, no answer in time
        │   ├── ProviderUnreachable     connection refused or reset
        │   ├── ModelNotFound           404, unknown model
        │   └── ContextWindowExceeded   the prompt is too long for this model
        ├── AuthenticationFailed    401, 403: no other model fixes a bad key
        ├── BadRequest              400: the request itself is wrong
        ├── ModelNotConfigured      no key, or the backend is not installed
        └── AllModelsFailed         the fallback walk ended; ``hops`` says how each model failed

Handler processes have their own ``SkillError`` (``kit/skillkit.py``): it never crosses into the server.
This module imports nothing but the standard library: handlers import it too.
"""

from __future__ import annotations

from typing import Any


class BettyError(Exception):
    """Base of every error betty-mcp raises on purpose. ``code`` and ``details()`` go into error results."""

    code = "error"

    def details(self) -> dict[str, Any]:
        return {}


class ConfigError(BettyError):
    """The configuration file or a flag is invalid."""

    code = "config"


class DocumentError(BettyError):
    """A YAML or JSON document cannot be read; the message names the file and the problem."""

    code = "document"


class ManifestError(DocumentError):
    """A skill.yaml or agent.yaml is broken; the message names the file, the field and the problem."""

    code = "manifest"


class ArgumentsError(BettyError):
    """Tool arguments do not match the tool's input schema, or cannot be passed to its handler."""

    code = "invalid_arguments"


class PathOutsideWorkspace(ArgumentsError):
    """A path argument resolves outside the workspace and the allowed roots."""


class ArgvError(ArgumentsError):
    """The arguments cannot be put on the handler's command line (its parser cannot take them)."""


class CaptureStopped(BettyError):
    """Reading a handler's interface was stopped because the server is exiting: nothing to keep of it."""


class StorageError(BettyError):
    """The database cannot be reached or used; the message names it (password redacted) and the fix."""

    code = "storage"


class BudgetExceeded(BettyError):
    """A call would exceed a configured budget; ``budget`` names which one (e.g. "per_day_usd")."""

    code = "budget_exceeded"

    def __init__(self, message: str, *, budget: str) -> None:
        super().__init__(message)
        self.budget = budget

    def details(self) -> dict[str, Any]:
        return {"budget": self.budget}


class RunLimitReached(BettyError):
    """An agent run reached one of its limits; ``limit`` names it (max_steps, max_tokens, max_cost_usd)."""

    code = "limit_reached"

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit

    def details(self) -> dict[str, Any]:
        return {"limit": self.limit}


class Unauthorized(BettyError):
    """A bearer token is missing, unknown, revoked, expired or otherwise invalid; the message says why
    (never the token)."""

    code = "unauthorized"
    error = "invalid_token"


class InsufficientScope(Unauthorized):
    """A valid access token that lacks a scope the server requires (``scopes`` names them all)."""

    error = "insufficient_scope"

    def __init__(self, message: str, *, scopes: list[str]) -> None:
        super().__init__(message)
        self.scopes = scopes

    def details(self) -> dict[str, Any]:
        return {"scopes": self.scopes}


class AgentError(BettyError):
    """An agent run cannot start."""

    code = "agent"


class UnknownAgent(AgentError):
    """No agent of that name in the catalog."""


class UnknownRun(AgentError):
    """No run of that id (or an id that is not a valid run id)."""

    code = "unknown_run"


class ProviderError(BettyError):
    """An LLM provider failed. ``kind`` is the short name results and the ledger show."""

    kind = "provider_error"

    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model

    @property
    def code(self) -> str:  # type: ignore[override]
        return self.kind

    def details(self) -> dict[str, Any]:
        return {"fallbacks": []}


class RetryableProviderError(ProviderError):
    """A failure another model may not have: the fallback walk moves on at once."""


class RateLimited(RetryableProviderError):
    """429: the provider wants fewer requests."""

    kind = "rate_limit"


class ProviderUnavailable(RetryableProviderError):
    """5xx, or a stream that ended empty."""

    kind = "server"


class ProviderTimeout(RetryableProviderError):
    """No answer in time (408, 504, our own request timeout)."""

    kind = "timeout"


class ProviderUnreachable(RetryableProviderError):
    """The connection was refused or dropped."""

    kind = "connection"


class ModelNotFound(RetryableProviderError):
    """The provider does not know this model (404)."""

    kind = "not_found"


class ContextWindowExceeded(RetryableProviderError):
    """The prompt does not fit this model's context window: only a larger model can help."""

    kind = "context_window"


class AuthenticationFailed(ProviderError):
    """401/403: the key is wrong or lacks access; no other model fixes that."""

    kind = "auth"


class BadRequest(ProviderError):
    """400 (or another 4xx): the request itself is wrong."""

    kind = "bad_request"


class ModelNotConfigured(ProviderError):
    """The model cannot be called here: its key is not set, or its backend is not installed."""

    kind = "not_configured"


class AllModelsFailed(ProviderError):
    """The fallback walk ended without an answer; ``hops`` lists each model tried and how it failed."""

    def __init__(self, message: str, kind: str, hops: list[Any]) -> None:
        super().__init__(message, hops[-1].model if hops else None)
        self.kind = kind
        self.hops = hops

    def details(self) -> dict[str, Any]:
        return {"fallbacks": [h.as_dict() for h in self.hops]}


PROVIDER_ERRORS: dict[str, type[ProviderError]] = {
    cls.kind: cls
    for cls in (
        RateLimited,
        ProviderUnavailable,
        ProviderTimeout,
        ProviderUnreachable,
        ModelNotFound,
        ContextWindowExceeded,
        AuthenticationFailed,
        BadRequest,
        ModelNotConfigured,
    )
}


def provider_error(kind: str, message: str, model: str | None = None) -> ProviderError:
    """The typed error for a ``kind`` ("rate_limit", "auth", ...); test doubles and adapters use it."""
    return PROVIDER_ERRORS.get(kind, ProviderError)(message, model)
