"""workflow.validate and workflow.run: direct handler calls, the shared module, and over MCP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from betty_mcp.core.config import Settings
from betty_mcp.kit.workflows import ReferenceProblem, substitute
from tests.conftest import FIXTURE_SKILLS, ROOT, stdio_client

VALIDATE = ROOT / "skills" / "workflow.validate" / "validate_workflow.py"
RUN = ROOT / "skills" / "workflow.run" / "run_workflow.py"

THREE_STEPS = {
    "name": "echo-chain",
    "steps": [
        {"id": "s1", "skill": "test.echo", "args": {"message": "hello", "times": 2}},
        {
            "id": "s2",
            "skill": "test.echo",
            "args": {
                "message": "${steps.s1.message}",
                "times": "${steps.s1.times}",
                "tags": ["${steps.s1.message}!"],
            },
        },
        {"skill": "test.echo", "inputs": {"message": "s2 said ${steps.s2.message} x${steps.s2.times}"}},
    ],
}


def write(workspace: Path, workflow: Any, name: str = "wf.yaml") -> str:
    text = workflow if isinstance(workflow, str) else yaml.safe_dump(workflow, sort_keys=False)
    (workspace / name).write_text(text, encoding="utf-8")
    return name


def call(
    handler: Path, workspace: Path, *argv: str, agents_dir: Path | None = None
) -> tuple[int, dict[str, Any]]:
    """Run a handler as the server does; returns (exit code, envelope)."""
    settings = Settings(
        workspace=workspace, skills_dirs=[FIXTURE_SKILLS], agents_dirs=[agents_dir] if agents_dir else []
    )
    env = {k: v for k, v in os.environ.items() if k != "BETTY_WORKFLOW_STACK"}
    env.update(BETTY_MCP_SETTINGS=settings.model_dump_json(), BETTY_WORKSPACE=str(workspace))
    proc = subprocess.run(
        [sys.executable, str(handler), *argv],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def validate(workspace: Path, workflow: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    return call(VALIDATE, workspace, write(workspace, workflow), **kw)


def messages(envelope: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(e.get("step"), e["message"]) for e in envelope["errors"]]


def by_id(envelope: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in envelope["data"]["steps"]}


def crash_chain(fail_fast: bool | None) -> dict[str, Any]:
    workflow: dict[str, Any] = {
        "name": "crash-chain",
        "steps": [
            {"id": "first", "skill": "test.echo", "args": {"message": "one"}},
            {"id": "boom", "skill": "test.crash"},
            {"id": "independent", "skill": "test.echo", "args": {"message": "three"}},
            {"id": "needs_boom", "skill": "test.echo", "args": {"message": "${steps.boom.message}"}},
            {"id": "needs_needs", "skill": "test.echo", "args": {"message": "${steps.needs_boom.message}"}},
        ],
    }
    if fail_fast is not None:
        workflow["fail_fast"] = fail_fast
    return workflow


# -- workflow.validate ------------------------------------------------------------------------


def test_validate_accepts_a_chain_and_names_steps_without_id(workspace: Path) -> None:
    code, out = validate(workspace, THREE_STEPS)
    assert code == 0 and out["ok"] is True
    data = out["data"]
    assert (data["valid"], data["steps"], data["errors"], data["workflow"]) == (True, 3, [], "echo-chain")
    assert data["warnings"] == []  # every referenced field is a declared output of test.echo


def test_validate_reports_bad_references_with_their_steps(workspace: Path) -> None:
    workflow = {
        "steps": [
            {"id": "a", "skill": "test.echo", "args": {"message": "${steps.b.message}"}},
            {"id": "b", "skill": "test.echo", "args": {"message": "${steps.ghost.message}"}},
            {"id": "c", "skill": "test.echo", "args": {"message": "${steps.c.message}"}},
            {"id": "d", "skill": "test.echo", "args": {"message": "${steps.a}", "tags": ["${steps.a.tags}"]}},
        ]
    }
    code, out = validate(workspace, workflow)
    assert code == 1 and out["ok"] is False and out["data"]["valid"] is False
    errors = messages(out)
    assert (
        "a",
        "${steps.b.message}: step 'a' (step 1) refers to step 2, which runs later; a step can only "
        "use the results of earlier steps",
    ) in errors
    assert ("b", "${steps.ghost.message}: no step has id 'ghost' (steps: a, b, c, d)") in errors
    assert any(step == "c" and "refers to itself" in m for step, m in errors)
    assert any(step == "d" and "${steps.a}: name a field of the step's result" in m for step, m in errors)
    assert len(errors) == 4
    assert any(w["code"] == "undeclared_output" and w["step"] == "d" for w in out["data"]["warnings"])


def test_validate_reports_unknown_skill_with_a_suggestion(workspace: Path) -> None:
    code, out = validate(workspace, {"steps": [{"skill": "test.ecko", "args": {"message": "x"}}]})
    assert code == 1
    assert messages(out) == [("step1", "unknown skill 'test.ecko'; did you mean 'test.echo'?")]
    assert out["errors"][0]["code"] == "unknown_skill"


def test_validate_checks_argument_types_but_not_whole_references(workspace: Path) -> None:
    workflow = {
        "steps": [
            {"id": "s1", "skill": "test.echo", "args": {"message": "hi"}},
            {"id": "s2", "skill": "test.echo", "args": {"times": "three", "colour": "red", "shout": "yes"}},
            # a whole reference may be an integer at run time; embedded text is always a string
            {
                "id": "s3",
                "skill": "test.echo",
                "args": {"message": "${steps.s1.message}", "times": "${steps.s1.times}"},
            },
            {"id": "s4", "skill": "test.echo", "args": {"message": "m", "times": "x${steps.s1.times}"}},
        ]
    }
    code, out = validate(workspace, workflow)
    assert code == 1
    errors = messages(out)
    assert ("s2", "test.echo: missing required argument 'message'") in errors
    assert ("s2", "test.echo: unknown argument(s) 'colour'; accepted: message, times, shout, tags") in errors
    assert ("s2", "test.echo: argument 'times': 'three' is not of type 'integer'") in errors
    assert ("s2", "test.echo: argument 'shout': 'yes' is not of type 'boolean'") in errors
    assert ("s4", "test.echo: argument 'times': 'x${steps.s1.times}' is not of type 'integer'") in errors
    assert not [m for step, m in errors if step == "s3"]
    assert len(errors) == 5


def test_validate_reports_yaml_errors_with_line_and_column(workspace: Path) -> None:
    text = "name: broken\nsteps:\n  - skill: test.echo\n    args: {message: [unclosed\n"
    code, out = validate(workspace, text)
    assert code == 1
    (error,) = out["errors"]
    assert error["step"] is None and error["code"] == "parse_error"
    assert error["message"].startswith("wf.yaml: invalid YAML at line 5, column 1:")


@pytest.mark.parametrize(
    ("workflow", "expected"),
    [
        ({"name": "x"}, [(None, "steps: Field required")]),
        ({"steps": []}, [(None, "steps: List should have at least 1 item after validation, not 0")]),
        (
            {"steps": [{"id": "ok", "skill": "test.echo", "args": {"message": "m"}}, {"args": {}}]},
            [("step2", "steps.1: a step needs exactly one of 'skill' or 'agent'")],
        ),
        (
            {"steps": [{"id": "has space", "skill": "test.crash"}]},
            [("has space", "steps.0.id: String should match pattern '^[A-Za-z_][A-Za-z0-9_-]*$'")],
        ),
        (
            {"fail_fast": "sometimes", "steps": [{"skill": "test.crash"}]},
            [(None, "fail_fast: Input should be a valid boolean, unable to interpret input")],
        ),
        (
            {"steps": [{"skill": "test.echo", "args": {"message": "m"}, "inputs": {"message": "n"}}]},
            [("step1", "steps.0: give the step's arguments as 'args' or 'inputs', not both")],
        ),
        ([1, 2], [(None, "(top level): expected a mapping with 'steps', the file is a list")]),
    ],
)
def test_validate_names_the_field_of_model_errors(
    workspace: Path, workflow: Any, expected: list[Any]
) -> None:
    code, out = validate(workspace, workflow)
    assert code == 1
    assert messages(out) == expected


def test_validate_reports_duplicate_ids_including_generated_ones(workspace: Path) -> None:
    workflow = {"steps": [{"skill": "test.crash"}, {"id": "step1", "skill": "test.crash"}]}
    code, out = validate(workspace, workflow)
    assert code == 1
    assert messages(out) == [
        ("step1", "duplicate step id 'step1' (steps 1 and 2; steps without an id are named step<N>)")
    ]


def test_validate_refuses_paths_outside_the_workspace(workspace: Path) -> None:
    (workspace.parent / "outside.yaml").write_text(yaml.safe_dump(THREE_STEPS))
    code, out = call(VALIDATE, workspace, "../outside.yaml")
    assert code == 1
    assert out["errors"][0]["code"] == "path_outside_workspace"
    assert "outside the workspace" in out["errors"][0]["message"]
    code, out = call(VALIDATE, workspace, "missing.yaml")
    assert code == 1 and out["errors"][0]["code"] == "not_found"
    # a step argument naming a file outside the workspace is caught before anything runs
    reads_outside = {"steps": [{"skill": "test.readfile", "args": {"file_path": "../secret.txt"}}]}
    code, out = validate(workspace, reads_outside)
    assert code == 1 and out["errors"][0]["code"] == "path_outside_workspace"
    assert "argument 'file_path': '../secret.txt' resolves to" in out["errors"][0]["message"]


def test_validate_lists_inputs_and_warns_on_unknown_fields(workspace: Path) -> None:
    workflow = {
        "name": "w",
        "owner": "me",
        "steps": [
            {"skill": "test.echo", "args": {"message": "${inputs.greeting}, ${env.USER}"}, "retries": 3},
        ],
    }
    code, out = validate(workspace, workflow)
    assert code == 0
    assert out["data"]["inputs"] == ["greeting"]
    assert [(w["step"], w["message"]) for w in out["data"]["warnings"]] == [
        (None, "unknown field 'owner' is ignored"),
        ("step1", "unknown field 'retries' is ignored"),
        (
            "step1",
            "'${env.USER}' is not a workflow reference (${steps.<id>.<field>} or ${inputs.<name>}); "
            "it is passed on as text",
        ),
    ]


# -- workflow.run -----------------------------------------------------------------------------


def test_run_passes_results_between_steps(workspace: Path) -> None:
    code, out = call(RUN, workspace, write(workspace, THREE_STEPS))
    assert code == 0 and out["ok"] is True
    data = out["data"]
    assert (data["completed"], data["failed"], data["skipped"]) == (3, 0, 0)
    steps = by_id(out)
    assert list(steps) == ["s1", "s2", "step3"]
    assert steps["s2"]["result"]["message"] == "hello"
    assert steps["s2"]["result"]["times"] == 2  # a whole reference keeps the integer
    assert steps["s2"]["result"]["tags"] == ["hello!"]
    assert steps["step3"]["result"]["message"] == "s2 said hello x2"
    assert all(s["status"] == "success" and s["errors"] == [] for s in steps.values())
    assert all(s["duration_ms"] > 0 for s in steps.values())


def test_run_with_fail_fast_stops_at_the_first_failure(workspace: Path) -> None:
    code, out = call(RUN, workspace, write(workspace, crash_chain(None)))
    assert code == 1 and out["ok"] is False
    steps = by_id(out)
    assert [s["status"] for s in steps.values()] == ["success", "failed", "skipped", "skipped", "skipped"]
    assert steps["boom"]["errors"][0]["message"] == (
        "skill 'test.crash' failed with exit code 1: RuntimeError: boom: the handler crashed"
    )
    assert steps["independent"]["errors"][0]["message"] == (
        "not run: fail_fast stopped the workflow after step 'boom' failed"
    )
    data = out["data"]
    assert (data["completed"], data["failed"], data["skipped"]) == (1, 1, 3)
    assert [e["step"] for e in out["errors"]] == ["boom"]
    assert out["errors"][0]["message"].startswith("step 'boom' failed: ")


def test_run_without_fail_fast_skips_only_dependents(workspace: Path) -> None:
    code, out = call(RUN, workspace, write(workspace, crash_chain(False)))
    assert code == 1 and out["ok"] is False
    steps = by_id(out)
    assert {k: s["status"] for k, s in steps.items()} == {
        "first": "success",
        "boom": "failed",
        "independent": "success",
        "needs_boom": "skipped",
        "needs_needs": "skipped",
    }
    assert steps["independent"]["result"]["message"] == "three"
    assert steps["needs_boom"]["errors"][0]["message"] == (
        "not run: it uses the result of step 'boom', which failed"
    )
    assert steps["needs_needs"]["errors"][0]["message"] == (
        "not run: it uses the result of step 'needs_boom', which was skipped"
    )
    assert (out["data"]["completed"], out["data"]["failed"], out["data"]["skipped"]) == (2, 1, 2)


@pytest.mark.parametrize(
    ("in_file", "flag", "statuses"),
    [
        (True, "--no-fail_fast", ["success", "failed", "success", "skipped", "skipped"]),
        (False, "--fail_fast", ["success", "failed", "skipped", "skipped", "skipped"]),
    ],
)
def test_run_fail_fast_argument_overrides_the_file(
    workspace: Path, in_file: bool, flag: str, statuses: list[str]
) -> None:
    code, out = call(RUN, workspace, write(workspace, crash_chain(in_file)), flag)
    assert code == 1
    assert out["data"]["fail_fast"] is (not in_file)
    assert [s["status"] for s in out["data"]["steps"]] == statuses


def test_run_fails_a_step_whose_reference_names_a_missing_field(workspace: Path) -> None:
    workflow = {
        "steps": [
            {"id": "s1", "skill": "test.echo", "args": {"message": "hi"}},
            {"id": "s2", "skill": "test.echo", "args": {"message": "${steps.s1.nope}"}},
            {"id": "s3", "skill": "test.echo", "args": {"message": "${steps.s1.tags.5}"}},
        ],
        "fail_fast": False,
    }
    code, out = call(RUN, workspace, write(workspace, workflow))
    assert code == 1
    steps = by_id(out)
    assert steps["s2"]["status"] == "failed" and steps["s2"]["duration_ms"] == 0
    assert steps["s2"]["errors"] == [
        {
            "code": "bad_reference",
            "message": "${steps.s1.nope}: the result of step 's1' has no field 'nope' (fields: ok, status, "
            "message, times, tags)",
        }
    ]
    assert steps["s3"]["errors"][0]["message"] == (
        "${steps.s1.tags.5}: the result of step 's1'.tags has no field '5' (a list of 0 item(s))"
    )


def test_run_checks_types_after_substitution(workspace: Path) -> None:
    workflow = {
        "steps": [
            {"id": "s1", "skill": "test.echo", "args": {"message": "hi"}},
            {"id": "s2", "skill": "test.echo", "args": {"message": "${steps.s1.times}"}},
        ]
    }
    code, out = call(RUN, workspace, write(workspace, workflow))
    assert code == 1
    assert by_id(out)["s2"]["errors"][0] == {
        "code": "invalid_arguments",
        "message": "test.echo, after substitution: argument 'message': 1 is not of type 'string'",
    }


def test_run_uses_inputs_and_refuses_missing_ones_before_running(workspace: Path) -> None:
    args = {"message": "${inputs.who}", "times": "${inputs.n}"}
    workflow = {"steps": [{"skill": "test.echo", "args": args}]}
    name = write(workspace, workflow)
    code, out = call(RUN, workspace, name, "--inputs", json.dumps({"who": "Ada", "n": 3}))
    assert code == 0
    assert out["data"]["steps"][0]["result"]["message"] == "Ada"
    assert out["data"]["steps"][0]["result"]["times"] == 3
    code, out = call(RUN, workspace, name, "--inputs", json.dumps({"who": "Ada"}))
    assert code == 1 and out["data"]["steps"] == []
    assert messages(out) == [("step1", "${inputs.n}: no input 'n' was given (given: who)")]
    code, out = call(RUN, workspace, name, "--inputs", "[1]")
    assert code == 1
    assert out["errors"][0]["message"] == "inputs must be a JSON object (name: value), not a list"


def test_run_refuses_an_invalid_workflow_without_running_anything(workspace: Path) -> None:
    marker = workspace / "ran.txt"
    workflow = {
        "steps": [
            {"skill": "test.readfile", "args": {"file_path": "ran.txt"}},
            {"skill": "no.such.skill"},
        ]
    }
    code, out = call(RUN, workspace, write(workspace, workflow))
    assert code == 1 and not marker.exists()
    assert out["data"] == {
        "workflow": "wf",
        "warnings": [],
        "steps": [],
        "completed": 0,
        "failed": 0,
        "skipped": 0,
    }
    assert messages(out) == [("step2", "unknown skill 'no.such.skill'; see skills_list")]


def test_run_reports_agent_steps_as_not_runnable_yet(workspace: Path, tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    (agents / "demo.designer").mkdir(parents=True)
    (agents / "demo.designer" / "agent.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "demo.designer",
                "version": "0.1.0",
                "description": "Designs APIs",
                "capabilities": ["design"],
                "skills_available": ["test.echo"],
                "reasoning_mode": "oneshot",
                "status": "active",
            }
        )
    )
    workflow = {
        "fail_fast": False,
        "steps": [
            {"id": "design", "agent": "demo.designer", "input": "Design an orders API"},
            {"id": "after", "skill": "test.echo", "args": {"message": "still runs"}},
        ],
    }
    name = write(workspace, workflow)
    code, out = call(VALIDATE, workspace, name, agents_dir=agents)
    assert code == 0 and [w["code"] for w in out["data"]["warnings"]] == ["agent_step_unsupported"]
    code, out = call(RUN, workspace, name, agents_dir=agents)
    assert code == 1
    steps = by_id(out)
    assert steps["design"]["status"] == "failed" and steps["design"]["agent"] == "demo.designer"
    assert steps["design"]["skill"] is None
    assert "agent steps are not supported by workflow.run yet" in steps["design"]["errors"][0]["message"]
    assert steps["after"]["status"] == "success"
    code, out = call(VALIDATE, workspace, name)  # no agents folder: the agent is unknown
    assert code == 1 and messages(out) == [("design", "unknown agent 'demo.designer'")]


def test_run_refuses_a_workflow_that_runs_itself(workspace: Path) -> None:
    workflow = {"steps": [{"id": "again", "skill": "workflow.run", "args": {"workflow_path": "wf.yaml"}}]}
    code, out = call(RUN, workspace, write(workspace, workflow))
    assert code == 1
    (error,) = by_id(out)["again"]["errors"]
    assert error["code"] == "workflow_cycle"
    path = workspace / "wf.yaml"
    assert error["message"] == f"workflow {path} runs itself (cycle: {path} -> {path})"


def test_run_cuts_large_step_results_and_says_why_a_reference_fails(workspace: Path) -> None:
    workflow = {
        "fail_fast": False,
        "steps": [
            {"id": "big", "skill": "test.big", "args": {"megabytes": 1}},
            {"id": "use", "skill": "test.echo", "args": {"message": "${steps.big.rows.0}"}},
        ],
    }
    code, out = call(RUN, workspace, write(workspace, workflow))
    assert code == 1
    steps = by_id(out)
    assert steps["big"]["status"] == "success" and steps["big"]["result"]["truncated"] is True
    assert len(json.dumps(out)) < Settings().limits.max_result_chars
    message = steps["use"]["errors"][0]["message"]
    assert "has no field 'rows'" in message
    assert "its result was too large and was cut (full output: " in message


# -- the shared module ------------------------------------------------------------------------


def test_substitute_keeps_types_for_whole_references_and_stringifies_embedded_ones() -> None:
    results = {"s1": {"ok": True, "n": 3, "obj": {"a": [1, {"b": True}]}}}
    value = {
        "n": "${steps.s1.n}",
        "deep": "${steps.s1.obj.a.1.b}",
        "text": "n=${steps.s1.n} obj=${steps.s1.obj}",
        "list": ["${inputs.x}", "${other}"],
        "flag": False,
    }
    assert substitute(value, results, {"x": {"k": 1}}) == {
        "n": 3,
        "deep": True,
        "text": 'n=3 obj={"a": [1, {"b": true}]}',
        "list": [{"k": 1}, "${other}"],
        "flag": False,
    }
    with pytest.raises(ReferenceProblem, match=r"step 'gone' has no result"):
        substitute("${steps.gone.x}", results, {})


# -- over MCP ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_workflow_tools_over_mcp(workspace: Path) -> None:
    good = write(
        workspace,
        {
            "name": "greet",
            "steps": [
                {"id": "hello", "skill": "test.echo", "args": {"message": "${inputs.who}", "shout": True}},
                {
                    "id": "again",
                    "skill": "test.echo",
                    "args": {"message": "${steps.hello.message}?", "times": 2},
                },
            ],
        },
        "good.yaml",
    )
    bad_steps = [{"skill": "test.echo", "args": {"message": "${steps.later.x}"}}]
    bad = write(workspace, {"steps": bad_steps}, "bad.yaml")
    async with stdio_client(workspace) as client:
        valid = await client.call_tool("workflow_validate", {"workflow_path": good})
        invalid = await client.call_tool("workflow_validate", {"workflow_path": bad})
        ran = await client.call_tool("workflow_run", {"workflow_path": good, "inputs": {"who": "ada"}})
        outside = await client.call_tool("workflow_run", {"workflow_path": "../elsewhere.yaml"})
    assert not valid.is_error
    assert valid.structured_content["valid"] is True and valid.structured_content["inputs"] == ["who"]
    assert invalid.is_error and invalid.structured_content["valid"] is False
    assert invalid.structured_content["errors"][0]["message"] == (
        "${steps.later.x}: no step has id 'later' (steps: step1)"
    )
    assert not ran.is_error
    content = ran.structured_content
    assert content["completed"] == 2 and [s["status"] for s in content["steps"]] == ["success", "success"]
    assert content["steps"][1]["result"]["message"] == "ADA?"
    assert outside.is_error and "outside the workspace" in outside.content[0].text
