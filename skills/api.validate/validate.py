#!/usr/bin/env python3
"""api.validate: check an OpenAPI 3.0/3.1 (or Swagger 2.0) document, then lint it against the guidelines.

Owns the handler: arguments, the order of the checks and the result. The structural check lives in
``oas_structure``, the guideline rules in ``oas_rules``. A document is valid when it has no structural
error and no error-severity rule finding (with ``--strict``, warnings count as errors).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from oas_rules import PROPERTY_CASES, RULE_SETS, RULES, Context, select
from oas_structure import Finding, check_document, finding

from betty_mcp.kit.skillkit import SkillError, json_arg, load_document, parser, run, workspace_path

argparser = parser("Validate an OpenAPI document and lint it against API design guidelines.")
argparser.add_argument("spec_path", help="OpenAPI/Swagger document (YAML or JSON) inside the workspace")
argparser.add_argument("--rule_set", choices=RULE_SETS, default="recommended")
argparser.add_argument("--disabled_rules", type=json_arg, default=[], help="JSON array of rule ids")
argparser.add_argument("--property_case", choices=sorted(PROPERTY_CASES), default="camel")
argparser.add_argument("--strict", action="store_true", help="warnings count as errors")


def disabled_rules(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SkillError(f"disabled_rules must be an array of rule ids, got {value!r}")
    unknown = [v for v in value if v not in RULES]
    if unknown:
        raise SkillError(
            f"disabled_rules names unknown rule(s) {', '.join(repr(u) for u in unknown)}; "
            f"known rules: {', '.join(RULES)} (structural checks cannot be disabled)",
            code="unknown_rule",
        )
    return value


def string_keys(node: Any) -> Any:
    """YAML reads ``200:`` as an integer key; OpenAPI means the text ``"200"``."""
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, str) else k: string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [string_keys(v) for v in node]
    return node


def lint(doc: dict[str, Any], version: str, args: argparse.Namespace, rules: list[Any]) -> list[Finding]:
    ctx = Context(doc, version, args.property_case)
    found = []
    for rule in rules:
        try:
            found += [finding(rule.id, path, message, rule.severity) for path, message in rule.check(ctx)]
        except Exception as exc:  # a rule tripping over a malformed document must not hide the others
            message = f"rule could not run on this document: {type(exc).__name__}: {exc}"
            found.append(finding(rule.id, "", message))
    return found


def result(
    args: argparse.Namespace, version: str, found: list[Finding], checked: list[str]
) -> dict[str, Any]:
    if args.strict:
        found = [{**f, "severity": "error"} if f["severity"] == "warning" else f for f in found]
    errors = [f for f in found if f["severity"] == "error"]
    warnings = [f for f in found if f["severity"] == "warning"]
    notes = [f for f in found if f["severity"] == "info"]
    valid = not errors
    payload: dict[str, Any] = {
        "valid": valid,
        "spec_version": version,
        "rule_set": args.rule_set,
        "rules_checked": checked,
        "errors": errors,
        "warnings": warnings,
        "notes": notes,
        "summary": f"{Path(args.spec_path).name}: {'valid' if valid else 'invalid'} "
        f"(OpenAPI {version}; {len(errors)} errors, {len(warnings)} warnings, {len(notes)} notes; "
        f"{len(checked)} {args.rule_set} rules{', strict' if args.strict else ''})",
    }
    return payload if valid else {"ok": False, **payload}


def handle(args: argparse.Namespace) -> dict[str, Any]:
    rules = select(args.rule_set, disabled_rules(args.disabled_rules))
    checked = [r.id for r in rules]
    try:
        doc = load_document(args.spec_path, kind="spec_path")
    except SkillError as exc:
        if exc.code != "parse_error":
            raise
        return result(args, "unknown", [finding("document-parse", "", exc.message)], checked)
    doc = string_keys(doc)
    version, found = check_document(doc, workspace_path(args.spec_path, kind="spec_path"))
    if not any(f["rule_id"] == "openapi-version" for f in found):
        found += lint(doc, version, args, rules)
    return result(args, version, found, checked)


if __name__ == "__main__":
    run(handle, argparser)
