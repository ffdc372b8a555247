"""What a caller may use: the tools and agents of their role (``roles:`` in betty.yaml).

The local user (stdio, the CLI) and a caller without a role (the shared ``--token`` user, a token naming
no role) may use everything; so may the admin role, unless ``roles.admin`` says otherwise. A configured
role may use what its globs allow. A role that is not configured may use nothing: a typo in a role name
never grants the whole server.

    access = Access(settings.roles)
    access.tool(caller, "api_validate", "api.validate")   # the tool name, and the skill's Betty name
    access.agent(caller, "api.analyzer")
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from betty_mcp.core.config import RoleConfig
from betty_mcp.core.identity import ADMIN_ROLE, LOCAL, Caller

log = logging.getLogger(__name__)
EVERYTHING = RoleConfig()


class Access:
    def __init__(self, roles: Mapping[str, RoleConfig]) -> None:
        self.roles = dict(roles)
        self._warned: set[str] = set()

    def role(self, caller: Caller) -> RoleConfig | None:
        """The caller's role settings: everything for no role or an unconfigured admin, None for a role
        betty.yaml does not define (nothing is allowed)."""
        if caller.role is None or caller == LOCAL:  # stdio is as it always was
            return EVERYTHING
        found = self.roles.get(caller.role)
        if found is not None:
            return found
        if caller.role == ADMIN_ROLE:
            return EVERYTHING
        if caller.role not in self._warned:
            self._warned.add(caller.role)
            log.warning(
                "role %r (user %s) is not defined in betty.yaml's roles: no tools", caller.role, caller.user
            )
        return None

    def tool(self, caller: Caller, *names: str) -> bool:
        """May ``caller`` use the tool known by any of ``names`` (its tool name, a skill's Betty name)?"""
        role = self.role(caller)
        if role is None:
            return False
        if role is EVERYTHING:
            return True
        return _matches(names, role.tools.include) and not _matches(names, role.tools.exclude)

    def agent(self, caller: Caller, name: str) -> bool:
        role = self.role(caller)
        return role is EVERYTHING or (role is not None and _matches((name,), role.agents))


def _matches(names: Iterable[str], patterns: list[str]) -> bool:
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)
