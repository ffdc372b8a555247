"""Keeping clients' view current: read the handler interfaces not known yet, then watch the skill and
agent folders, re-read them on change, and tell clients when what they see changed.

One bad file never stops the loop: a reload that fails is logged and the next change tried again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
from watchfiles import awatch

from betty_mcp.core.catalog import sources
from betty_mcp.core.errors import CaptureStopped
from betty_mcp.mcp.tools.registry import ToolRegistry

log = logging.getLogger(__name__)
Notify = Callable[[], Awaitable[None]]
IDLE_START_SECONDS = 2.0


async def keep_current(
    tools: ToolRegistry, on_change: Notify, stop: anyio.Event, started: anyio.Event
) -> None:
    """Until ``stop`` is set: read the unknown interfaces while (with hot reload on) following the folders.

    Interfaces are read only after ``started`` (the first request after the handshake) or
    IDLE_START_SECONDS: answering ``initialize`` comes first. The watcher starts at once (a change made
    while it is not watching would be missed).
    """
    async with anyio.create_task_group() as tg:
        tg.start_soon(_read_interfaces_when, started, tools, on_change)
        if tools.services.settings.hot_reload:
            await _watch(tools, on_change, stop)


async def _watch(tools: ToolRegistry, on_change: Notify, stop: anyio.Event) -> None:
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
    # The stop event ends the watcher's thread within a step (50 ms); cancelling alone waits it out.
    async for _changes in awatch(
        *folders, debounce=200, step=50, ignore_permission_denied=True, stop_event=stop
    ):
        try:
            changed = tools.reload()
        except Exception:
            log.exception("reloading skills and agents failed; the previous ones stay")
            continue
        if changed:
            log.info("skills or agents changed: %d tools", len(tools.tools))
            await on_change()
        await _read_interfaces(tools, on_change)


async def _read_interfaces_when(started: anyio.Event, tools: ToolRegistry, on_change: Notify) -> None:
    with anyio.move_on_after(IDLE_START_SECONDS):
        await started.wait()
    await _read_interfaces(tools, on_change)


async def _read_interfaces(tools: ToolRegistry, on_change: Notify) -> None:
    try:
        changed = await tools.read_interfaces()
    except CaptureStopped:  # the server is exiting
        return
    except Exception:
        log.exception("reading handler interfaces failed; they will be read at each skill's first call")
        return
    if changed:
        log.info("handler interfaces read: tool schemas updated")
        await on_change()
