"""Per-user bearer tokens for the HTTP front end, kept in the state database beside the usage ledger.

A token is 256 random bits, shown once when the user is added; only its SHA-256 is stored (a slow
password hash buys nothing for a random token of that size). A presented token is looked up by its
hash and the stored hash compared again in constant time. Revoking keeps the row, so the name stays
taken by its history (ledger rows, runs) until it is added again with a new token.

    users = UserStore(settings.ledger_path)
    token = users.add("ada", role="analyst")      # print it once; it is never shown again
    users.find(token)                             # StoredUser(name="ada", role="analyst", ...)
    users.revoke("ada")
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from betty_mcp.core.errors import ConfigError
from betty_mcp.llm.ledger import connect, migrate

__all__ = ["RESERVED_NAMES", "TOKEN_PREFIX", "StoredUser", "UserStore", "token_sha256"]

TOKEN_PREFIX = "bmcp_"  # recognisable in a leaked config or log (secret scanners), not a secret itself
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# "default" is the shared --token's user; "local" the stdio and CLI user.
RESERVED_NAMES = frozenset({"default", "local"})


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredUser:
    name: str
    role: str | None
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class UserStore:
    """The ``users`` table of the state database (schema ``m006_users`` in the ledger's migrations)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                db = connect(self.path)
                try:
                    migrate(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            yield self._db

    def add(self, name: str, role: str | None = None) -> str:
        """Add ``name`` (or give a revoked name a new life) and return its token: the only time it is seen."""
        if not USER_NAME.match(name):
            raise ConfigError(f"user names are letters, digits, '_', '.', '@', '-' (at most 64): {name!r}")
        if name in RESERVED_NAMES:
            raise ConfigError(
                f"'{name}' is reserved ({', '.join(sorted(RESERVED_NAMES))}); choose another name"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = _now()
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT revoked_at FROM users WHERE name = ?", (name,)).fetchone()
                if row is not None and row[0] is None:
                    raise ConfigError(f"user '{name}' exists; revoke it first to give it a new token")
                db.execute(
                    "INSERT OR REPLACE INTO users (name, role, token_sha256, created_at, revoked_at) "
                    "VALUES (?, ?, ?, ?, NULL)",
                    (name, role, token_sha256(token), now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return token

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
        digest = token_sha256(token)
        with self._connection() as db:
            row = db.execute(
                "SELECT name, role, created_at, token_sha256 FROM users "
                "WHERE token_sha256 = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest):
            return None
        return StoredUser(row[0], row[1], row[2])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
