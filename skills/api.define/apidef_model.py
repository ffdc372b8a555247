"""api.define's input model: the service and its resources, checked, with every generated name.

``parse_service`` turns the raw inputs into a ``Service`` or raises ``SkillError`` naming the
resource, the field and the problem. Naming lives here too: words of an identifier, English
plurals (``category`` -> ``categories``, ``person`` -> ``people``) and the case conversions used
for paths (kebab), schemas (Pascal), operationIds (camel) and properties (``property_case``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from betty_mcp.kit.english import UNCOUNTABLE, has_plural_ending, plural, words
from betty_mcp.kit.skillkit import SkillError

OPERATIONS = ("list", "get", "create", "update", "delete")
PROPERTY_CASES = ("camel", "snake")
PAGINATION_STYLES = ("offset", "cursor")
DEFAULT_FIELDS = {"name": "string", "description": "string?"}
FIELD_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer", "format": "int64"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "date-time": {"type": "string", "format": "date-time"},
    "uuid": {"type": "string", "format": "uuid"},
    "email": {"type": "string", "format": "email"},
    "uri": {"type": "string", "format": "uri"},
    "object": {"type": "object", "additionalProperties": True},
}
RESERVED_FIELDS = ("id", "created at", "updated at")  # generated on every resource, as words
RESERVED_SCHEMAS = ("Problem", "Pagination")
SCHEMA_SUFFIXES = ("Create", "Update", "List")

_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-_][A-Za-z0-9]+)*$")
_SERVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[ _-][A-Za-z0-9]+)*$")
_URL = re.compile(r"^https?://\S+$")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}([-+][0-9A-Za-z.-]+)?$")


def kebab(parts: list[str]) -> str:
    return "-".join(parts)


def snake(parts: list[str]) -> str:
    return "_".join(parts)


def pascal(parts: list[str]) -> str:
    return "".join(p.capitalize() for p in parts)


def camel(parts: list[str]) -> str:
    return parts[0] + pascal(parts[1:]) if parts else ""


def looks_plural(word: str) -> bool:
    """A resource name given in the plural (an uncountable word is not: it has no singular to ask for)."""
    return word not in UNCOUNTABLE and has_plural_ending(word)


@dataclass(frozen=True)
class Field:
    name: str  # in the chosen property case
    schema: dict[str, Any]
    required: bool


@dataclass(frozen=True)
class Resource:
    words: list[str]
    plural_words: list[str]
    fields: list[Field]
    operations: tuple[str, ...]
    property_case: str

    @property
    def schema(self) -> str:
        return pascal(self.words)

    @property
    def collection_path(self) -> str:
        return "/" + kebab(self.plural_words)

    @property
    def id_param(self) -> str:
        return self.prop([*self.words, "id"])

    @property
    def item_path(self) -> str:
        return f"{self.collection_path}/{{{self.id_param}}}"

    @property
    def tag(self) -> str:
        return kebab(self.plural_words)

    @property
    def label(self) -> str:
        return " ".join(self.words)

    @property
    def plural_label(self) -> str:
        return " ".join(self.plural_words)

    def prop(self, parts: list[str]) -> str:
        return property_name(parts, self.property_case)

    def generated_names(self) -> list[str]:
        """Schema names and the collection path (in a fixed order): unique across a service."""
        return [self.schema, *(self.schema + suffix for suffix in SCHEMA_SUFFIXES), self.collection_path]

    def operation_id(self, operation: str) -> str:
        target = self.plural_words if operation == "list" else self.words
        return camel([operation, *target])


@dataclass(frozen=True)
class Service:
    title: str
    slug: str
    version: str
    description: str
    server_url: str
    pagination: str
    property_case: str
    resources: list[Resource]

    def prop(self, parts: list[str]) -> str:
        return property_name(parts, self.property_case)


def property_name(parts: list[str], case: str) -> str:
    return snake(parts) if case == "snake" else camel(parts)


def parse_service(
    *,
    service_name: Any,
    version: Any,
    resources: Any,
    description: Any = None,
    server_url: Any = None,
    pagination: str = "offset",
    property_case: str = "camel",
) -> Service:
    if not isinstance(service_name, str) or not _SERVICE_NAME.match(service_name.strip()):
        raise SkillError(
            f"service_name {service_name!r} is not a name: use letters and digits, words "
            "separated by spaces, '-' or '_' (e.g. 'order-service')"
        )
    parts = words(service_name)
    if not isinstance(version, str) or not _VERSION.match(version):
        raise SkillError(f"version {version!r} is not a version number such as 1.0.0")
    if description is not None and not isinstance(description, str):
        raise SkillError(f"description must be a string, got {type(description).__name__}")
    if server_url is not None and not (isinstance(server_url, str) and _URL.match(server_url)):
        raise SkillError(f"server_url {server_url!r} is not an http(s) URL")
    title = service_name.strip() if " " in service_name.strip() else " ".join(w.capitalize() for w in parts)
    slug = kebab(parts)
    parsed = parse_resources(resources, property_case)
    names = ", ".join(r.plural_label for r in parsed)
    return Service(
        title=title,
        slug=slug,
        version=version,
        description=description or f"{title}: manage {names}.",
        server_url=server_url or f"https://api.example.com/{slug}/v{version.split('.')[0]}",
        pagination=pagination,
        property_case=property_case,
        resources=parsed,
    )


def parse_resources(raw: Any, property_case: str) -> list[Resource]:
    if not isinstance(raw, list) or not raw:
        got = "an empty array" if raw == [] else f"{type(raw).__name__} {str(raw)[:60]!r}"
        example = '{"name": "order", "fields": {"total": "number"}, "operations": ["list"]}'
        raise SkillError(
            f'resources must be a non-empty array of names ("order") or objects ({example}), got {got}'
        )
    parsed = [parse_resource(item, index, property_case) for index, item in enumerate(raw)]
    owner: dict[str, int] = {}
    for index, resource in enumerate(parsed):
        for name in resource.generated_names():
            if name in owner:
                other = parsed[owner[name]]
                raise SkillError(
                    f"resources[{index}] ('{resource.label}') clashes with "
                    f"resources[{owner[name]}] ('{other.label}'): both generate {name}"
                )
            owner[name] = index
    return parsed


def parse_resource(item: Any, index: int, property_case: str) -> Resource:
    where = f"resources[{index}]"
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, dict):
        raise SkillError(f"{where} must be a name or an object with 'name', got {type(item).__name__}")
    unknown = sorted(set(item) - {"name", "plural", "fields", "operations"})
    if unknown:
        raise SkillError(
            f"{where} has unknown key(s) {', '.join(unknown)}; allowed: name, plural, fields, operations"
        )
    name = item.get("name")
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise SkillError(
            f"{where}: name {name!r} is not a resource name: use letters and digits, words "
            "joined by '-' or '_' or in camelCase (e.g. 'order-item'), in the singular"
        )
    singular = words(name)
    where = f"{where} ('{name}')"
    if "plural" in item:
        plural_name = item["plural"]
        if not isinstance(plural_name, str) or not _IDENTIFIER.match(plural_name):
            raise SkillError(f"{where}: plural {plural_name!r} is not a name like 'order-items'")
        plurals = words(plural_name)
    elif looks_plural(singular[-1]):
        suggestion = kebab([*singular[:-1], singular[-1][:-1]])
        raise SkillError(
            f"{where}: '{singular[-1]}' looks plural; name resources in the singular "
            f"(e.g. '{suggestion}'), or give 'plural' explicitly"
        )
    else:
        plurals = [*singular[:-1], plural(singular[-1])]
    if pascal(singular) in RESERVED_SCHEMAS:
        raise SkillError(f"{where}: the name is reserved for a shared schema ({', '.join(RESERVED_SCHEMAS)})")
    return Resource(
        singular,
        plurals,
        parse_fields(item.get("fields", DEFAULT_FIELDS), where, property_case),
        parse_operations(item.get("operations", list(OPERATIONS)), where),
        property_case,
    )


def parse_fields(raw: Any, where: str, property_case: str) -> list[Field]:
    if not isinstance(raw, dict) or not raw:
        raise SkillError(
            f"{where}: fields must be a non-empty object of field name -> type, "
            f'e.g. {{"total": "number", "note": "string?"}}'
        )
    fields: dict[str, Field] = {}
    for name, declared in raw.items():
        if not isinstance(name, str) or not _IDENTIFIER.match(name):
            raise SkillError(
                f"{where}: field name {name!r} is not an identifier (letters, digits, '-' or '_')"
            )
        if " ".join(words(name)) in RESERVED_FIELDS:
            raise SkillError(
                f"{where}: field '{name}' is generated on every resource "
                "(id, createdAt, updatedAt); leave it out"
            )
        key = property_name(words(name), property_case)
        if key in fields:
            raise SkillError(
                f"{where}: fields '{name}' and another one are both '{key}' in {property_case} case"
            )
        fields[key] = Field(key, *field_schema(declared, f"{where}: field '{name}'"))
    return list(fields.values())


def field_schema(declared: Any, where: str) -> tuple[dict[str, Any], bool]:
    """``"uuid[]?"`` -> (an array-of-uuid schema, not required)."""
    known = ", ".join(FIELD_TYPES) + " (add [] for an array, ? for optional)"
    if not isinstance(declared, str):
        raise SkillError(f"{where} has type {declared!r}; a type is a string: {known}")
    text = declared.strip()
    required = not text.endswith("?")
    text = text.removesuffix("?")
    is_array = text.endswith("[]")
    base = text.removesuffix("[]")
    if base not in FIELD_TYPES:
        raise SkillError(f"{where} has unknown type '{declared}'; known types: {known}")
    schema = dict(FIELD_TYPES[base])
    return ({"type": "array", "items": schema} if is_array else schema), required


def parse_operations(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(op, str) for op in raw):
        raise SkillError(f"{where}: operations must be a non-empty array drawn from {', '.join(OPERATIONS)}")
    unknown = [op for op in raw if op not in OPERATIONS]
    if unknown:
        raise SkillError(
            f"{where}: unknown operation(s) {', '.join(repr(op) for op in unknown)}; "
            f"use {', '.join(OPERATIONS)}"
        )
    return tuple(op for op in OPERATIONS if op in raw)
