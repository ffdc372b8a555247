"""Comparing two JSON schemas (OpenAPI flavour) in the direction data flows.

A request schema is what clients send: the new one must accept everything the old one did
(a narrowed enum, a new required property or a changed type break clients). A response schema
is what clients receive: the new one must not produce anything the old one could not (a
removed property, a widened enum, a changed type break clients). ``allOf`` is merged,
``$ref`` is followed (a pair of definitions already compared for the same parameter, body or
response is not compared again, so shared components are reported once there and recursive
schemas terminate), ``readOnly`` properties are ignored in requests and
``writeOnly`` ones in responses.
"""

from __future__ import annotations

from typing import Any, Literal

from compat_refs import Loc, Spec
from compat_report import CompatibilityReport

Direction = Literal["request", "response"]
MAX_DEPTH = 64


class View:
    """A schema with references followed and ``allOf`` merged (the description is the node's own)."""

    __slots__ = (
        "additional",
        "description",
        "enum",
        "items",
        "loc",
        "properties",
        "required",
        "types",
        "variants",
    )

    def __init__(self, loc: Loc) -> None:
        self.loc = loc
        self.types: frozenset[str] | None = None
        self.enum: list[Any] | None = None
        self.description: str | None = None
        self.properties: dict[str, tuple[Any, Loc]] = {}
        self.required: set[str] = set()
        self.items: tuple[Any, Loc] | None = None
        self.additional: tuple[Any, Loc] | None = None
        self.variants: list[tuple[Any, Loc]] | None = None


def _types(node: dict[str, Any]) -> frozenset[str] | None:
    declared = node.get("type")
    if isinstance(declared, str):
        types = {declared}
    elif isinstance(declared, list):
        types = {str(t) for t in declared}
    else:
        return None
    if node.get("nullable") is True:
        types.add("null")
    return frozenset(types)


def view(spec: Spec, schema: Any, loc: Loc, seen: frozenset[str] = frozenset()) -> View:
    node, loc = spec.resolve(schema, loc)
    result = View(loc=loc)
    if not isinstance(node, dict) or loc.real in seen:
        return result
    seen = seen | {loc.real}
    result.types = _types(node)
    result.enum = node["enum"] if isinstance(node.get("enum"), list) else None
    result.description = node.get("description") if isinstance(node.get("description"), str) else None
    properties = node.get("properties")
    if isinstance(properties, dict):
        result.properties = {str(k): (v, loc.child("properties", k)) for k, v in properties.items()}
    if isinstance(node.get("required"), list):
        result.required = {str(r) for r in node["required"]}
    if "items" in node and isinstance(node["items"], dict):
        result.items = (node["items"], loc.child("items"))
    if isinstance(node.get("additionalProperties"), dict):
        result.additional = (node["additionalProperties"], loc.child("additionalProperties"))
    for key in ("oneOf", "anyOf"):
        if isinstance(node.get(key), list):
            result.variants = [(v, loc.child(key, i)) for i, v in enumerate(node[key])]
            break
    all_of = node.get("allOf")
    for i, part in enumerate(all_of if isinstance(all_of, list) else []):
        _merge(result, view(spec, part, loc.child("allOf", i), seen))
    return result


def _merge(into: View, part: View) -> None:
    if part.types is not None:
        into.types = part.types if into.types is None else into.types & part.types
    into.enum = into.enum if into.enum is not None else part.enum
    for name, prop in part.properties.items():
        into.properties.setdefault(name, prop)
    into.required |= part.required
    into.items = into.items or part.items
    into.additional = into.additional or part.additional
    into.variants = into.variants or part.variants


def _accepts(wide: frozenset[str], narrow: frozenset[str]) -> bool:
    """True when every value of a type in ``narrow`` is also valid for ``wide``."""
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _show(types: frozenset[str]) -> str:
    return " | ".join(sorted(types))


def _values(values: list[Any]) -> str:
    return ", ".join(repr(v) for v in values)


class SchemaDiff:
    """Compares schemas of one operation, adding what it finds to ``report``."""

    def __init__(self, old: Spec, new: Spec, report: CompatibilityReport, operation: str) -> None:
        self.old = old
        self.new = new
        self.report = report
        self.operation = operation
        self._compared: set[tuple[str, str]] = set()

    def compare(
        self, old: Any, old_loc: Loc, new: Any, new_loc: Loc, direction: Direction, context: str
    ) -> None:
        """Compare one schema pair (a parameter, a body or a response media type) in ``direction``.

        Each pair of definitions is compared once per call: a shared component reached along
        several routes is reported at the first, and recursive schemas terminate.
        """
        self._compared = set()
        self._compare(old, old_loc, new, new_loc, direction, context, "", 0)

    def _add(self, kind: str, loc: Loc, message: str, **details: Any) -> None:
        self.report.add(kind, loc, f"{self.operation}: {message}", operation=self.operation, **details)

    def _compare(
        self,
        old: Any,
        old_loc: Loc,
        new: Any,
        new_loc: Loc,
        direction: Direction,
        context: str,
        name: str,
        depth: int,
    ) -> None:
        a = view(self.old, old, old_loc)
        b = view(self.new, new, new_loc)
        pair = (a.loc.real, b.loc.real)
        if pair in self._compared or depth > MAX_DEPTH:
            return
        self._compared.add(pair)
        depth += 1
        subject = f"property '{name}' of {context}" if name else context
        if not self._types(a, b, direction, subject):
            return  # a different type: comparing its parts would only repeat the news
        self._enum(a, b, direction, subject)
        if a.description != b.description and a.description is not None and b.description is not None:
            self._add("description-changed", b.loc.child("description"), f"description of {subject} changed")
        self._properties(a, b, direction, context, name, depth)
        if a.items and b.items:
            self._compare(*a.items, *b.items, direction, context, f"{name}[]" if name else "[]", depth)
        if a.additional and b.additional:
            self._compare(*a.additional, *b.additional, direction, context, f"{name}{{*}}", depth)
        self._variants(a, b, direction, context, name, subject, depth)

    def _types(self, a: View, b: View, direction: Direction, subject: str) -> bool:
        if a.types is None or b.types is None or a.types == b.types:
            return True
        old, new = _show(a.types), _show(b.types)
        if direction == "request" and _accepts(b.types, a.types):
            self._add(
                "request-type-widened",
                b.loc,
                f"{subject} now also accepts {new} (was {old})",
                old=old,
                new=new,
            )
            return True
        if direction == "response" and _accepts(a.types, b.types):
            self._add(
                "response-type-narrowed", b.loc, f"{subject} is now only {new} (was {old})", old=old, new=new
            )
            return True
        self._add("type-changed", b.loc, f"type of {subject} changed from {old} to {new}", old=old, new=new)
        return False

    def _enum(self, a: View, b: View, direction: Direction, subject: str) -> None:
        if a.enum == b.enum:
            return
        removed = [v for v in a.enum if v not in b.enum] if a.enum is not None and b.enum is not None else []
        added = [v for v in b.enum if v not in a.enum] if a.enum is not None and b.enum is not None else []
        narrowed = removed or (a.enum is None and b.enum is not None)
        widened = added or (a.enum is not None and b.enum is None)
        details = {"old": a.enum, "new": b.enum}
        if narrowed:
            limited = f"is now limited to {_values(b.enum or [])}"
            text = f"no longer allows {_values(removed)}" if removed else limited
            kind = "request-enum-narrowed" if direction == "request" else "response-enum-narrowed"
            verb = "accepts" if direction == "request" else "returns"
            self._add(
                kind, b.loc, f"{subject} {text} (the API {verb} fewer values)", removed=removed, **details
            )
        if widened:
            text = f"now allows {_values(added)}" if added else "is no longer limited to an enum"
            kind = "request-enum-widened" if direction == "request" else "response-enum-widened"
            verb = "accepts" if direction == "request" else "may return"
            self._add(kind, b.loc, f"{subject} {text} (the API {verb} more values)", added=added, **details)

    def _visible(self, spec: Spec, prop: tuple[Any, Loc], direction: Direction) -> bool:
        node, _ = spec.resolve(*prop)
        if not isinstance(node, dict):
            return True
        hidden = "readOnly" if direction == "request" else "writeOnly"
        return node.get(hidden) is not True

    def _properties(
        self, a: View, b: View, direction: Direction, context: str, name: str, depth: int
    ) -> None:
        old = {k: v for k, v in a.properties.items() if self._visible(self.old, v, direction)}
        new = {k: v for k, v in b.properties.items() if self._visible(self.new, v, direction)}
        for prop, (schema, loc) in old.items():
            full = f"{name}.{prop}" if name else prop
            if prop not in new:
                kind = f"{direction}-property-removed"
                self._add(kind, loc, f"property '{full}' was removed from {context}", property=full)
                continue
            was, now = prop in a.required, prop in b.required
            new_loc = new[prop][1]
            if not was and now:
                self._add(
                    f"{direction}-property-became-required",
                    new_loc,
                    f"property '{full}' of {context} is now required",
                    property=full,
                )
            elif was and not now:
                self._add(
                    f"{direction}-property-became-optional",
                    new_loc,
                    f"property '{full}' of {context} is no longer required",
                    property=full,
                )
            self._compare(schema, loc, *new[prop], direction, context, full, depth)
        for prop, (_, loc) in new.items():
            if prop in old:
                continue
            full = f"{name}.{prop}" if name else prop
            if direction == "request" and prop in b.required:
                self._add(
                    "required-request-property-added",
                    loc,
                    f"new required property '{full}' in {context}",
                    property=full,
                )
            else:
                self._add(
                    f"{direction}-property-added", loc, f"new property '{full}' in {context}", property=full
                )

    def _variants(
        self, a: View, b: View, direction: Direction, context: str, name: str, subject: str, depth: int
    ) -> None:
        if a.variants is None or b.variants is None:
            return
        for old, new in zip(a.variants, b.variants, strict=False):
            self._compare(*old, *new, direction, context, name, depth)
        if len(a.variants) == len(b.variants):
            return
        fewer = len(b.variants) < len(a.variants)
        kind = f"{direction}-variants-{'reduced' if fewer else 'added'}"
        count, was = len(b.variants), len(a.variants)
        self._add(
            kind, b.loc, f"{subject} now has {count} alternative schemas (was {was})", old=was, new=count
        )
