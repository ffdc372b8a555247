"""Change notifications shared by every instance of a team service: the SDK's ``SubscriptionBus`` over
PostgreSQL LISTEN/NOTIFY, so a 2026-07-28 client listening (``subscriptions/listen``) on one instance
hears a tools or resources change seen by any.

    bus = SharedSubscriptionBus(store.shared_runs())
    tg.start_soon(bus.run)                  # LISTEN; every event heard goes to this instance's streams
    await bus.publish(ToolsListChanged())   # NOTIFY: every instance, this one included

Delivery is what the SDK promises anyway: fire-and-forget, no replay (a client re-listens and
refetches). When the database does not answer, an event still reaches this instance's streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp.server.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ServerEvent,
    ToolsListChanged,
)

from betty_mcp.core.errors import BettyError

if TYPE_CHECKING:
    from betty_mcp.store.base import SharedRuns

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "betty_events"
_KINDS: dict[str, type] = {
    "tools": ToolsListChanged,
    "prompts": PromptsListChanged,
    "resources": ResourcesListChanged,
}


def encode(event: ServerEvent) -> str:
    if isinstance(event, ResourceUpdated):
        return json.dumps({"kind": "resource", "uri": event.uri})
    kind = next(k for k, cls in _KINDS.items() if isinstance(event, cls))
    return json.dumps({"kind": kind})


def decode(payload: str) -> ServerEvent | None:
    try:
        found = json.loads(payload)
        if found["kind"] == "resource":
            return ResourceUpdated(uri=str(found["uri"]))
        return _KINDS[found["kind"]]()
    except (ValueError, KeyError, TypeError):
        log.warning("ignored a change notification that is not betty-mcp's: %.100s", payload)
        return None


class SharedSubscriptionBus:
    """A ``SubscriptionBus`` (mcp.server.subscriptions) whose events cross instances."""

    def __init__(self, shared: SharedRuns) -> None:
        self._shared = shared
        self._listeners: dict[object, Callable[[ServerEvent], None]] = {}

    async def publish(self, event: ServerEvent) -> None:
        try:
            await self._shared.notify(EVENTS_CHANNEL, encode(event))
        except BettyError as exc:
            log.warning("change notification kept to this instance: %s", exc)
            self._deliver(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def run(self) -> None:
        """Hear every instance's events (this one's included) until cancelled."""
        await self._shared.listen(EVENTS_CHANNEL, self._heard)

    def _heard(self, payload: str) -> None:
        event = decode(payload)
        if event is not None:
            self._deliver(event)

    def _deliver(self, event: ServerEvent) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # one bad stream must not starve the others
                log.exception("a subscription listener failed")
