"""Structural validity of an OpenAPI document: version, ``$ref`` resolution, the OpenAPI schema.

Three steps, each a list of findings (``rule_id``, ``severity``, ``path``, ``message``):

1. ``openapi-version``: an ``openapi: 3.x.y`` or ``swagger: "2.0"`` field names a supported version;
2. ``ref-resolvable``: every ``$ref`` resolves - local pointers, and relative files inside the
   workspace (read and checked in turn). Remote (http) references are not fetched: a warning;
   ``$anchor`` references (3.1) are looked up by name: a note, as the validator cannot follow them;
3. ``openapi-structure``: openapi-spec-validator's JSON Schema for that version and, when every
   reference resolved locally, its semantic checks (unique operationIds, declared path parameters,
   defaults matching their schema...).

openapi-spec-validator is imported here, on first use, not by the handler at start-up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from oas_walk import lookup, mappings, pointer

from betty_mcp.kit.skillkit import SkillError, parse_document, workspace_path

MAX_MESSAGE = 400
SUPPORTED = re.compile(r"^3\.[0-2]\.\d+(-[\w.]+)?$")
# Semantic errors carry no location; their message names the operation.
_REQUIRED = re.compile(r"^'(?P<name>[^']+)' is a required property$")
_OPERATION_IN_MESSAGE = re.compile(r"for '(?P<method>[a-z]+)'(?: operation)? in '(?P<path>[^']+)'")

Finding = dict[str, str]


def finding(rule_id: str, path: str, message: str, severity: str = "error") -> Finding:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 3] + "..."
    return {"rule_id": rule_id, "severity": severity, "path": path, "message": message}


def spec_version(doc: Any) -> tuple[str, list[Finding]]:
    """The declared version (``"3.0.0"``, ``"2.0"``), or ``"unknown"`` with the finding saying why."""
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        return "unknown", [
            finding(
                "openapi-version",
                "",
                f"the document is {kind}, not a mapping with an 'openapi' (3.x) or 'swagger' (2.0) field",
            )
        ]
    if "openapi" in doc:
        value = doc["openapi"]
        if not isinstance(value, str):
            return "unknown", [
                finding(
                    "openapi-version",
                    "/openapi",
                    f"openapi must be a string such as "
                    f'"3.0.3", got {value!r} ({type(value).__name__}): quote it',
                )
            ]
        if not SUPPORTED.match(value):
            return value, [
                finding(
                    "openapi-version",
                    "/openapi",
                    f"unsupported OpenAPI version '{value}'; "
                    'supported: 3.0.x, 3.1.x, 3.2.x (and swagger: "2.0")',
                )
            ]
        return value, []
    if "swagger" in doc:
        value = str(doc["swagger"])
        if value != "2.0":
            return value, [
                finding(
                    "openapi-version",
                    "/swagger",
                    f"unsupported Swagger version '{value}'; only \"2.0\" exists",
                )
            ]
        return value, []
    return "unknown", [
        finding(
            "openapi-version",
            "",
            "not an OpenAPI document: no 'openapi' (3.x) or 'swagger' (2.0) field at the top level",
        )
    ]


def check_refs(
    doc: dict[str, Any], source: Path, prefix: str = "", seen: set[Path] | None = None
) -> list[Finding]:
    """Every ``$ref`` in ``doc`` (read from ``source``) and in the files it references."""
    seen = seen if seen is not None else {source}
    found: list[Finding] = []
    for tokens, node in mappings(doc):
        ref = node.get("$ref")
        if "$ref" not in node or (tokens and tokens[-1] == "properties"):
            continue  # a schema property literally named "$ref" is not a reference
        where = prefix + pointer(*tokens, "$ref")
        if not isinstance(ref, str):
            found.append(finding("ref-resolvable", where, f"$ref must be a string, got {type(ref).__name__}"))
            continue
        target, _, fragment = ref.partition("#")
        if urlsplit(target).scheme:
            found.append(
                finding(
                    "ref-resolvable",
                    where,
                    f"remote $ref '{ref}' was not fetched (the check "
                    "works offline); the referenced document is not validated",
                    "warning",
                )
            )
            continue
        if fragment and not fragment.startswith("/"):
            found.append(_check_anchor_ref(doc, ref, target, fragment, where))
            continue
        if not target:
            ok, _value, why = lookup(doc, fragment)
            if not ok:
                found.append(finding("ref-resolvable", where, f"$ref '{ref}' does not resolve: {why}"))
            continue
        found += _check_file_ref(ref, unquote(target), fragment, source, where, seen)
    return found


def _check_anchor_ref(doc: dict[str, Any], ref: str, target: str, name: str, where: str) -> Finding:
    """A plain-name fragment names a 3.1 ``$anchor``; openapi-spec-validator cannot follow those."""
    anchors = {node.get("$anchor") for _tokens, node in mappings(doc)}
    if not target and name not in anchors:
        return finding(
            "ref-resolvable", where, f"$ref '{ref}' does not resolve: no $anchor '{name}' in the document"
        )
    return finding(
        "ref-resolvable",
        where,
        f"$ref '{ref}' names an $anchor, which openapi-spec-validator "
        "cannot follow: its reference-following checks were skipped",
        "info",
    )


def _check_file_ref(
    ref: str, target: str, fragment: str, source: Path, where: str, seen: set[Path]
) -> list[Finding]:
    try:
        path = workspace_path(str(source.parent / target), kind=f"$ref '{ref}'")
    except SkillError as exc:
        return [finding("ref-resolvable", where, exc.message)]
    if not path.is_file():
        return [finding("ref-resolvable", where, f"$ref '{ref}' names a file that does not exist: {path}")]
    try:
        other = parse_document(path.read_text(encoding="utf-8"), source=path.name)
    except (SkillError, UnicodeDecodeError, OSError) as exc:
        return [finding("ref-resolvable", where, f"$ref '{ref}': {getattr(exc, 'message', exc)}")]
    problems = []
    ok, _value, why = lookup(other, fragment)
    if not ok:
        problems.append(
            finding("ref-resolvable", where, f"$ref '{ref}' does not resolve in {path.name}: {why}")
        )
    if path not in seen:
        seen.add(path)
        problems += check_refs(other, path, prefix=f"{target}#", seen=seen)
    return problems


def check_schema(doc: dict[str, Any], version: str, source: Path, *, semantic: bool) -> list[Finding]:
    """openapi-spec-validator's JSON Schema findings; then, when there are none and ``semantic`` is
    set, its checks that follow references (which stop at the first broken part of the document)."""
    from openapi_spec_validator.validation import (
        OpenAPIV2SpecValidator,
        OpenAPIV30SpecValidator,
        OpenAPIV31SpecValidator,
        OpenAPIV32SpecValidator,
    )

    validators = {
        "2.0": OpenAPIV2SpecValidator,
        "3.0": OpenAPIV30SpecValidator,
        "3.1": OpenAPIV31SpecValidator,
        "3.2": OpenAPIV32SpecValidator,
    }
    cls = validators[version[:3]]
    found = [_describe(error) for error in cls.schema_validator.iter_errors(doc)]
    if found or not semantic:
        return found
    try:
        found += [_describe(error) for error in cls(doc, base_uri=source.as_uri()).iter_errors()]
    except Exception as exc:  # the validator stops on what it cannot follow; report, don't crash
        found.append(finding("openapi-structure", "", f"validation stopped: {type(exc).__name__}: {exc}"))
    return found


def _describe(error: Any) -> Finding:
    from jsonschema.exceptions import best_match

    best = best_match([error])
    path = pointer(*best.absolute_path)
    if best.validator in ("oneOf", "anyOf"):
        hints = sorted({c.message for c in best.context or [] if "'$ref' is a required" not in c.message})
        message = "matches none of the allowed forms" + (f": {'; '.join(hints[:3])}" if hints else "")
    else:
        message = best.message
    missing = _REQUIRED.match(message) if best.validator == "required" else None
    if missing:
        path += pointer(missing["name"])  # point at the member that should be there
    if not path:
        match = _OPERATION_IN_MESSAGE.search(message)
        if match:
            path = pointer("paths", match["path"], match["method"])
    return finding("openapi-structure", path, message)


def check_document(doc: Any, source: Path) -> tuple[str, list[Finding]]:
    """``(spec version, structural findings)``; the findings with severity ``error`` make it invalid."""
    version, found = spec_version(doc)
    if found:
        return version, found
    refs = check_refs(doc, source)
    found += refs
    found += check_schema(doc, version, source, semantic=not refs)
    return version, found
