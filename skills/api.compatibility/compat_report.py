"""The change kinds api.compatibility reports, whether each breaks clients, and the collected report.

Every change is ``{"kind", "location", "message"}`` plus, where useful, ``operation``
(``"GET /pets"``), ``defined_at`` (the pointer inside ``components`` when the location was
reached through a ``$ref``) and ``old``/``new`` values. A kind is breaking or not by this table
alone, so the classification is stated once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from compat_refs import Loc

# kind -> True when existing clients can break.
KINDS: dict[str, bool] = {
    # paths and operations
    "path-removed": True,
    "path-added": False,
    "operation-removed": True,
    "operation-added": False,
    "operation-deprecated": False,
    "description-changed": False,
    # parameters
    "required-parameter-added": True,
    "parameter-became-required": True,
    "parameter-added": False,
    "parameter-removed": False,
    "parameter-became-optional": False,
    # request bodies
    "required-request-body-added": True,
    "request-body-became-required": True,
    "request-body-added": False,
    "request-body-removed": False,
    "request-body-became-optional": False,
    "request-media-type-removed": True,
    "request-media-type-added": False,
    "required-request-property-added": True,
    "request-property-became-required": True,
    "request-property-added": False,
    "request-property-removed": False,
    "request-property-became-optional": False,
    # responses
    "response-code-removed": True,
    "response-code-added": False,
    "response-media-type-removed": True,
    "response-media-type-added": False,
    "response-header-removed": True,
    "response-header-added": False,
    "response-property-removed": True,
    "response-property-became-optional": True,
    "response-property-added": False,
    "response-property-became-required": False,
    # schema values
    "type-changed": True,
    "request-type-widened": False,
    "response-type-narrowed": False,
    "request-enum-narrowed": True,
    "request-enum-widened": False,
    "response-enum-widened": True,
    "response-enum-narrowed": False,
    "request-variants-reduced": True,
    "request-variants-added": False,
    "response-variants-added": True,
    "response-variants-reduced": False,
    # authentication
    "auth-changed": True,
    "auth-relaxed": False,
}


class CompatibilityReport:
    """Collects changes in the order they are found."""

    def __init__(self) -> None:
        self.breaking: list[dict[str, Any]] = []
        self.non_breaking: list[dict[str, Any]] = []

    def add(self, kind: str, loc: Loc, message: str, *, operation: str | None = None, **details: Any) -> None:
        change: dict[str, Any] = {"kind": kind, "location": loc.logical, "message": message}
        if operation:
            change["operation"] = operation
        if loc.real != loc.logical:
            change["defined_at"] = loc.real
        change.update(details)
        (self.breaking if KINDS[kind] else self.non_breaking).append(change)

    def summary(self) -> dict[str, Any]:
        kinds = Counter(c["kind"] for c in (*self.breaking, *self.non_breaking))
        return {
            "breaking": len(self.breaking),
            "non_breaking": len(self.non_breaking),
            "by_kind": dict(sorted(kinds.items())),
            "text": f"{len(self.breaking)} breaking, {len(self.non_breaking)} non-breaking change(s)",
        }
