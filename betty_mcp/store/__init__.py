"""Where betty-mcp keeps what outlives a call: the ledger, budgets, runs and their traces.

    store = open_store(settings)   # SQLite in the workspace, or PostgreSQL when database_url is set

The PostgreSQL backend (and its driver) is imported only when a ``database_url`` asks for it.
"""

from __future__ import annotations

from betty_mcp.core.config import Settings
from betty_mcp.core.errors import ConfigError
from betty_mcp.store.base import MigrationStatus, RunRecord, Store
from betty_mcp.store.sqlite import SqliteStore
from betty_mcp.store.urls import is_postgres, redact

__all__ = ["MigrationStatus", "RunRecord", "SqliteStore", "Store", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store ``settings`` name (nothing is connected until first use)."""
    url = settings.database
    if not url:
        return SqliteStore(settings.ledger_path, settings.runs_dir)
    if not is_postgres(url):
        raise ConfigError(
            f"database_url {redact(url)} is not a PostgreSQL URL (postgresql://user:password@host/db); "
            "leave it unset to keep the workspace's SQLite file"
        )
    try:
        from betty_mcp.store.postgres import PostgresStore
    except ImportError:
        raise ConfigError(
            "database_url names PostgreSQL, but its driver is not installed: "
            "pip install 'betty-mcp[postgres]'"
        ) from None
    limits = settings.limits
    return PostgresStore(
        url, alive_every=limits.run_heartbeat_seconds, lost_after=limits.run_lost_after_seconds
    )
