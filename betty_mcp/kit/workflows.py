"""Betty workflows: the model, loading with static checks, and reference substitution.

Shared by the bundled ``workflow.validate`` and ``workflow.run`` skills (which own the
execution loop). A workflow is YAML::

    name: orders-api
    fail_fast: true
    steps:
      - id: define
        skill: api.define
        args: {service_name: orders}
      - skill: api.validate                      # no id: named "step2" (its 1-based position)
        args: {spec_path: "${steps.define.openapi_path}"}
      - agent: api.designer                      # accepted, but not run by workflow.run yet
        input: Review the orders API

A step's ``args`` (or ``inputs``) may use ``${steps.<id>.<field>[.<field>...]}`` - a dotted path
into an earlier step's normalised result - and ``${inputs.<name>}`` - a value given to
workflow.run. A string that is exactly one reference keeps the value's type; a reference
embedded in longer text is replaced by the value as text (JSON for non-strings).

    report = check_workflow("workflows/orders.yaml", catalog, settings)
    args = substitute(step.arguments, results={"define": {...}}, inputs={})
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from betty_mcp.core.arguments import describe_argument_error
from betty_mcp.core.catalog import Catalog
from betty_mcp.core.config import Settings
from betty_mcp.core.errors import ArgumentsError
from betty_mcp.kit.skillkit import SkillError, load_document, workspace_path
from betty_mcp.run.invocation import check_paths

STEP_ID = r"^[A-Za-z_][A-Za-z0-9_-]*$"
REFERENCE = re.compile(r"\$\{([^{}]*)\}")
# Schema keywords about an object's keys or an array's length: a reference inside a value
# cannot change their verdict, so their errors stand even before substitution.
_STATIC_KEYWORDS = {
    "required",
    "additionalProperties",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "minItems",
    "maxItems",
}


class ReferenceProblem(Exception):
    """A ``${...}`` reference that cannot be resolved; the message says which and why."""


class WorkflowStep(BaseModel):
    """One step: a skill with arguments, or an agent with an input (Betty's two step forms)."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(pattern=STEP_ID)
    skill: str | None = None
    agent: str | None = None
    args: dict[str, Any] | None = None
    inputs: dict[str, Any] | None = None
    input: Any = None
    description: str = ""

    @field_validator("description", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @model_validator(mode="after")
    def _one_form(self) -> WorkflowStep:
        if (self.skill is None) == (self.agent is None):
            raise ValueError("a step needs exactly one of 'skill' or 'agent'")
        if self.args is not None and self.inputs is not None:
            raise ValueError("give the step's arguments as 'args' or 'inputs', not both")
        if self.skill is not None and self.input is not None:
            raise ValueError("a skill step takes 'args' (or 'inputs'); 'input' belongs to agent steps")
        return self

    @property
    def arguments(self) -> dict[str, Any]:
        return self.args if self.args is not None else (self.inputs or {})

    @property
    def target(self) -> str:
        return f"skill '{self.skill}'" if self.skill is not None else f"agent '{self.agent}'"


class Workflow(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str | None = None
    version: str | None = None
    description: str = ""
    fail_fast: bool = True
    steps: list[WorkflowStep] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value

    @field_validator("description", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _default_ids(cls, raw: Any) -> Any:
        """Steps without an ``id`` are named ``step<N>``, N their 1-based position."""
        if isinstance(raw, dict) and isinstance(raw.get("steps"), list):
            raw = {
                **raw,
                "steps": [
                    {**s, "id": f"step{i}"} if isinstance(s, dict) and s.get("id") is None else s
                    for i, s in enumerate(raw["steps"], start=1)
                ],
            }
        return raw


@dataclass(frozen=True)
class Issue:
    message: str
    step: str | None = None
    code: str = "invalid_workflow"

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "code": self.code, "message": self.message}


@dataclass
class WorkflowReport:
    """What ``check_workflow`` found; ``workflow`` is None when the file is not a valid workflow."""

    path: Path
    workflow: Workflow | None = None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return (self.workflow.name if self.workflow else None) or self.path.stem

    def payload(self) -> dict[str, Any]:
        return {
            "workflow": self.name,
            "valid": not self.errors,
            "errors": [e.as_dict() for e in self.errors],
            "warnings": [w.as_dict() for w in self.warnings],
            "steps": len(self.workflow.steps) if self.workflow else 0,
            "inputs": self.inputs,
        }


# -- references -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    text: str  # the whole "${...}"
    namespace: str  # "steps" or "inputs"
    root: str  # the step id or the input name
    path: tuple[str, ...]  # the fields below it


def _parse_reference(match: re.Match[str]) -> Reference | None:
    """A workflow reference, or None for other ``${...}`` text; raises for a malformed one."""
    text, parts = match.group(0), match.group(1).strip().split(".")
    if parts[0] not in ("steps", "inputs"):
        return None
    if any(not p for p in parts):
        raise ReferenceProblem(f"{text}: empty name in the dotted path")
    if parts[0] == "steps" and len(parts) < 3:
        raise ReferenceProblem(f"{text}: name a field of the step's result, as in ${{steps.<id>.<field>}}")
    if len(parts) < 2:
        raise ReferenceProblem(f"{text}: name the input, as in ${{inputs.<name>}}")
    return Reference(text, parts[0], parts[1], tuple(parts[2:]))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def references(value: Any) -> list[Reference]:
    """Every workflow reference in ``value`` (strings, nested lists and mappings)."""
    found = []
    for text in _strings(value):
        for match in REFERENCE.finditer(text):
            ref = _parse_reference(match)
            if ref is not None:
                found.append(ref)
    return found


def step_dependencies(step: WorkflowStep) -> list[str]:
    """The ids of the steps whose results ``step`` uses, in order of first use."""
    return list(dict.fromkeys(r.root for r in references(step.arguments) if r.namespace == "steps"))


def _walk(value: Any, ref: Reference, owner: str) -> Any:
    current = value
    for depth, key in enumerate(ref.path):
        where = ".".join((owner, *ref.path[:depth])) if depth else owner
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            if isinstance(current, dict):
                has = f"fields: {', '.join(current) or 'none'}"
            elif isinstance(current, list):
                has = f"a list of {len(current)} item(s)"
            else:
                has = f"a {type(current).__name__}"
            message = f"{ref.text}: {where} has no field '{key}' ({has})"
            if depth == 0 and isinstance(value, dict) and value.get("truncated"):
                message += f"; its result was too large and was cut (full output: {value.get('output_file')})"
            raise ReferenceProblem(message)
    return current


def resolve(ref: Reference, results: Mapping[str, Any], inputs: Mapping[str, Any]) -> Any:
    if ref.namespace == "inputs":
        if ref.root not in inputs:
            given = ", ".join(inputs) or "none"
            raise ReferenceProblem(f"{ref.text}: no input '{ref.root}' was given (given: {given})")
        return _walk(inputs[ref.root], ref, f"input '{ref.root}'") if ref.path else inputs[ref.root]
    if ref.root not in results:
        raise ReferenceProblem(f"{ref.text}: step '{ref.root}' has no result (it has not run successfully)")
    return _walk(results[ref.root], ref, f"the result of step '{ref.root}'")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def substitute(value: Any, results: Mapping[str, Any], inputs: Mapping[str, Any]) -> Any:
    """``value`` with every reference replaced; raises ReferenceProblem naming the first bad one."""
    if isinstance(value, dict):
        return {k: substitute(v, results, inputs) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, results, inputs) for v in value]
    if not isinstance(value, str):
        return value
    whole = REFERENCE.fullmatch(value)
    if whole:
        ref = _parse_reference(whole)
        return value if ref is None else resolve(ref, results, inputs)

    def replace(match: re.Match[str]) -> str:
        ref = _parse_reference(match)
        return match.group(0) if ref is None else _as_text(resolve(ref, results, inputs))

    return REFERENCE.sub(replace, value)


def _has_reference(value: Any) -> bool:
    return any(REFERENCE.search(text) for text in _strings(value))


# -- argument checks ------------------------------------------------------------------------


def argument_problems(
    schema: dict[str, Any], arguments: dict[str, Any], *, unresolved: bool = False
) -> list[str]:
    """What is wrong with ``arguments`` for ``schema`` (JSON Schema 2020-12), one line each.

    With ``unresolved``, arguments may still hold references: a value that is one whole
    reference is not checked at all, and a value holding references only for its type.
    """
    from jsonschema import Draft202012Validator

    problems = []
    for error in sorted(Draft202012Validator(schema).iter_errors(arguments), key=lambda e: list(e.path)):
        if unresolved and _unknowable(error):
            continue
        problems.append(describe_argument_error(error, schema))
    return problems


def _unknowable(error: Any) -> bool:
    if error.validator in _STATIC_KEYWORDS:
        return False
    instance = error.instance
    if isinstance(instance, str) and REFERENCE.fullmatch(instance):
        return True
    return error.validator != "type" and _has_reference(instance)


# -- loading and static checks ----------------------------------------------------------------


def _model_issues(exc: ValidationError, data: dict[str, Any]) -> list[Issue]:
    issues = []
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    for err in exc.errors():
        loc = err["loc"]
        step = None
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[1] < len(steps):
            raw = steps[loc[1]]
            step = str(raw.get("id") or f"step{loc[1] + 1}") if isinstance(raw, dict) else f"step{loc[1] + 1}"
        where = ".".join(str(p) for p in loc) or "(top level)"
        issues.append(Issue(f"{where}: {err['msg'].removeprefix('Value error, ')}", step, "invalid_field"))
    return issues


def load_workflow(path_value: str) -> WorkflowReport:
    """Read and model a workflow file inside the workspace.

    A path outside the workspace or a missing file raises SkillError (bad input); a file that
    is not a workflow (bad YAML, wrong fields) yields a WorkflowReport with errors.
    """
    path = workspace_path(path_value, must_exist=True, kind="workflow_path")
    report = WorkflowReport(path=path)
    try:
        data = load_document(path_value, kind="workflow_path")
    except SkillError as exc:
        if exc.code != "parse_error":
            raise
        report.errors.append(Issue(exc.message, code="parse_error"))
        return report
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        report.errors.append(Issue(f"(top level): expected a mapping with 'steps', the file is {kind}"))
        return report
    try:
        report.workflow = Workflow.model_validate(data)
    except ValidationError as exc:
        report.errors.extend(_model_issues(exc, data))
        return report
    for key in report.workflow.model_extra or {}:
        report.warnings.append(Issue(f"unknown field '{key}' is ignored", code="unknown_field"))
    for step in report.workflow.steps:
        for key in step.model_extra or {}:
            report.warnings.append(Issue(f"unknown field '{key}' is ignored", step.id, "unknown_field"))
    return report


def check_workflow(
    path_value: str, catalog: Catalog, settings: Settings, inputs: Mapping[str, Any] | None = None
) -> WorkflowReport:
    """Load the workflow and check everything knowable before running it.

    ``inputs`` are workflow.run's inputs; with None (workflow.validate) ``${inputs.x}`` is
    only listed in ``WorkflowReport.inputs``, with a mapping a missing input is an error.
    """
    report = load_workflow(path_value)
    if report.workflow is None:
        return report
    positions: dict[str, int] = {}
    for index, step in enumerate(report.workflow.steps):
        if step.id in positions:
            report.errors.append(
                Issue(
                    f"duplicate step id '{step.id}' (steps {positions[step.id] + 1} and {index + 1}; steps "
                    "without an id are named step<N>)",
                    step.id,
                    "duplicate_step_id",
                )
            )
        else:
            positions[step.id] = index
    for index, step in enumerate(report.workflow.steps):
        _check_references(report, step, index, positions, catalog, inputs)
        if step.skill is not None:
            _check_skill_step(report, step, catalog, settings)
        else:
            _check_agent_step(report, step, catalog)
    return report


def _check_references(
    report: WorkflowReport,
    step: WorkflowStep,
    index: int,
    positions: dict[str, int],
    catalog: Catalog,
    inputs: Mapping[str, Any] | None,
) -> None:
    assert report.workflow is not None
    steps = report.workflow.steps
    for text in _strings(step.arguments):
        for match in REFERENCE.finditer(text):
            try:
                ref = _parse_reference(match)
            except ReferenceProblem as exc:
                report.errors.append(Issue(str(exc), step.id, "bad_reference"))
                continue
            if ref is None:
                report.warnings.append(
                    Issue(
                        f"'{match.group(0)}' is not a workflow reference (${{steps.<id>.<field>}} or "
                        "${inputs.<name>}); it is passed on as text",
                        step.id,
                        "not_a_reference",
                    )
                )
            elif ref.namespace == "inputs":
                if ref.root not in report.inputs:
                    report.inputs.append(ref.root)
                if inputs is not None and ref.root not in inputs:
                    report.errors.append(
                        Issue(
                            f"{ref.text}: no input '{ref.root}' was given "
                            f"(given: {', '.join(inputs) or 'none'})",
                            step.id,
                            "missing_input",
                        )
                    )
            elif ref.root not in positions:
                known = ", ".join(s.id for s in steps)
                report.errors.append(
                    Issue(
                        f"{ref.text}: no step has id '{ref.root}' (steps: {known})",
                        step.id,
                        "bad_reference",
                    )
                )
            elif positions[ref.root] >= index:
                later = positions[ref.root] + 1
                when = "itself" if later == index + 1 else f"step {later}, which runs later"
                report.errors.append(
                    Issue(
                        f"{ref.text}: step '{step.id}' (step {index + 1}) refers to {when}; "
                        "a step can only use "
                        "the results of earlier steps",
                        step.id,
                        "bad_reference",
                    )
                )
            else:
                _check_declared_output(report, step, ref, steps[positions[ref.root]], catalog)


def _check_declared_output(
    report: WorkflowReport, step: WorkflowStep, ref: Reference, source: WorkflowStep, catalog: Catalog
) -> None:
    """Warn when the referenced skill types its outputs (an output schema) and the field is not one."""
    skill = catalog.skills.get(source.skill or "")
    if skill is None or skill.output_schema is None:
        return
    declared = skill.output_schema["properties"]
    if ref.path[0] not in declared:
        report.warnings.append(
            Issue(
                f"{ref.text}: skill '{skill.name}' does not declare an output '{ref.path[0]}' "
                f"(declared: {', '.join(declared)}); the step fails if its result lacks it",
                step.id,
                "undeclared_output",
            )
        )


def _check_skill_step(
    report: WorkflowReport, step: WorkflowStep, catalog: Catalog, settings: Settings
) -> None:
    skill = catalog.skills.get(step.skill or "")
    if skill is None:
        close = difflib.get_close_matches(step.skill or "", list(catalog.skills), n=3, cutoff=0.8)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else "; see skills_list"
        report.errors.append(Issue(f"unknown skill '{step.skill}'{hint}", step.id, "unknown_skill"))
        return
    if skill.manifest.status not in settings.tools.statuses:
        report.errors.append(
            Issue(
                f"skill '{skill.name}' is {skill.manifest.status}; add that status to tools.statuses in "
                "betty.yaml to run it",
                step.id,
                "skill_not_runnable",
            )
        )
    for problem in argument_problems(skill.input_schema, step.arguments, unresolved=True):
        report.errors.append(Issue(f"{skill.name}: {problem}", step.id, "invalid_arguments"))
    literal = {k: v for k, v in step.arguments.items() if not _has_reference(v)}
    try:
        check_paths(skill, literal, settings)
    except ArgumentsError as exc:
        report.errors.append(Issue(f"{skill.name}: {exc}", step.id, "path_outside_workspace"))


def _check_agent_step(report: WorkflowReport, step: WorkflowStep, catalog: Catalog) -> None:
    if step.agent not in catalog.agents:
        report.errors.append(Issue(f"unknown agent '{step.agent}'", step.id, "unknown_agent"))
        return
    report.warnings.append(
        Issue(
            f"step runs agent '{step.agent}': agent steps are not run by workflow.run yet "
            "(it reports the step "
            "as failed)",
            step.id,
            "agent_step_unsupported",
        )
    )
