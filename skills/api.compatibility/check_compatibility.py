#!/usr/bin/env python3
"""api.compatibility: compare an old and a new OpenAPI document and report breaking changes.

This handler owns the inputs and the result: it loads both documents (YAML or JSON, inside
the workspace), checks that each is an OpenAPI 3.x or Swagger 2.0 document whose local
``$ref``s all resolve, runs the comparison (``compat_operations``) and shapes the result.
With ``--fail_on_breaking`` a comparison that found breaking changes is a failure whose errors
are those changes.

    python check_compatibility.py OLD_SPEC_PATH NEW_SPEC_PATH [--fail_on_breaking]
"""

from __future__ import annotations

import argparse
from typing import Any

from compat_operations import Comparison
from compat_refs import RefError, Spec

from betty_mcp.kit.skillkit import SkillError, load_document, run
from betty_mcp.kit.skillkit import parser as make_parser

parser = make_parser("Compare two versions of an OpenAPI document and report breaking changes.")
parser.add_argument("old_spec_path", help="the old (published) OpenAPI document, YAML or JSON")
parser.add_argument("new_spec_path", help="the new OpenAPI document, YAML or JSON")
parser.add_argument(
    "--fail_on_breaking",
    action="store_true",
    help="fail (exit 1, MCP isError) when breaking changes are found",
)


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "empty"}.get(type(value), type(value).__name__)


def load_spec(value: str, label: str) -> Spec:
    """Read one document and check it is an OpenAPI document this skill can compare."""
    doc = load_document(value, kind=f"{label}_spec_path")
    where = f"{label} spec '{value}'"
    if not isinstance(doc, dict):
        raise SkillError(
            f"{where} is not an OpenAPI document: its top level is {_kind_of(doc)}, not a mapping",
            code="not_openapi",
        )
    if "openapi" in doc:
        if not str(doc["openapi"]).startswith("3."):
            raise SkillError(
                f"{where} declares openapi: {doc['openapi']}; supported are OpenAPI 3.0, 3.1 and Swagger 2.0",
                code="unsupported_version",
            )
    elif "swagger" in doc:
        if str(doc["swagger"]) != "2.0":
            raise SkillError(
                f"{where} declares swagger: {doc['swagger']}; only Swagger 2.0 is supported",
                code="unsupported_version",
            )
    else:
        keys = ", ".join(map(str, list(doc)[:8])) or "none"
        raise SkillError(
            f"{where} is not an OpenAPI document: it has no 'openapi' (or 'swagger') field "
            f"(top-level keys: {keys})",
            code="not_openapi",
        )
    if "paths" in doc and not isinstance(doc["paths"], dict):
        raise SkillError(
            f"{where}: 'paths' must be a mapping, not {_kind_of(doc['paths'])}", code="not_openapi"
        )
    return Spec(doc, label=label, source=value)


def _ref_error(spec: Spec, exc: RefError) -> dict[str, Any]:
    return {
        "code": exc.code,
        "message": f"{spec.label} spec '{spec.source}': {exc}",
        "ref": exc.ref,
        "used_at": exc.used_at,
        "spec": spec.label,
    }


def _version(spec: Spec) -> str:
    info = spec.root.get("info")
    version = info.get("version") if isinstance(info, dict) else None
    return "" if version is None else str(version)


def handle(args: argparse.Namespace) -> dict[str, Any]:
    old = load_spec(args.old_spec_path, "old")
    new = load_spec(args.new_spec_path, "new")
    problems = [_ref_error(spec, exc) for spec in (old, new) for exc in spec.broken_refs()]
    if problems:
        return {"ok": False, "errors": problems}
    try:
        report = Comparison(old, new).run()
    except RefError as exc:  # the up-front check makes this unreachable for valid pointers; keep it precise
        raise SkillError(str(exc), code=exc.code) from None
    result: dict[str, Any] = {
        "compatible": not report.breaking,
        "old_version": _version(old),
        "new_version": _version(new),
        "summary": report.summary(),
        "breaking_changes": report.breaking,
        "non_breaking_changes": report.non_breaking,
    }
    if args.fail_on_breaking and report.breaking:
        errors = [
            {"code": c["kind"], "message": c["message"], "location": c["location"]} for c in report.breaking
        ]
        return {"ok": False, "errors": errors, **result}
    return result


if __name__ == "__main__":
    run(handle, parser)
