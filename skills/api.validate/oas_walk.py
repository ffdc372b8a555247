"""Walking an OpenAPI document: JSON pointers, operations, local ``$ref`` lookups and schemas.

Shared by the structural check and the guideline rules. Pure functions over plain parsed
YAML/JSON; a document may be structurally broken, so every accessor tolerates wrong types
(a list where a mapping belongs is skipped, not a crash).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_REF_HOPS = 32

Tokens = tuple[Any, ...]

# Keywords whose values are schemas, by shape.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
_SCHEMA_SINGLES = (
    "items",
    "additionalProperties",
    "not",
    "contains",
    "if",
    "then",
    "else",
    "additionalItems",
    "propertyNames",
    "unevaluatedItems",
    "unevaluatedProperties",
)


def pointer(*tokens: Any) -> str:
    """RFC 6901 pointer: ``pointer("paths", "/pets", "get")`` -> ``/paths/~1pets/get``."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


def split_pointer(fragment: str) -> list[str]:
    """``/components/schemas/Pet`` (a ``$ref`` fragment, maybe percent-encoded) -> its tokens."""
    if not fragment:
        return []
    return [unquote(t).replace("~1", "/").replace("~0", "~") for t in fragment.lstrip("/").split("/")]


def lookup(doc: Any, fragment: str) -> tuple[bool, Any, str]:
    """Follow a pointer fragment in ``doc``: ``(found, value, where it stopped)``."""
    node = doc
    walked: list[str] = []
    for token in split_pointer(fragment):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False, None, f"no '{token}' in {pointer(*walked) or '/ (the document root)'}"
        walked.append(token)
    return True, node, ""


def resolve(spec: Any, node: Any) -> Any:
    """``node`` with local ``$ref`` chains followed; ``None`` when a reference cannot be followed here."""
    for _ in range(MAX_REF_HOPS):
        if not (isinstance(node, dict) and "$ref" in node):
            return node
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            return None
        found, node, _where = lookup(spec, ref[1:])
        if not found:
            return None
    return None


def _literal(tokens: Tokens, key: Any) -> bool:
    """Subtrees that hold literal data (examples, extensions): a ``$ref`` in them is not a reference."""
    if not isinstance(key, str):
        return False
    return key == "example" or key.startswith("x-") or (key == "value" and tokens[-2:-1] == ("examples",))


def mappings(node: Any, tokens: Tokens = ()) -> Iterator[tuple[Tokens, dict[str, Any]]]:
    """Every mapping in the document with its location, skipping literal subtrees."""
    if isinstance(node, dict):
        yield tokens, node
        children: Any = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    else:
        return
    for key, child in children:
        if not _literal(tokens, key):
            yield from mappings(child, (*tokens, key))


@dataclass(frozen=True)
class Operation:
    path: str
    method: str
    node: dict[str, Any]
    path_item: dict[str, Any]

    @property
    def tokens(self) -> Tokens:
        return ("paths", self.path, self.method)

    @property
    def pointer(self) -> str:
        return pointer(*self.tokens)

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.path}"

    def responses(self) -> dict[str, Any]:
        """Responses keyed by status code as text (YAML may give ``200`` as an integer)."""
        raw = self.node.get("responses")
        return {str(code): value for code, value in raw.items()} if isinstance(raw, dict) else {}


def operations(spec: dict[str, Any]) -> list[Operation]:
    paths = spec.get("paths")
    if not isinstance(paths, dict):
        return []
    found = []
    for path, item in paths.items():
        item = resolve(spec, item)
        if not isinstance(path, str) or not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            if isinstance(item.get(method), dict):
                found.append(Operation(path, method, item[method], item))
    return found


def parameters(spec: dict[str, Any], op: Operation) -> list[dict[str, Any]]:
    """The operation's parameters with the path item's, references followed."""
    params = []
    for source in (op.path_item.get("parameters"), op.node.get("parameters")):
        for raw in source if isinstance(source, list) else []:
            param = resolve(spec, raw)
            if isinstance(param, dict):
                params.append(param)
    return params


def response_schemas(spec: dict[str, Any], response: Any) -> Iterator[tuple[str, Any]]:
    """``(media type, resolved schema)`` of a response (OpenAPI 3 ``content``, Swagger 2 ``schema``)."""
    response = resolve(spec, response)
    if not isinstance(response, dict):
        return
    if "schema" in response:
        yield "", resolve(spec, response["schema"])
    content = response.get("content")
    for media, body in content.items() if isinstance(content, dict) else ():
        if isinstance(body, dict):
            yield str(media), resolve(spec, body.get("schema"))


def _schema_tree(node: Any, tokens: Tokens) -> Iterator[tuple[Tokens, dict[str, Any]]]:
    if not isinstance(node, dict) or "$ref" in node:
        return
    yield tokens, node
    for key in _SCHEMA_MAPS:
        members = node.get(key)
        for name, sub in members.items() if isinstance(members, dict) else ():
            yield from _schema_tree(sub, (*tokens, key, name))
    for key in _SCHEMA_LISTS:
        members = node.get(key)
        for index, sub in enumerate(members) if isinstance(members, list) else ():
            yield from _schema_tree(sub, (*tokens, key, index))
    for key in _SCHEMA_SINGLES:
        yield from _schema_tree(node.get(key), (*tokens, key))


def schemas(spec: dict[str, Any]) -> Iterator[tuple[Tokens, dict[str, Any]]]:
    """Every schema written in the document (references are not followed), with its location."""
    roots: list[tuple[Tokens, Any]] = []
    components = spec.get("components")
    named = components.get("schemas") if isinstance(components, dict) else None
    for parent, table in ((("components", "schemas"), named), (("definitions",), spec.get("definitions"))):
        for name, schema in table.items() if isinstance(table, dict) else ():
            roots.append(((*parent, name), schema))
    for tokens, node in mappings({k: v for k, v in spec.items() if k != "definitions"}):
        if tokens[:2] == ("components", "schemas"):
            continue
        if "schema" in node and not _inside_schema(tokens):
            roots.append(((*tokens, "schema"), node["schema"]))
    for tokens, schema in roots:
        yield from _schema_tree(schema, tokens)


def _inside_schema(tokens: Tokens) -> bool:
    """True when ``tokens`` lies within a schema (a property may be called ``schema``)."""
    return any(t in ("schema", "properties") for t in tokens)
