#!/usr/bin/env python3
"""workflow.run: run a Betty workflow's skill steps in order through betty-mcp's skill runner.

The workflow is checked first (the same checks as workflow.validate); nothing runs if it is
invalid. Each step then runs with the serving process's settings, its ``${steps.<id>.<field>}``
and ``${inputs.<name>}`` references replaced by earlier results and the given inputs. With
fail_fast the first failure stops the workflow; without it, steps needing the result of a
failed (or skipped) step are skipped and the others still run.

``BETTY_WORKFLOW_STACK`` lists the workflow files running above this call, so a workflow
that (directly or not) runs itself is refused instead of recursing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from betty_mcp.kit.skillkit import SkillError, json_arg, run
from betty_mcp.kit.skillkit import parser as make_parser

if TYPE_CHECKING:
    from betty_mcp.core.catalog import Catalog
    from betty_mcp.core.config import Settings
    from betty_mcp.kit.workflows import Workflow, WorkflowStep
    from betty_mcp.run.runner import SkillRunner

STACK_ENV = "BETTY_WORKFLOW_STACK"
MAX_STEP_ERRORS = 20

parser = make_parser("Run a Betty workflow's steps in order, passing results between them.")
parser.add_argument("workflow_path", help="the workflow file, relative to the workspace")
parser.add_argument(
    "--fail_fast",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="override the workflow's fail_fast",
)
parser.add_argument("--inputs", type=json_arg, default=None, help="JSON object: values for ${inputs.<name>}")


def handle(args: argparse.Namespace) -> dict[str, Any]:
    import anyio

    from betty_mcp.core.catalog import load_catalog
    from betty_mcp.core.config import settings_from_env
    from betty_mcp.kit.workflows import check_workflow

    inputs = {} if args.inputs is None else args.inputs
    if not isinstance(inputs, dict):
        raise SkillError(
            f"inputs must be a JSON object (name: value), not a {type(inputs).__name__}", code="bad_arguments"
        )
    settings = settings_from_env()
    catalog = load_catalog(settings)
    report = check_workflow(args.workflow_path, catalog, settings, inputs)
    warnings = [w.as_dict() for w in report.warnings]
    if report.workflow is None or report.errors:
        return {
            "ok": False,
            "workflow": report.name,
            "errors": [e.as_dict() for e in report.errors],
            "warnings": warnings,
            "steps": [],
            "completed": 0,
            "failed": 0,
            "skipped": 0,
        }
    _enter(report.path)
    fail_fast = report.workflow.fail_fast if args.fail_fast is None else args.fail_fast
    records = anyio.run(_execute, report.workflow, catalog, settings, inputs, fail_fast)
    payload = {
        "workflow": report.name,
        "fail_fast": fail_fast,
        "steps": records,
        **{
            key: sum(r["status"] == status for r in records)
            for key, status in (("completed", "success"), ("failed", "failed"), ("skipped", "skipped"))
        },
        "warnings": warnings,
    }
    failed = [r for r in records if r["status"] == "failed"]
    if not failed:
        return payload
    errors = [
        {
            "step": r["id"],
            "code": "step_failed",
            "message": f"step '{r['id']}' failed: "
            + "; ".join(str(e.get("message")) for e in r["errors"][:3]),
        }
        for r in failed
    ]
    return {"ok": False, "errors": errors, **payload}


def _enter(path: Path) -> None:
    """Refuse a workflow already running above this call; otherwise record it for nested calls."""
    stack = [p for p in os.environ.get(STACK_ENV, "").split(os.pathsep) if p]
    if str(path) in stack:
        chain = " -> ".join([*stack[stack.index(str(path)) :], str(path)])
        raise SkillError(f"workflow {path} runs itself (cycle: {chain})", code="workflow_cycle")
    os.environ[STACK_ENV] = os.pathsep.join([*stack, str(path)])


async def _execute(
    workflow: Workflow, catalog: Catalog, settings: Settings, inputs: dict[str, Any], fail_fast: bool
) -> list[dict[str, Any]]:
    from betty_mcp.kit.workflows import step_dependencies
    from betty_mcp.run.runner import SkillRunner

    runner = SkillRunner(settings)
    # Every step's result shares the room one tool result has; the rest stays in the run folder.
    budget = max(1_000, (settings.limits.max_result_chars - 4_000) // len(workflow.steps))
    results: dict[str, dict[str, Any]] = {}
    unusable: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    stopped_by: str | None = None
    for step in workflow.steps:
        if stopped_by is not None:
            records.append(_skipped(step, f"fail_fast stopped the workflow after step '{stopped_by}' failed"))
            continue
        needed = next((d for d in step_dependencies(step) if d in unusable), None)
        if needed is not None:
            records.append(_skipped(step, f"it uses the result of step '{needed}', which {unusable[needed]}"))
            unusable[step.id] = "was skipped"
            continue
        structured, duration_ms = await _run_step(step, catalog, runner, results, inputs)
        if structured["ok"]:
            results[step.id] = structured
        else:
            unusable[step.id] = "failed"
            if fail_fast:
                stopped_by = step.id
        records.append(_record(step, structured, duration_ms, budget))
    return records


async def _run_step(
    step: WorkflowStep, catalog: Catalog, runner: SkillRunner, results: dict[str, Any], inputs: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """The step's normalised result and how long its skill ran (0 when it never started)."""
    from betty_mcp.kit.workflows import ReferenceProblem, argument_problems, substitute

    if step.skill is None:
        return _failure(
            "agent_step_unsupported",
            f"step runs agent '{step.agent}': agent steps are not "
            "supported by workflow.run yet; run the agent on its own",
        ), 0.0
    skill = catalog.skills[step.skill]
    try:
        arguments = substitute(step.arguments, results, inputs)
    except ReferenceProblem as exc:
        return _failure("bad_reference", str(exc)), 0.0
    problems = argument_problems(skill.input_schema, arguments)
    if problems:
        return _failure("invalid_arguments", f"{skill.name}, after substitution: {'; '.join(problems)}"), 0.0
    result = await runner.run(skill, arguments)
    return result.structured, result.duration_ms


def _failure(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "status": "failed", "errors": [{"code": code, "message": message}]}


def _base(step: WorkflowStep) -> dict[str, Any]:
    return {"id": step.id, "skill": step.skill, **({"agent": step.agent} if step.agent is not None else {})}


def _record(
    step: WorkflowStep, structured: dict[str, Any], duration_ms: float, budget: int
) -> dict[str, Any]:
    result = {k: v for k, v in structured.items() if k != "errors"}
    text = json.dumps(result, ensure_ascii=False, default=str)
    if len(text) > budget:
        result = {"truncated": True, "output_chars": len(text), "preview": text[:budget]}
    ok = bool(structured["ok"])
    return {
        **_base(step),
        "ok": ok,
        "status": "success" if ok else "failed",
        "duration_ms": round(duration_ms, 1),
        "result": result,
        "errors": [] if ok else structured.get("errors", [])[:MAX_STEP_ERRORS],
    }


def _skipped(step: WorkflowStep, reason: str) -> dict[str, Any]:
    return {
        **_base(step),
        "ok": False,
        "status": "skipped",
        "duration_ms": 0.0,
        "result": None,
        "errors": [{"code": "skipped", "message": f"not run: {reason}"}],
    }


if __name__ == "__main__":
    run(handle, parser)
