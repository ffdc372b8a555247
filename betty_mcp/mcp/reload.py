"""Hot reload: watch the skill and agent folders, re-read them, and tell clients what changed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from watchfiles import awatch

from betty_mcp.core.catalog import sources
from betty_mcp.mcp.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


async def watch_sources(tools: ToolRegistry, on_change: Callable[[], Awaitable[None]]) -> None:
    """Reload ``tools`` whenever a watched folder changes; call ``on_change`` when clients would see it."""
    settings = tools.services.settings
    folders = sorted(
        {
            str(root)
            for _, root in [*sources(settings, "skills"), *sources(settings, "agents")]
            if root.is_dir()
        }
    )
    if not folders:
        return
    log.info("watching %s for changes", ", ".join(folders))
    async for _changes in awatch(*folders, debounce=200, step=50, ignore_permission_denied=True):
        if tools.reload():
            log.info("skills or agents changed: %d tools", len(tools.tools))
            await on_change()
