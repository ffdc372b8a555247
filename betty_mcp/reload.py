"""Hot reload: watch the skill and agent folders, re-read them, and tell clients what changed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from watchfiles import awatch

from betty_mcp.app import BettyApp
from betty_mcp.catalog import sources

log = logging.getLogger(__name__)


async def watch_sources(app: BettyApp, on_change: Callable[[], Awaitable[None]]) -> None:
    """Reload ``app`` whenever a watched folder changes; call ``on_change`` when clients would see it."""
    folders = sorted(
        {
            str(root)
            for _, root in [*sources(app.settings, "skills"), *sources(app.settings, "agents")]
            if root.is_dir()
        }
    )
    if not folders:
        return
    log.info("watching %s for changes", ", ".join(folders))
    async for _changes in awatch(*folders, debounce=200, step=50, ignore_permission_denied=True):
        if app.reload():
            log.info("skills or agents changed: %d tools", len(app.tools))
            await on_change()
