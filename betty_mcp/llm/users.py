"""Per-user bearer tokens for the HTTP front end, kept in the state database beside the usage ledger
(the workspace's SQLite file, or PostgreSQL when ``database_url`` is set: ``betty_mcp.store``).

A token is 256 random bits, shown once when the user is added; only its SHA-256 is stored (a slow
password hash buys nothing for a random token of that size). A presented token is looked up by its
hash and the stored hash compared again in constant time. Revoking keeps the row, so the name stays
taken by its history (ledger rows, runs) until it is added again with a new token.

    users = Users(store)                          # store: betty_mcp.store.open_store(settings)
    token = await users.add("ada", role="analyst")  # print it once; it is never shown again
    await users.find(token)                       # StoredUser(name="ada", role="analyst", ...)
    await users.revoke("ada")

``UserStore`` is the SQLite table itself, synchronous (what ``SqliteStore`` keeps its users with).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from betty_mcp.core.errors import ConfigError
from betty_mcp.llm.ledger import StateFile

__all__ = [
    "RESERVED_NAMES",
    "TOKEN_PREFIX",
    "StoredUser",
    "UserAccounts",
    "UserStore",
    "Users",
    "check_name",
    "new_token",
    "token_sha256",
]

TOKEN_PREFIX = "bmcp_"  # recognisable in a leaked config or log (secret scanners), not a secret itself
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# "default" is the shared --token's user; "local" the stdio and CLI user.
RESERVED_NAMES = frozenset({"default", "local"})
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_name(name: str) -> None:
    """ConfigError unless ``name`` may be given to a user."""
    if not USER_NAME.match(name):
        raise ConfigError(f"user names are letters, digits, '_', '.', '@', '-' (at most 64): {name!r}")
    if name in RESERVED_NAMES:
        raise ConfigError(f"'{name}' is reserved ({', '.join(sorted(RESERVED_NAMES))}); choose another name")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def already_active(name: str) -> ConfigError:
    return ConfigError(f"user '{name}' exists; revoke it first to give it a new token")


@dataclass(frozen=True)
class StoredUser:
    name: str
    role: str | None
    created_at: str  # ISO 8601 UTC, to the second
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class UserAccounts(Protocol):
    """What a storage backend keeps of users (``betty_mcp.store``: the SQLite file or PostgreSQL)."""

    async def add_user(self, name: str, role: str | None, token_sha256: str) -> None:
        """Add ``name``, or give a revoked name a new token; ConfigError if ``name`` is active."""
        ...

    async def revoke_user(self, name: str) -> bool:
        """Revoke ``name``'s token; False when there is no such active user."""
        ...

    async def list_users(self) -> list[StoredUser]:
        """Every user, active or revoked, by name."""
        ...

    async def find_user(self, token_sha256: str) -> StoredUser | None:
        """The active user whose token has this hash, or None."""
        ...

    async def any_active_user(self) -> bool: ...


class Users:
    """The users of a store (either backend): what ``betty-mcp users`` and the HTTP gate use."""

    def __init__(self, store: UserAccounts) -> None:
        self.store = store

    async def add(self, name: str, role: str | None = None) -> str:
        """Add ``name`` (or give a revoked name a new life) and return its token: the only time it is seen."""
        check_name(name)
        token = new_token()
        await self.store.add_user(name, role, token_sha256(token))
        return token

    async def revoke(self, name: str) -> bool:
        """Revoke ``name``'s token at once; False when there is no such active user."""
        return await self.store.revoke_user(name)

    async def list(self) -> list[StoredUser]:
        return await self.store.list_users()

    async def any_active(self) -> bool:
        return await self.store.any_active_user()

    async def find(self, token: str) -> StoredUser | None:
        """The active user whose token this is, or None."""
        return await self.store.find_user(token_sha256(token))


class UserStore(StateFile):
    """The ``users`` table of the SQLite state file (schema ``m006_users`` in the ledger's migrations)."""

    def add(self, name: str, role: str | None = None) -> str:
        """Add ``name`` (or give a revoked name a new life) and return its token: the only time it is seen."""
        check_name(name)
        token = new_token()
        self.insert(name, role, token_sha256(token))
        return token

    def insert(self, name: str, role: str | None, digest: str) -> None:
        """Add ``name`` with the token whose SHA-256 is ``digest``; ConfigError if ``name`` is active."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
                if row is not None and row[0] is None:
                    raise already_active(name)
                db.execute(
                    "INSERT OR REPLACE INTO users (name, role, token_sha256, created_at, revoked_at) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    (name, role, digest, _now()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def revoke(self, name: str) -> bool:
        """Revoke ``name``'s token at once; False when there is no such active user."""
        with self._connection() as db:
            cursor = db.execute(
                "UPDATE users SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL", (_now(), name)
            )
            return cursor.rowcount == 1

    def list(self) -> list[StoredUser]:
        with self._connection() as db:
            rows = db.execute("SELECT name, role, created_at, revoked_at FROM users ORDER BY name").fetchall()
        return [StoredUser(*row) for row in rows]

    def any_active(self) -> bool:
        with self._connection() as db:
            return db.execute("SELECT 1 FROM users WHERE revoked_at IS NULL LIMIT 1").fetchone() is not None

    def find(self, token: str) -> StoredUser | None:
        """The active user whose token this is, or None."""
        return self.find_digest(token_sha256(token))

    def find_digest(self, digest: str) -> StoredUser | None:
        """The active user whose token's SHA-256 is ``digest``, or None."""
        with self._connection() as db:
            row = db.execute(
                "SELECT name, role, created_at, token_sha256 FROM users "
                "WHERE token_sha256 = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest):
            return None
        return StoredUser(row[0], row[1], row[2])


def _now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)
