"""Comparing two OpenAPI documents path by path and operation by operation.

Paths are matched by their template (``/pets/{id}`` matches ``/pets/{petId}``), operations by
method. For each operation: parameters (path-level ones merged in, matched by location and
name, path parameters by position), the request body, the responses and the effective
security requirement; schemas are handed to ``SchemaDiff``. Swagger 2.0 documents are read
through the same lens: a ``body`` parameter is the request body, ``consumes``/``produces``
give the media types. Locations of removed things point into the old document, of everything
else into the new one.
"""

from __future__ import annotations

import re
from typing import Any

from compat_refs import Loc, Spec
from compat_report import CompatibilityReport
from compat_schema import Direction, SchemaDiff

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_TEMPLATE_PARAM = re.compile(r"\{([^}/]+)\}")
_SCHEME_FIELDS = ("type", "in", "name", "scheme")

Media = dict[str, tuple[Any, Loc]]  # media type -> (schema, location)
Headers = dict[str, tuple[str, Loc]]  # lower-case name -> (name as written, location)
Requirement = dict[str, frozenset[str]]


def _mapping(value: Any) -> dict[str, Any]:
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


class Operation:
    """One operation of one document, with its parameters and request body gathered."""

    def __init__(self, spec: Spec, path: str, node: dict[str, Any], loc: Loc) -> None:
        self.spec = spec
        self.path = path
        self.node = node
        self.loc = loc
        self.params: dict[tuple[str, str], tuple[dict[str, Any], Loc]] = {}
        self.body: tuple[bool, Media, Loc] | None = None  # (required, media types, location)

    @property
    def label(self) -> str:
        return f"{self.loc.logical.rsplit('/', 1)[-1].upper()} {self.path}"


def _gather(spec: Spec, path: str, item: dict[str, Any], item_loc: Loc, method: str) -> Operation:
    node, loc = spec.resolve(item[method], item_loc.child(method))
    node = _mapping(node)
    op = Operation(spec, path, node, loc)
    names = _TEMPLATE_PARAM.findall(path)
    for source, source_loc in ((item, item_loc), (node, loc)):
        raw_params = source.get("parameters")
        for i, raw in enumerate(raw_params if isinstance(raw_params, list) else []):
            param, param_loc = spec.resolve(raw, source_loc.child("parameters", i))
            if not isinstance(param, dict):
                continue
            where, name = str(param.get("in", "")), str(param.get("name", ""))
            if where == "body" and spec.swagger2:
                media_types = node.get("consumes") or spec.root.get("consumes") or ["application/json"]
                media = {str(mt): (param.get("schema"), param_loc.child("schema")) for mt in media_types}
                op.body = (param.get("required") is True, media, param_loc)
                continue
            if where == "path" and name in names:
                key = ("path", f"#{names.index(name)}")
            else:
                key = (where, name.lower() if where == "header" else name)
            op.params[key] = (param, param_loc)
    if not spec.swagger2 and "requestBody" in node:
        body, body_loc = spec.resolve(node["requestBody"], loc.child("requestBody"))
        body = _mapping(body)
        media = {
            mt: (_mapping(m).get("schema"), body_loc.child("content", mt, "schema"))
            for mt, m in _mapping(body.get("content")).items()
        }
        op.body = (body.get("required") is True, media, body_loc)
    return op


def _param_schema(spec: Spec, param: dict[str, Any], loc: Loc) -> tuple[Any, Loc]:
    if spec.swagger2:
        return param, loc
    if "schema" in param:
        return param["schema"], loc.child("schema")
    for media_type, media in _mapping(param.get("content")).items():
        return _mapping(media).get("schema"), loc.child("content", media_type, "schema")
    return None, loc


def _response_parts(spec: Spec, op: Operation, raw: Any, loc: Loc) -> tuple[Media, Headers]:
    response, loc = spec.resolve(raw, loc)
    response = _mapping(response)
    if spec.swagger2:
        media_types = op.node.get("produces") or spec.root.get("produces") or ["application/json"]
        schema = response.get("schema")
        media = {str(mt): (schema, loc.child("schema")) for mt in media_types} if schema is not None else {}
    else:
        media = {
            mt: (_mapping(m).get("schema"), loc.child("content", mt, "schema"))
            for mt, m in _mapping(response.get("content")).items()
        }
    headers = {name.lower(): (name, loc.child("headers", name)) for name in _mapping(response.get("headers"))}
    return media, headers


def _requirements(value: Any) -> list[Requirement]:
    """A security requirement as alternatives of scheme -> scopes; no requirement is ``[{}]``."""
    alternatives = [
        {str(s): frozenset(map(str, scopes or [])) for s, scopes in alt.items()}
        for alt in (value if isinstance(value, list) else [])
        if isinstance(alt, dict)
    ]
    return alternatives or [{}]


def _satisfies(have: Requirement, need: Requirement) -> bool:
    return all(scheme in have and scopes <= have[scheme] for scheme, scopes in need.items())


def _describe(alternatives: list[Requirement]) -> str:
    def one(alt: Requirement) -> str:
        parts = [
            scheme + (f" [{', '.join(sorted(scopes))}]" if scopes else "")
            for scheme, scopes in sorted(alt.items())
        ]
        return " + ".join(parts) or "no authentication"

    return " or ".join(one(alt) for alt in alternatives)


class Comparison:
    """Walks two documents and fills a ``CompatibilityReport``."""

    def __init__(self, old: Spec, new: Spec) -> None:
        self.old = old
        self.new = new
        self.report = CompatibilityReport()

    def run(self) -> CompatibilityReport:
        self._security_schemes()
        old_security, new_security = self.old.root.get("security"), self.new.root.get("security")
        if old_security != new_security:
            self._security(old_security, new_security, Loc.root("/security"), None)
        self._paths()
        return self.report

    # -- paths and operations ------------------------------------------------------------------

    def _paths(self) -> None:
        def by_template(spec: Spec) -> dict[str, tuple[str, dict[str, Any], Loc]]:
            items = {}
            for path, raw in _mapping(spec.root.get("paths")).items():
                item, loc = spec.resolve(raw, Loc.root("/paths").child(path))
                items[_TEMPLATE_PARAM.sub("{}", path)] = (path, _mapping(item), loc)
            return items

        old_paths, new_paths = by_template(self.old), by_template(self.new)
        for key, (path, item, loc) in old_paths.items():
            if key in new_paths:
                self._path_item(path, item, loc, *new_paths[key])
                continue
            methods = ", ".join(m.upper() for m in METHODS if isinstance(item.get(m), dict))
            suffix = f" ({methods})" if methods else ""
            self.report.add("path-removed", loc, f"path {path} was removed{suffix}")
        for key, (path, _, loc) in new_paths.items():
            if key not in old_paths:
                self.report.add("path-added", loc, f"new path {path}")

    def _path_item(
        self,
        old_path: str,
        old_item: dict[str, Any],
        old_loc: Loc,
        new_path: str,
        new_item: dict[str, Any],
        new_loc: Loc,
    ) -> None:
        for method in METHODS:
            in_old, in_new = isinstance(old_item.get(method), dict), isinstance(new_item.get(method), dict)
            if in_old and not in_new:
                label = f"{method.upper()} {old_path}"
                self.report.add(
                    "operation-removed",
                    old_loc.child(method),
                    f"operation {label} was removed",
                    operation=label,
                )
            elif in_new and not in_old:
                label = f"{method.upper()} {new_path}"
                self.report.add(
                    "operation-added", new_loc.child(method), f"new operation {label}", operation=label
                )
            elif in_old and in_new:
                self._operation(
                    _gather(self.old, old_path, old_item, old_loc, method),
                    _gather(self.new, new_path, new_item, new_loc, method),
                )

    def _add(self, op: Operation, kind: str, loc: Loc, message: str, **details: Any) -> None:
        self.report.add(kind, loc, f"{op.label}: {message}", operation=op.label, **details)

    def _operation(self, old: Operation, new: Operation) -> None:
        for key in ("summary", "description"):
            if old.node.get(key) != new.node.get(key) and old.node.get(key) and new.node.get(key):
                self._add(new, "description-changed", new.loc.child(key), f"{key} changed")
        if new.node.get("deprecated") is True and old.node.get("deprecated") is not True:
            self._add(new, "operation-deprecated", new.loc.child("deprecated"), "operation is now deprecated")
        schemas = SchemaDiff(self.old, self.new, self.report, new.label)
        self._parameters(old, new, schemas)
        self._request_body(old, new, schemas)
        self._responses(old, new, schemas)
        if "security" in old.node or "security" in new.node:
            loc = new.loc.child("security") if "security" in new.node else old.loc.child("security")
            effective = [
                op.node["security"] if "security" in op.node else op.spec.root.get("security")
                for op in (old, new)
            ]
            self._security(*effective, loc, new.label)

    def _parameters(self, old: Operation, new: Operation, schemas: SchemaDiff) -> None:
        for key, (param, loc) in old.params.items():
            if key not in new.params:
                self._add(
                    old, "parameter-removed", loc, f"parameter '{param.get('name')}' ({key[0]}) was removed"
                )
                continue
            new_param, new_loc = new.params[key]
            label = f"parameter '{new_param.get('name')}' ({key[0]})"
            was, now = param.get("required") is True, new_param.get("required") is True
            if now and not was:
                self._add(new, "parameter-became-required", new_loc, f"{label} is now required")
            elif was and not now:
                self._add(new, "parameter-became-optional", new_loc, f"{label} is no longer required")
            was_text, now_text = param.get("description"), new_param.get("description")
            if not self.new.swagger2 and was_text and now_text and was_text != now_text:
                self._add(
                    new,
                    "description-changed",
                    new_loc.child("description"),
                    f"description of {label} changed",
                )
            old_schema = _param_schema(self.old, param, loc)
            new_schema = _param_schema(self.new, new_param, new_loc)
            if old_schema[0] is not None and new_schema[0] is not None:
                schemas.compare(*old_schema, *new_schema, "request", label)
        for key, (param, loc) in new.params.items():
            if key in old.params:
                continue
            label = f"parameter '{param.get('name')}' ({key[0]})"
            if param.get("required") is True:
                self._add(new, "required-parameter-added", loc, f"new required {label}")
            else:
                self._add(new, "parameter-added", loc, f"new optional {label}")

    def _request_body(self, old: Operation, new: Operation, schemas: SchemaDiff) -> None:
        if new.body is None:
            if old.body is not None:
                self._add(old, "request-body-removed", old.body[2], "request body was removed")
            return
        required, media, loc = new.body
        if old.body is None:
            kind = "required-request-body-added" if required else "request-body-added"
            self._add(new, kind, loc, f"new {'required' if required else 'optional'} request body")
            return
        was_required, old_media, _ = old.body
        if required and not was_required:
            self._add(new, "request-body-became-required", loc, "request body is now required")
        elif was_required and not required:
            self._add(new, "request-body-became-optional", loc, "request body is no longer required")
        self._media(old, new, old_media, media, "request", "request body", schemas)

    def _media(
        self,
        old: Operation,
        new: Operation,
        old_media: Media,
        new_media: Media,
        direction: Direction,
        context: str,
        schemas: SchemaDiff,
    ) -> None:
        compared: set[tuple[str, str]] = set()
        for media_type, (schema, loc) in old_media.items():
            if media_type not in new_media:
                self._add(
                    old,
                    f"{direction}-media-type-removed",
                    _parent(loc),
                    f"{context} no longer offers {media_type}",
                )
                continue
            new_schema, new_loc = new_media[media_type]
            if schema is None or new_schema is None or (loc.logical, new_loc.logical) in compared:
                continue
            compared.add((loc.logical, new_loc.logical))
            schemas.compare(schema, loc, new_schema, new_loc, direction, f"{context} ({media_type})")
        for media_type, (_, loc) in new_media.items():
            if media_type not in old_media:
                self._add(
                    new, f"{direction}-media-type-added", _parent(loc), f"{context} now offers {media_type}"
                )

    def _responses(self, old: Operation, new: Operation, schemas: SchemaDiff) -> None:
        old_responses = _mapping(old.node.get("responses"))
        new_responses = _mapping(new.node.get("responses"))
        for code, raw in old_responses.items():
            loc = old.loc.child("responses", code)
            if code not in new_responses:
                self._add(old, "response-code-removed", loc, f"response {code} was removed")
                continue
            old_media, old_headers = _response_parts(self.old, old, raw, loc)
            new_media, new_headers = _response_parts(
                self.new, new, new_responses[code], new.loc.child("responses", code)
            )
            for name, (header, header_loc) in old_headers.items():
                if name not in new_headers:
                    self._add(
                        old,
                        "response-header-removed",
                        header_loc,
                        f"response {code} no longer sends header '{header}'",
                    )
            for name, (header, header_loc) in new_headers.items():
                if name not in old_headers:
                    self._add(
                        new,
                        "response-header-added",
                        header_loc,
                        f"response {code} now sends header '{header}'",
                    )
            self._media(old, new, old_media, new_media, "response", f"response {code}", schemas)
        for code in new_responses:
            if code not in old_responses:
                self._add(
                    new, "response-code-added", new.loc.child("responses", code), f"new response {code}"
                )

    # -- authentication ------------------------------------------------------------------------

    def _security(self, old_value: Any, new_value: Any, loc: Loc, operation: str | None) -> None:
        old, new = _requirements(old_value), _requirements(new_value)
        if {frozenset(a.items()) for a in old} == {frozenset(a.items()) for a in new}:
            return
        prefix = f"{operation}: " if operation else "global "
        details = {"old": _describe(old), "new": _describe(new)}
        refused = [alt for alt in old if not any(_satisfies(alt, need) for need in new)]
        if refused:
            self.report.add(
                "auth-changed",
                loc,
                f"{prefix}authentication changed from {details['old']} to {details['new']}; "
                f"clients using {_describe(refused)} are refused",
                operation=operation,
                **details,
            )
        else:
            self.report.add(
                "auth-relaxed",
                loc,
                f"{prefix}authentication relaxed from {details['old']} to {details['new']}",
                operation=operation,
                **details,
            )

    def _security_schemes(self) -> None:
        if self.old.swagger2 != self.new.swagger2:
            return
        old_schemes, base = _schemes(self.old)
        new_schemes, _ = _schemes(self.new)
        for name, raw in old_schemes.items():
            if name not in new_schemes:
                continue
            old_scheme, _ = self.old.resolve(raw, base.child(name))
            new_scheme, loc = self.new.resolve(new_schemes[name], base.child(name))
            old_scheme, new_scheme = _mapping(old_scheme), _mapping(new_scheme)
            changed = [f for f in _SCHEME_FIELDS if old_scheme.get(f) != new_scheme.get(f)]
            if changed:
                diff = ", ".join(f"{f}: {old_scheme.get(f)} -> {new_scheme.get(f)}" for f in changed)
                self.report.add("auth-changed", loc, f"security scheme '{name}' changed ({diff})")


def _schemes(spec: Spec) -> tuple[dict[str, Any], Loc]:
    if spec.swagger2:
        return _mapping(spec.root.get("securityDefinitions")), Loc.root("/securityDefinitions")
    components = _mapping(spec.root.get("components"))
    return _mapping(components.get("securitySchemes")), Loc.root("/components/securitySchemes")


def _parent(loc: Loc) -> Loc:
    """The media type entry above a ``.../content/<type>/schema`` location."""
    return Loc(loc.logical.rsplit("/", 1)[0], loc.real.rsplit("/", 1)[0])
