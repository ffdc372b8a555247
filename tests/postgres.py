"""Throw-away PostgreSQL databases for tests: each test gets its own, dropped after it, so runs in
parallel (several engineers, CI) never collide. Tests talk to a real server, never a mock.

The server is $BETTY_TEST_POSTGRES (default: root on 127.0.0.1:5432, trust auth, as on the development
machines); when it does not answer, the test fails at once saying so and how to start it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_URL = os.environ.get("BETTY_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/postgres")
START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
_answering: bool | None = None


def admin() -> psycopg.Connection:
    """A connection to the server's maintenance database, or a clear test failure."""
    global _answering
    if _answering is False:
        pytest.fail(f"PostgreSQL does not answer at {ADMIN_URL} (see the first failure)", pytrace=False)
    try:
        conn = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _answering = False
        pytest.fail(
            f"PostgreSQL does not answer at {ADMIN_URL}: {str(exc).strip()}\n"
            f"Start it ({START_HINT}) or point $BETTY_TEST_POSTGRES at one.",
            pytrace=False,
        )
    _answering = True
    return conn


def url_of(database: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


@contextmanager
def scratch_database() -> Iterator[str]:
    """A new, empty database; yields its URL and drops it (and its connections) afterwards."""
    name = f"betty_t_{secrets.token_hex(6)}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_of(name)
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
