"""OAuth resource-server mode: JWT access tokens from an outside authorization server, validated here.

The signing keys are the IdP's JWKS (``jwks_url``, fetched over HTTPS, or ``jwks_file``), cached and read
again every ``jwks_max_age_seconds``. A token naming a key id the cache lacks makes it read the keys once
more (the IdP rotated them), at most once per ``jwks_refetch_seconds``: made-up key ids cannot turn the
server into a JWKS hammer. A token passes when its ``alg`` is on the allow-list and fits the key's type
(never ``none``, never HS*: a public key is no shared secret), its signature holds, ``iss`` is the issuer,
``aud`` names this server (RFC 8707), ``exp`` (required) and ``nbf`` hold within a bounded leeway, and it
has the required scopes. Reasons for a refusal are given; the token itself never is, anywhere.

    verifier = JwtVerifier(settings.auth, settings.roles)
    caller = await verifier.verify(token)    # Caller, or raises Unauthorized / InsufficientScope
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import anyio
import anyio.to_thread
import jwt

from betty_mcp.core.config import AuthConfig
from betty_mcp.core.errors import ConfigError, InsufficientScope, Unauthorized
from betty_mcp.core.http_policy import is_loopback
from betty_mcp.core.identity import ADMIN_ROLE, Caller

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
JWS_COMPACT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
MAX_JWKS_BYTES = 1024 * 1024
FETCH_TIMEOUT_S = 5.0
# Which key types each algorithm family may be verified with.
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


@dataclass(frozen=True)
class SigningKey:
    """One key of the JWKS: its verifying key, type (RSA, EC, OKP) and the alg it declares, if any."""

    key: Any
    kty: str
    alg: str | None

    def fits(self, alg: str) -> bool:
        return KEY_TYPES.get(alg[:2]) == self.kty and self.alg in (None, alg)


class JwksCache:
    """The IdP's signing keys by key id, from a URL or a file; refreshed when old, or once for an unknown
    kid (rate-limited). A failed refresh keeps the keys already known."""

    def __init__(
        self,
        *,
        url: str | None = None,
        file: Path | None = None,
        max_age: float = 300.0,
        refetch_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            url is not None
            and urlparse(url).scheme != "https"
            and not is_loopback(urlparse(url).hostname or "")
        ):
            raise ConfigError(f"auth.jwks_url must be https (plain http only on loopback): {url}")
        self.url, self.file = url, file
        self.max_age, self.refetch_after, self.clock = max_age, refetch_after, clock
        self.keys: dict[str | None, SigningKey] = {}
        self.fetched_at = -math.inf
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> SigningKey | None:
        if self.clock() - self.fetched_at >= self.max_age:
            await self._refresh(self.max_age)
        found = self._lookup(kid)
        if found is None:
            await self._refresh(self.refetch_after)
            found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None and len(self.keys) == 1:  # a kid is optional when the set has a single key
            return next(iter(self.keys.values()))
        return self.keys.get(kid)

    async def _refresh(self, unless_younger_than: float) -> None:
        async with self._lock:  # one fetch at a time; those who waited use its result
            if self.clock() - self.fetched_at < unless_younger_than:
                return
            self.fetched_at = self.clock()
            try:
                document = await anyio.to_thread.run_sync(self._read)
                self.keys = signing_keys(document)
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                log.warning("could not read the JWKS from %s: %s", self.url or self.file, exc)

    def _read(self) -> dict[str, Any]:
        if self.file is not None:
            raw = self.file.read_bytes()[: MAX_JWKS_BYTES + 1]
        else:
            request = urllib.request.Request(self.url or "", headers={"accept": "application/json"})
            with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as answer:
                raw = answer.read(MAX_JWKS_BYTES + 1)
        if len(raw) > MAX_JWKS_BYTES:
            raise ValueError(f"the JWKS is larger than {MAX_JWKS_BYTES} bytes")
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("the JWKS is not a JSON object")
        return document


def signing_keys(document: dict[str, Any]) -> dict[str | None, SigningKey]:
    """The asymmetric signature keys of a JWKS document by kid; symmetric (``oct``) and encryption keys
    are left out, so no HS* token can ever be checked against them."""
    found: dict[str | None, SigningKey] = {}
    for entry in document.get("keys") or []:
        if not isinstance(entry, dict) or entry.get("kty") not in KEY_TYPES.values():
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            alg = entry.get("alg")
            found[entry.get("kid")] = SigningKey(jwt.PyJWK(entry).key, entry["kty"], alg if alg else None)
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
    return found


class JwtVerifier:
    """Access tokens of one issuer for one audience (this server), as callers with a role."""

    def __init__(self, config: AuthConfig, roles: Collection[str]) -> None:
        self.config = config
        self.roles = set(roles) | {ADMIN_ROLE}
        self.jwks = JwksCache(
            url=config.jwks_url,
            file=config.jwks_file,
            max_age=config.jwks_max_age_seconds,
            refetch_after=config.jwks_refetch_seconds,
        )
        self._decoder = jwt.PyJWT(options={"require": ["exp", "iss", "aud"], "verify_signature": True})

    async def verify(self, token: str) -> Caller:
        claims = await self.claims(token)
        return self.caller(claims)

    async def claims(self, token: str) -> dict[str, Any]:
        """The token's claims once every check passed; Unauthorized naming the first that failed."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("the token is too long")
        header = unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.config.algorithms:
            raise Unauthorized(f"tokens signed with {alg!r} are not accepted")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the token's kid is not a string")
        key = await self.jwks.key(kid)
        if key is None:
            raise Unauthorized("the token's signing key is not in the issuer's JWKS")
        if not key.fits(alg):
            raise Unauthorized(f"the token's alg {alg} does not fit its key")
        try:
            claims = self._decoder.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized(
                f"the token is not for this server (aud must be {self.config.audience})"
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token's issuer is not the one this server trusts") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token is invalid ({type(exc).__name__})") from None
        missing = [s for s in self.config.required_scopes if s not in token_scopes(claims)]
        if missing:
            raise InsufficientScope(
                f"the token lacks the scope(s) {' '.join(missing)}", scopes=self.config.required_scopes
            )
        return claims

    def caller(self, claims: dict[str, Any]) -> Caller:
        user = claims.get(self.config.user_claim)
        if not isinstance(user, str) or not user.strip():
            raise Unauthorized(f"the token has no {self.config.user_claim} claim naming its user")
        return Caller(user=user, role=self._role(claims), scopes=frozenset(token_scopes(claims)))

    def _role(self, claims: dict[str, Any]) -> str | None:
        named = claims.get(self.config.role_claim) if self.config.role_claim else None
        values = [named] if isinstance(named, str) else named if isinstance(named, list) else []
        return next((v for v in values if v in self.roles), self.config.default_role)


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, to pick the key: read here once (PyJWT reads the whole token again, checked)."""
    if not JWS_COMPACT.match(token):
        raise Unauthorized("the token is not a JWT")
    encoded = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, binascii.Error):
        raise Unauthorized("the token is not a JWT") from None
    if not isinstance(header, dict):
        raise Unauthorized("the token is not a JWT")
    return header


def token_scopes(claims: dict[str, Any]) -> list[str]:
    """``scope`` (RFC 8693/9068: space-separated) or ``scp`` (a list, as some IdPs send it)."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [s for s in raw if isinstance(s, str)]
    return []
