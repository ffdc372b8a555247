"""Checking tool arguments against an input schema, and saying what is wrong in words.

One validator serves the MCP tools, ``skill_run``, the CLI and the agent runtime's vetting of
model calls, so a call is refused for the same reasons wherever it comes from.

    problems = ArgumentValidator().problems(skill.input_schema, {"spec_path": 3})
    # "argument 'spec_path': 3 is not of type 'string'"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

MAX_REPORTED = 10


class ArgumentValidator:
    """Compiles each schema once (jsonschema is imported on first use, off the start-up path)."""

    def __init__(self) -> None:
        # Keyed by id(); the cache holds the schema itself, so an id is never reused while cached.
        self._compiled: dict[int, tuple[dict[str, Any], Validator]] = {}

    def _validator(self, schema: dict[str, Any]) -> Validator:
        cached = self._compiled.get(id(schema))
        if cached is None:
            from jsonschema import Draft202012Validator

            cached = self._compiled[id(schema)] = (schema, Draft202012Validator(schema))
        return cached[1]

    @staticmethod
    def warm_up() -> None:
        """Import jsonschema and run one validation (its lazy parts load then), ahead of the first call."""
        from jsonschema import Draft202012Validator

        schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
        list(Draft202012Validator(schema).iter_errors({"a": 1}))

    def forget(self) -> None:
        """Drop compiled schemas (after a reload replaced them)."""
        self._compiled = {}

    def problems(self, schema: dict[str, Any], arguments: Any) -> str | None:
        """A person-readable list of what is wrong with ``arguments``, or None when they are valid."""
        errors = sorted(self._validator(schema).iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return None
        return "; ".join(describe_argument_error(e, schema) for e in errors[:MAX_REPORTED])


def describe_argument_error(error: Any, schema: dict[str, Any]) -> str:
    """One jsonschema error about tool arguments, said for a person: missing, unknown, or wrong."""
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        prefix = f"in '{where}': " if where else ""
        return f"{prefix}missing required argument '{missing}'"
    if error.validator == "additionalProperties" and not where:
        accepted = ", ".join(schema.get("properties", {})) or "none"
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return f"unknown argument(s) {', '.join(repr(e) for e in extra)}; accepted: {accepted}"
    if error.validator == "type" and not where:
        return f"arguments must be an object, got {type(error.instance).__name__}"
    return f"argument '{where}': {error.message}" if where else error.message
