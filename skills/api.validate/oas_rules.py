"""The API design guideline rules: small pure functions registered in ``RULES``.

A rule takes a ``Context`` (the parsed document and the options) and yields ``(path, message)``
findings, ``path`` a JSON pointer into the document. ``RULES`` records each rule's stable id,
severity (``error`` | ``warning`` | ``info``), one-line description and the rule sets it belongs to.
Rule sets nest: ``minimal`` (correctness) < ``recommended`` (the default: design guidelines)
< ``all`` (adds informational rules).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from oas_walk import Operation, operations, parameters, pointer, resolve, response_schemas, schemas

from betty_mcp.kit.english import is_plural, words

RULE_SETS = ("minimal", "recommended", "all")
SEVERITIES = ("error", "warning", "info")
PROPERTY_CASES: dict[str, re.Pattern[str]] = {
    "camel": re.compile(r"^[a-z][a-zA-Z0-9]*$"),
    "snake": re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$"),
    "kebab": re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"),
    "pascal": re.compile(r"^[A-Z][a-zA-Z0-9]*$"),
}
PAGINATION_PARAMS = {
    "limit",
    "offset",
    "page",
    "cursor",
    "pagesize",
    "perpage",
    "pagetoken",
    "after",
    "before",
    "size",
}
VERBS = {
    "get",
    "create",
    "update",
    "delete",
    "list",
    "fetch",
    "add",
    "remove",
    "retrieve",
    "find",
    "modify",
    "insert",
    "edit",
    "save",
    "put",
    "post",
    "patch",
}
_KEBAB_SEGMENT = re.compile(r"^[a-z0-9]+([-.][a-z0-9]+)*$")
_VERSION_SEGMENT = re.compile(r"^v?\d+(\.\d+)*$")
_OPERATION_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

Finding = tuple[str, str]


@dataclass
class Context:
    spec: dict[str, Any]
    spec_version: str
    property_case: str = "camel"
    operations: list[Operation] = field(init=False)

    def __post_init__(self) -> None:
        self.operations = operations(self.spec)

    @property
    def swagger2(self) -> bool:
        return self.spec_version.startswith("2")


Check = Callable[[Context], Iterable[Finding]]


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    description: str
    sets: tuple[str, ...]
    check: Check


RULES: dict[str, Rule] = {}


def rule(rule_id: str, severity: str, level: str, description: str) -> Callable[[Check], Check]:
    """Register a rule in ``RULES``; ``level`` is the smallest rule set that holds it."""

    def register(check: Check) -> Check:
        RULES[rule_id] = Rule(rule_id, severity, description, RULE_SETS[RULE_SETS.index(level) :], check)
        return check

    return register


def is_literal(segment: str) -> bool:
    """A path segment that is not a ``{parameter}``, a version marker (``v2``, ``2.0``) or empty."""
    return bool(segment) and "{" not in segment and not _VERSION_SEGMENT.match(segment)


def literal_segments(path: str) -> list[str]:
    return [segment for segment in path.split("/") if is_literal(segment)]


def looks_plural(segment: str) -> bool:
    return is_plural((words(segment) or [segment.lower()])[-1])


# -- info and servers ----------------------------------------------------------------------


def _info(ctx: Context) -> dict[str, Any]:
    info = ctx.spec.get("info")
    return info if isinstance(info, dict) else {}


@rule("info-version", "error", "minimal", "info.version states the API version")
def info_version(ctx: Context) -> Iterator[Finding]:
    version = _info(ctx).get("version")
    if not (isinstance(version, str) and version.strip()):
        yield "/info/version", "info.version is missing or empty: state the API version (e.g. 1.0.0)"


@rule("info-description", "warning", "recommended", "info.description says what the API is for")
def info_description(ctx: Context) -> Iterator[Finding]:
    description = _info(ctx).get("description")
    if not (isinstance(description, str) and description.strip()):
        yield "/info/description", "info.description is missing: say what the API is for"


@rule("info-contact", "info", "all", "info.contact names who owns the API")
def info_contact(ctx: Context) -> Iterator[Finding]:
    if not isinstance(_info(ctx).get("contact"), dict):
        yield "/info/contact", "info.contact is missing: name the team that owns the API"


@rule("info-license", "info", "all", "info.license states the terms of use")
def info_license(ctx: Context) -> Iterator[Finding]:
    if not isinstance(_info(ctx).get("license"), dict):
        yield "/info/license", "info.license is missing: state the terms of use"


@rule("servers-defined", "warning", "recommended", "servers (or Swagger 2 host) say where the API lives")
def servers_defined(ctx: Context) -> Iterator[Finding]:
    if ctx.swagger2:
        if not ctx.spec.get("host"):
            yield "/host", "host is missing: say where the API is served"
    elif not (isinstance(ctx.spec.get("servers"), list) and ctx.spec["servers"]):
        yield "/servers", "servers is missing or empty: list at least one server URL"


# -- operations ----------------------------------------------------------------------------


@rule("operation-id-present", "error", "minimal", "every operation has an operationId")
def operation_id_present(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if not (isinstance(op.node.get("operationId"), str) and op.node["operationId"].strip()):
            yield op.pointer, f"{op.label} has no operationId"


@rule("operation-id-unique", "error", "minimal", "operationIds are unique across the document")
def operation_id_unique(ctx: Context) -> Iterator[Finding]:
    first: dict[str, Operation] = {}
    for op in ctx.operations:
        op_id = op.node.get("operationId")
        if not isinstance(op_id, str):
            continue
        if op_id in first:
            yield (
                op.pointer + "/operationId",
                f"operationId '{op_id}' of {op.label} is also used by {first[op_id].label}",
            )
        else:
            first[op_id] = op


@rule("operation-id-format", "warning", "recommended", "operationIds are identifiers (no spaces)")
def operation_id_format(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        op_id = op.node.get("operationId")
        if isinstance(op_id, str) and op_id.strip() and not _OPERATION_ID.match(op_id):
            parts = words(op_id)
            suggestion = parts[0] + "".join(w.capitalize() for w in parts[1:]) if parts else "listItems"
            yield (
                op.pointer + "/operationId",
                f"operationId '{op_id}' of {op.label} is not an identifier: "
                f"use letters, digits, '_', '-' or '.', e.g. '{suggestion}'",
            )


@rule("operation-summary", "warning", "recommended", "every operation has a summary or description")
def operation_summary(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        texts = (op.node.get("summary"), op.node.get("description"))
        if not any(isinstance(text, str) and text.strip() for text in texts):
            yield op.pointer, f"{op.label} has neither a summary nor a description"


@rule("operation-tags", "info", "all", "every operation has at least one tag")
def operation_tags(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if not (isinstance(op.node.get("tags"), list) and op.node["tags"]):
            yield op.pointer, f"{op.label} has no tags"


# -- paths ---------------------------------------------------------------------------------


def _paths(ctx: Context) -> list[str]:
    paths = ctx.spec.get("paths")
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, dict) else []


@rule("paths-kebab-case", "warning", "recommended", "path segments are lower-case kebab-case")
def paths_kebab_case(ctx: Context) -> Iterator[Finding]:
    for path in _paths(ctx):
        for segment in literal_segments(path):
            if not _KEBAB_SEGMENT.match(segment):
                yield (
                    pointer("paths", path),
                    f"segment '{segment}' of {path} is not kebab-case (use '{'-'.join(words(segment))}')",
                )


@rule("paths-no-verbs", "warning", "recommended", "paths name resources, not actions (no get/create/...)")
def paths_no_verbs(ctx: Context) -> Iterator[Finding]:
    for path in _paths(ctx):
        for segment in literal_segments(path):
            first = (words(segment) or [""])[0]
            if first in VERBS:
                yield (
                    pointer("paths", path),
                    f"segment '{segment}' of {path} starts with the verb "
                    f"'{first}': let the HTTP method name the action",
                )


@rule("paths-plural-collections", "warning", "recommended", "a collection segment before an {id} is plural")
def paths_plural_collections(ctx: Context) -> Iterator[Finding]:
    for path in _paths(ctx):
        for name, following in itertools.pairwise(path.split("/")):
            if following.startswith("{") and is_literal(name) and not looks_plural(name):
                yield (
                    pointer("paths", path),
                    f"collection '{name}' in {path} is singular: name "
                    "collections in the plural (e.g. /orders/{orderId})",
                )


# -- schemas -------------------------------------------------------------------------------


@rule("property-case", "warning", "recommended", "schema property names use one case (property_case)")
def property_case(ctx: Context) -> Iterator[Finding]:
    pattern = PROPERTY_CASES[ctx.property_case]
    for tokens, schema in schemas(ctx.spec):
        props = schema.get("properties")
        for name in props if isinstance(props, dict) else ():
            if not pattern.match(str(name)):
                yield (
                    pointer(*tokens, "properties", name),
                    f"property '{name}' is not {ctx.property_case} case",
                )


# -- responses -----------------------------------------------------------------------------


def _codes(op: Operation, first_digit: str) -> list[str]:
    return [code for code in op.responses() if code[:1] == first_digit]


@rule("responses-success", "error", "minimal", "every operation documents a 2xx or 3xx response")
def responses_success(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if op.responses() and not (_codes(op, "2") or _codes(op, "3")):
            yield op.pointer + "/responses", f"{op.label} documents no success (2xx/3xx) response"


@rule("responses-4xx", "warning", "recommended", "every operation documents its client errors (4xx)")
def responses_4xx(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if not _codes(op, "4"):
            yield op.pointer + "/responses", f"{op.label} documents no 4xx response (e.g. 400, 404)"


@rule("responses-5xx", "warning", "recommended", "every operation documents its server errors (5xx)")
def responses_5xx(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if not _codes(op, "5"):
            yield op.pointer + "/responses", f"{op.label} documents no 5xx response (e.g. 500)"


def _property_names(ctx: Context, schema: Any, depth: int = 0) -> set[str]:
    """Property names of a schema, through ``allOf`` and local references."""
    schema = resolve(ctx.spec, schema)
    if not isinstance(schema, dict) or depth > 8:
        return set()
    names = set(schema["properties"]) if isinstance(schema.get("properties"), dict) else set()
    for part in schema.get("allOf") if isinstance(schema.get("allOf"), list) else ():
        names |= _property_names(ctx, part, depth + 1)
    return names


def _is_problem(ctx: Context, media: str, schema: Any) -> bool:
    return media.endswith("problem+json") or {"title", "status"} <= _property_names(ctx, schema)


@rule(
    "error-schema",
    "warning",
    "recommended",
    "error responses (4xx, 5xx, default) carry an RFC 7807 problem (application/problem+json)",
)
def error_schema(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        for code, response in op.responses().items():
            if code[:1] not in ("4", "5") and code != "default":
                continue
            if resolve(ctx.spec, response) is None:
                continue  # a reference the structural check reports
            bodies = list(response_schemas(ctx.spec, response))
            where = pointer(*op.tokens, "responses", code)
            if not bodies:
                yield (
                    where,
                    f"{code} response of {op.label} has no body: return an RFC 7807 problem "
                    "(application/problem+json)",
                )
            elif not any(_is_problem(ctx, media, schema) for media, schema in bodies):
                yield (
                    where,
                    f"{code} response of {op.label} is not an RFC 7807 problem: use "
                    "application/problem+json or a schema with type, title, status and detail",
                )


@rule("pagination-params", "warning", "recommended", "GET operations returning arrays take paging parameters")
def pagination_params(ctx: Context) -> Iterator[Finding]:
    for op in ctx.operations:
        if op.method != "get":
            continue
        success = [r for code, r in op.responses().items() if code[:1] == "2"]
        returns_array = any(
            isinstance(schema, dict) and schema.get("type") == "array"
            for response in success[:1]
            for _media, schema in response_schemas(ctx.spec, response)
        )
        names = {
            re.sub(r"[-_]", "", str(p.get("name", ""))).lower()
            for p in parameters(ctx.spec, op)
            if p.get("in") == "query"
        }
        if returns_array and not names & PAGINATION_PARAMS:
            yield (
                op.pointer,
                f"{op.label} returns an array but takes no paging parameter (limit, offset, page or cursor)",
            )


# -- security ------------------------------------------------------------------------------


def _scheme_names(ctx: Context) -> set[str]:
    if ctx.swagger2:
        table = ctx.spec.get("securityDefinitions")
    else:
        components = ctx.spec.get("components")
        table = components.get("securitySchemes") if isinstance(components, dict) else None
    return set(table) if isinstance(table, dict) else set()


@rule("security-defined", "warning", "recommended", "a security requirement applies to every operation")
def security_defined(ctx: Context) -> Iterator[Finding]:
    if isinstance(ctx.spec.get("security"), list) and ctx.spec["security"]:
        return
    unsecured = [op for op in ctx.operations if not isinstance(op.node.get("security"), list)]
    if unsecured and len(unsecured) == len(ctx.operations):
        yield (
            "/security",
            "no security requirement, globally or on any operation: declare a security "
            "scheme and a global security requirement (security: [] marks a public operation)",
        )
        return
    for op in unsecured:
        yield op.pointer, f"{op.label} has no security requirement and there is no global one"


@rule("security-schemes-exist", "error", "minimal", "security requirements name declared security schemes")
def security_schemes_exist(ctx: Context) -> Iterator[Finding]:
    declared = _scheme_names(ctx)
    places = [("/security", ctx.spec.get("security"))]
    places += [(op.pointer + "/security", op.node.get("security")) for op in ctx.operations]
    for where, requirements in places:
        for index, requirement in enumerate(requirements) if isinstance(requirements, list) else ():
            for name in requirement if isinstance(requirement, dict) else ():
                if name not in declared:
                    yield (
                        f"{where}/{index}",
                        f"security requirement names '{name}', which is not a declared security scheme",
                    )


def select(rule_set: str, disabled: Iterable[str] = ()) -> list[Rule]:
    """The rules of a rule set, in table order, minus the disabled ones."""
    off = set(disabled)
    return [r for r in RULES.values() if rule_set in r.sets and r.id not in off]
