"""Who is calling: the identity of the caller of the current request.

The HTTP front end sets it per request (from a per-user token or a validated OAuth token); stdio and the
CLI act as the local user. The ledger, runs and tool sets read it, so nothing below the front ends takes
a user parameter:

    with acting_as(Caller(user="ada", role="analyst")):
        await services.query_llm(...)        # its ledger row carries user "ada"
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["ADMIN_ROLE", "LOCAL", "SCOPE_KEY", "Caller", "acting_as", "current_caller"]

ADMIN_ROLE = "admin"
# Where the HTTP front end puts a request's caller in its ASGI scope, for handlers to find it there.
SCOPE_KEY = "betty_mcp.caller"


@dataclass(frozen=True)
class Caller:
    """A user name, the role that picks their budgets and tool set (None: no role), and token scopes."""

    user: str
    role: str | None = None
    scopes: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE

    def may_see(self, owner: str) -> bool:
        """Whether this caller may see what ``owner`` started (their runs, traces): their own, or as admin."""
        return self.is_admin or owner == self.user


# stdio and the CLI: the person at the keyboard, who may see everything (the spec's advice for stdio).
LOCAL = Caller(user="local", role=ADMIN_ROLE)

_CALLER: ContextVar[Caller] = ContextVar("betty_mcp_caller", default=LOCAL)


def current_caller() -> Caller:
    """The caller of the request being served (LOCAL outside any request)."""
    return _CALLER.get()


@contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Code within the block (and the tasks it starts) sees ``caller`` as the current caller."""
    token = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(token)
