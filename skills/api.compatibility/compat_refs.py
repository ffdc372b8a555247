"""JSON pointers and local ``$ref`` resolution for one OpenAPI document.

``Spec`` wraps a loaded document: it follows ``#/...`` references (chains included, cycles
refused) and ``broken_refs()`` checks every reference in the document up front, so a typo in
a ``$ref`` becomes an error naming the reference, where it was used and what is missing.
``Loc`` is a place in a comparison: the *logical* pointer (the use site, with references
inlined, as a reader of the operation sees it) and the pointer where the node is really
defined (inside ``components`` when it was reached through a ``$ref``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Keys whose mapping values are user-chosen names, so "default", "example"... are names there.
_NAMED_MAPS = {
    "paths",
    "properties",
    "patternProperties",
    "responses",
    "schemas",
    "parameters",
    "headers",
    "content",
    "examples",
    "requestBodies",
    "securitySchemes",
    "links",
    "callbacks",
    "definitions",
    "$defs",
    "variables",
    "encoding",
    "webhooks",
    "pathItems",
    "securityDefinitions",
    "mapping",
}
# Keys holding literal data (examples, defaults, enum values): a "$ref" inside them is data.
_LITERAL_KEYS = {"example", "default", "enum", "const", "value", "externalValue"}


def _fragment(ref: str) -> str:
    """The JSON pointer of a local reference, percent-decoded as URI fragments are."""
    if "%" not in ref:
        return ref[1:]
    from urllib.parse import unquote  # rare: only escaped references pay for the import

    return unquote(ref[1:])


def escape(token: Any) -> str:
    return str(token).replace("~", "~0").replace("/", "~1")


def unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


class Loc(NamedTuple):
    """Where a node is: ``logical`` as seen from its use site, ``real`` where it is defined."""

    logical: str
    real: str

    @classmethod
    def root(cls, pointer: str = "") -> Loc:
        return cls(pointer, pointer)

    def child(self, *tokens: Any) -> Loc:
        suffix = "".join("/" + escape(t) for t in tokens)
        return Loc(self.logical + suffix, self.real + suffix)


class RefError(Exception):
    """A ``$ref`` that cannot be followed; ``ref`` and ``used_at`` name it precisely."""

    def __init__(self, ref: str, used_at: str, reason: str, code: str = "broken_ref") -> None:
        super().__init__(f"$ref '{ref}' used at {used_at or '/'} {reason}")
        self.ref = ref
        self.used_at = used_at
        self.reason = reason
        self.code = code


class Spec:
    """A loaded OpenAPI (3.x) or Swagger (2.0) document and its local references."""

    def __init__(self, root: dict[str, Any], *, label: str, source: str) -> None:
        self.root = root
        self.label = label
        self.source = source
        self.swagger2 = str(root.get("swagger", "")).startswith("2")

    def lookup(self, ref: str, used_at: str) -> Any:
        if not isinstance(ref, str):
            raise RefError(str(ref), used_at, "is not a string")
        if not ref.startswith("#"):
            raise RefError(
                ref,
                used_at,
                "points to another document; only local references (#/...) are supported, "
                "bundle the document first",
                code="unsupported_ref",
            )
        fragment = _fragment(ref)
        if fragment and not fragment.startswith("/"):
            raise RefError(ref, used_at, "is not a JSON pointer (expected '#/...')")
        node: Any = self.root
        walked = ""
        for raw in fragment.split("/")[1:] if fragment else []:
            token = unescape(raw)
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                hint = ""
                if isinstance(node, dict):
                    import difflib  # only on the error path

                    close = difflib.get_close_matches(token, [str(k) for k in node], n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RefError(ref, used_at, f"does not resolve: {walked or '/'} has no '{token}'{hint}")
            walked += "/" + escape(token)
        return node

    def resolve(self, node: Any, loc: Loc) -> tuple[Any, Loc]:
        """Follow ``$ref`` (and references to references) from ``node``; refuse a reference loop."""
        chain: list[str] = []
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in chain:
                raise RefError(
                    ref,
                    loc.logical,
                    "is part of a reference loop: " + " -> ".join([*chain, ref]),
                    code="ref_cycle",
                )
            chain.append(ref)
            node = self.lookup(ref, loc.real)
            loc = Loc(loc.logical, _fragment(ref))
        return node, loc

    def broken_refs(self) -> list[RefError]:
        """Every reference in the document that does not resolve (or loops), in document order."""
        problems: list[RefError] = []
        stack: list[tuple[Any, str, bool]] = [(self.root, "", False)]
        while stack:
            node, pointer, named = stack.pop()
            if isinstance(node, dict):
                if "$ref" in node and not named:
                    try:
                        self.resolve(node, Loc.root(pointer))
                    except RefError as exc:
                        problems.append(exc)
                children = [
                    (value, f"{pointer}/{escape(key)}", str(key) in _NAMED_MAPS)
                    for key, value in node.items()
                    if named or not (str(key) in _LITERAL_KEYS or str(key).startswith("x-"))
                ]
            elif isinstance(node, list):
                children = [(value, f"{pointer}/{i}", False) for i, value in enumerate(node)]
            else:
                continue
            stack.extend(reversed(children))
        return problems
