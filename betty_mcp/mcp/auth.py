"""Who is calling over HTTP: bearer tokens checked before the SDK sees a request, and the caller they name.

A bearer token is one of: the shared ``--token`` (user ``default``, no role), a per-user token from
``betty-mcp users add`` (``llm/users.py``: kept by the store, SQLite or PostgreSQL), or, with an
``auth:`` block, an OAuth access token (a JWT, ``core/oauth.py``). Refusals follow RFC 6750 and the
MCP authorization spec: 401 with ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token
was given) and, in OAuth mode, the ``resource_metadata`` URL of the RFC 9728 document served at
``/.well-known/oauth-protected-resource``; a token without a required scope gets 403
``insufficient_scope``.

Once a token passes, the request goes on with ``Authorization`` removed from it (nothing behind the gate
can read, log or forward the token), the caller in the ASGI scope (``SCOPE_KEY``: tool handlers read it
from ``ctx.request``, since a streamable-HTTP session's handlers do not run in the request's task) and
the SDK's ``AuthenticatedUser`` (so the SDK binds each MCP session to the principal that opened it).

    gate = BearerGate(app, Authenticator(token, Users(store), jwt), metadata_url)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.authentication import AuthCredentials
from starlette.routing import Route

from betty_mcp.core.config import AuthConfig
from betty_mcp.core.errors import InsufficientScope, Unauthorized
from betty_mcp.core.identity import SCOPE_KEY, Caller, acting_as
from betty_mcp.llm.users import TOKEN_PREFIX, Users

if TYPE_CHECKING:
    from betty_mcp.core.oauth import JwtVerifier

log = logging.getLogger(__name__)

DEFAULT_USER = "default"  # the shared --token's user
WELL_KNOWN = "/.well-known/oauth-protected-resource"


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """A bearer token -> the caller it names, or Unauthorized saying why (never repeating the token)."""

    def __init__(self, token: str | None, users: Users | None = None, jwt: JwtVerifier | None = None) -> None:
        self._shared = _sha256(token) if token else None
        self.users = users
        self.jwt = jwt

    async def caller(self, bearer: str) -> Caller:
        if self._shared is not None and hmac.compare_digest(_sha256(bearer), self._shared):
            return Caller(user=DEFAULT_USER)
        if self.users is not None and bearer.startswith(TOKEN_PREFIX):  # JWTs never cost a lookup
            found = await self.users.find(bearer)
            if found is not None:
                return Caller(user=found.name, role=found.role)
        if self.jwt is not None and bearer.count(".") == 2:
            return await self.jwt.verify(bearer)
        raise Unauthorized("unknown or revoked token")


class BearerGate:
    """ASGI middleware: every HTTP request but the metadata document's carries a token that passes."""

    def __init__(
        self,
        app: Any,
        authenticator: Authenticator,
        *,
        metadata_url: str | None = None,
        scopes: list[str] | None = None,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.metadata_url = metadata_url
        self.scopes = scopes or []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(WELL_KNOWN):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        given = next((value for name, value in headers if name == b"authorization"), None)
        if given is None or given[:7].lower() != b"bearer ":
            await self._refuse(send, 401, None, "a bearer token is required")
            return
        try:
            caller = await self.authenticator.caller(given[7:].strip().decode("latin-1"))
        except InsufficientScope as exc:
            log.info("HTTP request refused (403): %s", exc)
            await self._refuse(send, 403, exc.error, str(exc))
            return
        except Unauthorized as exc:
            log.info("HTTP request refused (401): %s", exc)
            await self._refuse(send, 401, exc.error, str(exc))
            return
        except Exception:  # a bug while checking: refuse (fail closed), keep the traceback in the log
            log.exception("HTTP request refused (401): the token could not be checked")
            await self._refuse(send, 401, "invalid_token", "the token could not be checked")
            return
        access = AccessToken(
            token=hashlib.sha256(given).hexdigest()[:16],  # a fingerprint: the token stays here
            client_id=caller.user,
            scopes=sorted(caller.scopes),
            subject=caller.user,
        )
        scope = {
            **scope,
            "headers": [(name, value) for name, value in headers if name != b"authorization"],
            "user": AuthenticatedUser(access),
            "auth": AuthCredentials(access.scopes),
            SCOPE_KEY: caller,
        }
        with acting_as(caller):
            await self.app(scope, receive, send)

    async def _refuse(self, send: Any, status: int, error: str | None, description: str) -> None:
        params = []
        if error is not None:
            params += [f'error="{error}"', f'error_description="{_quotable(description)}"']
        if self.scopes and (error is None or status == 403):
            params.append(f'scope="{" ".join(self.scopes)}"')
        if self.metadata_url is not None:
            params.append(f'resource_metadata="{self.metadata_url}"')
        challenge = "Bearer " + ", ".join(params) if params else 'Bearer realm="betty-mcp"'
        body = json.dumps({"error": error or "unauthorized", "error_description": description}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", challenge.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _quotable(text: str) -> str:
    """Text that fits an RFC 6750 quoted-string: printable ASCII without quotes or backslashes."""
    return "".join(c for c in text if " " <= c <= "~" and c not in '"\\')


def metadata_routes(config: AuthConfig) -> tuple[list[Route], str]:
    """The RFC 9728 document (the SDK's model and route, at the path-inserted well-known URL of the
    audience, and at the root for clients that look there) and its URL for ``WWW-Authenticate``."""
    resource = AnyHttpUrl(config.audience)
    routes = create_protected_resource_routes(
        resource_url=resource,
        authorization_servers=[AnyHttpUrl(config.issuer)],
        scopes_supported=config.required_scopes or None,
        resource_name="betty-mcp",
    )
    if routes[0].path != WELL_KNOWN:
        routes.append(Route(WELL_KNOWN, endpoint=routes[0].endpoint, methods=["GET", "OPTIONS"]))
    return routes, str(build_resource_metadata_url(resource))


__all__ = ["DEFAULT_USER", "Authenticator", "BearerGate", "metadata_routes"]
