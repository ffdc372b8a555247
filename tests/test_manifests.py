"""Manifests and the catalog: every real Betty variant accepted, broken ones named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from betty_mcp.core.catalog import load_catalog
from betty_mcp.core.config import load_settings
from betty_mcp.core.errors import ManifestError
from betty_mcp.core.manifests import AgentManifest, SkillManifest, load_skill_manifest, parse_manifest


def skill(data: dict) -> SkillManifest:
    return parse_manifest(
        SkillManifest, {"name": "x.y", "entrypoints": [{"handler": "h.py"}], **data}, "skill.yaml"
    )


def write_skill(root: Path, folder: str, text: str, handler: str | None = "h.py") -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "skill.yaml").write_text(text)
    if handler:
        (path / handler).write_text("print('{}')\n")
    return path


def test_dict_inputs_keep_types_required_defaults_and_options() -> None:
    m = skill(
        {
            "inputs": [
                {"name": "spec_path", "type": "string", "required": True, "description": "The spec"},
                {"name": "ratio", "type": "float", "default": 0.5},
                {"name": "mode", "type": "string", "options": ["fast", "full"]},
            ]
        }
    )
    assert [(p.name, p.type, p.required, p.default, p.enum) for p in m.params] == [
        ("spec_path", "string", True, None, None),
        ("ratio", "number", False, 0.5, None),
        ("mode", "string", False, None, ["fast", "full"]),
    ]
    assert m.params[0].is_path and not m.params[1].is_path


def test_string_inputs_of_every_real_shape() -> None:
    m = skill(
        {
            "inputs": [
                "manifest_path",
                "schema_path (optional)",
                "epic_file (string, required): Path to the epic",
                "input_data (string) - Test input data",
                "count (integer, optional): How many",
            ]
        }
    )
    assert [(p.name, p.type, p.required, p.description) for p in m.params] == [
        ("manifest_path", "string", True, ""),
        ("schema_path", "string", False, ""),
        ("epic_file", "string", True, "Path to the epic"),
        ("input_data", "string", True, "Test input data"),
        ("count", "integer", False, "How many"),
    ]


def test_entrypoint_parameters_are_the_most_precise_description() -> None:
    m = skill(
        {
            "inputs": ["old_input"],
            "entrypoints": [
                {
                    "command": "/x/y",
                    "handler": "h.py",
                    "runtime": "python",
                    "parameters": [{"name": "level", "type": "integer", "required": True}],
                }
            ],
        }
    )
    assert [p.name for p in m.params] == ["level"]


def test_parameters_returns_execution_and_enum_values() -> None:
    m = parse_manifest(
        SkillManifest,
        {
            "name": "gen.report",
            "parameters": [{"name": "format", "type": "enum", "values": ["md", "html"], "required": True}],
            "returns": [{"name": "report", "type": "string"}],
            "execution": {"type": "script", "entry_point": "report.py", "runtime": "python3"},
        },
        "skill.yaml",
    )
    assert m.handler == "report.py" and m.runtime == "python3"
    assert m.params[0].json_schema() == {"type": "string", "enum": ["md", "html"]}
    assert [o.name for o in m.typed_outputs] == ["report"]


def test_odd_but_real_fields_are_accepted() -> None:
    m = skill(
        {
            "version": 1.0,
            "outputs": ["validation_result.json", {"name": "x", "type": "application/json"}],
            "permissions": ["filesystem:read", {"network": "http"}],
            "artifact_metadata": {"produces": []},
        }
    )
    assert m.version == "1.0"
    assert [o.name for o in m.outputs] == ["validation_result.json", "x"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"inputs": [{"name": "x", "type": "blob"}]}, "skill.yaml: inputs.0: unknown type 'blob'"),
        ({"inputs": "spec_path"}, "skill.yaml: inputs: Input should be a valid list"),
        (
            {"status": "retired"},
            "skill.yaml: status: Input should be 'draft', 'active', 'deprecated' or 'archived'",
        ),
        ({"inputs": [{"type": "string"}]}, "skill.yaml: inputs.0.name: Field required"),
        (
            {"mcp": {"arguments": "telepathy"}},
            "skill.yaml: mcp.arguments: Input should be 'betty', 'json-argv'",
        ),
    ],
)
def test_broken_skill_manifests_name_the_field_and_problem(data: dict, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        skill(data)
    assert message in str(caught.value)


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write_skill(tmp_path, "a.b", "name: a.b\ninputs: [oops\n") / "skill.yaml"
    with pytest.raises(ManifestError, match=r"skill.yaml: invalid YAML at line 3, column 1"):
        load_skill_manifest(path)


def test_agent_manifest_with_llm_config_and_simple_preference() -> None:
    agent = parse_manifest(
        AgentManifest,
        {
            "name": "api.designer",
            "version": "0.1.0",
            "description": "d",
            "capabilities": ["design"],
            "skills_available": ["api.define"],
            "reasoning_mode": "iterative",
            "status": "active",
            "context_requirements": {"service": "string"},
            "error_handling": {"max_retries": 2, "on_x_failure": "retry"},
            "llm_config": {
                "primary_provider": "openai",
                "primary_model": "gpt-4",
                "reasoning_budget": "high",
            },
            "llm_preference": "local",
            "output": {"success": ["spec"], "failure": ["errors"]},
        },
        "agent.yaml",
    )
    assert agent.llm_config.primary_model == "gpt-4" and agent.error_handling.max_retries == 2
    with pytest.raises(ManifestError, match=r"agent\.yaml: reasoning_mode"):
        parse_manifest(AgentManifest, {"name": "a", "reasoning_mode": "vibes"}, "agent.yaml")


def test_catalog_reports_broken_duplicate_and_colliding_skills_without_stopping(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write_skill(one, "a.b", "name: a.b\ndescription: first\nentrypoints: [{handler: h.py}]\n")
    write_skill(one, "a_b", "name: a_b\ndescription: collides\nentrypoints: [{handler: h.py}]\n")
    write_skill(one, "bad", "name: bad\ninputs: {\n")
    write_skill(one, "nohandler", "name: nohandler\nentrypoints: [{handler: missing.py}]\n", handler=None)
    write_skill(two, "a.b", "name: a.b\ndescription: shadowed\nentrypoints: [{handler: h.py}]\n")
    long_name = "a" + ".very" * 12
    write_skill(one, long_name, f"name: {long_name}\nentrypoints: [{{handler: h.py}}]\n")
    (tmp_path / "agents" / "x").mkdir(parents=True)
    (tmp_path / "agents" / "x" / "agent.yaml").write_text("name: x\nskills_available: [a.b, no.such]\n")
    settings = load_settings(
        None, workspace=tmp_path, skills_dirs=[one, two], agents_dirs=[tmp_path / "agents"], bundled=False
    )
    catalog = load_catalog(settings)
    assert set(catalog.skills) == {"a.b", "a_b", long_name}
    assert catalog.skills["a.b"].manifest.description == "first"
    assert list(catalog.tools) == ["a_b"] and catalog.tools["a_b"].name == "a.b", "first come keeps the tool"
    problems = "\n".join(str(p) for p in catalog.problems)
    assert "'a_b' and 'a.b' both map to tool name 'a_b'" in problems
    assert "bad/skill.yaml" in problems and "invalid YAML" in problems
    assert "handler 'missing.py' not found" in problems
    assert "skill 'a.b' is also defined in" in problems and "the first one is kept" in problems
    tool = long_name.replace(".", "_")
    assert f"tool name '{tool}' has {len(tool)} characters, over hosts' limit" in problems
    assert "agent 'x' cannot use: no.such (no such skill in the catalog)" in problems


def test_statuses_and_globs_choose_which_skills_get_tools(tmp_path: Path) -> None:
    for name, status in [
        ("api.one", "active"),
        ("api.two", "active"),
        ("doc.x", "active"),
        ("old.y", "deprecated"),
    ]:
        write_skill(
            tmp_path / "s", name, f"name: {name}\nstatus: {status}\nentrypoints: [{{handler: h.py}}]\n"
        )
    settings = load_settings(
        None,
        workspace=tmp_path,
        skills_dirs=[tmp_path / "s"],
        bundled=False,
        include=["api.*", "old.*"],
        exclude=["api.two"],
    )
    assert set(load_catalog(settings).tools) == {"api_one"}
    settings = load_settings(
        None,
        workspace=tmp_path,
        skills_dirs=[tmp_path / "s"],
        bundled=False,
        statuses=["active", "deprecated"],
    )
    assert set(load_catalog(settings).tools) == {"api_one", "api_two", "doc_x", "old_y"}


def test_betty_home_checkout_runs_with_its_own_conventions(tmp_path: Path) -> None:
    """A Betty checkout's handler imports the checkout's `betty` package and sees BETTY_HOME and its cwd."""
    import anyio

    from betty_mcp.services import Services

    home = tmp_path / "betty"
    (home / "betty").mkdir(parents=True)
    (home / "betty" / "__init__.py").write_text("GREETING = 'from the betty package'\n")
    write_skill(
        home / "skills",
        "hello.world",
        (
            "name: hello.world\nversion: 0.1.0\ndescription: hi\nstatus: active\n"
            "inputs:\n  - who (string, required): who\n"
            "entrypoints:\n  - command: /hello\n    handler: hello_world.py\n    runtime: python\n"
        ),
        handler=None,
    )
    (home / "skills" / "hello.world" / "hello_world.py").write_text(
        "import json, os, sys\nfrom betty import GREETING\n"
        "print('log line first')\n"
        "print(json.dumps({'ok': True, 'status': 'success', 'details': {'who': sys.argv[1],"
        " 'greeting': GREETING, 'home': os.environ['BETTY_HOME'], 'cwd': os.getcwd()}}))\n"
    )
    workspace = tmp_path / "ws"
    workspace.mkdir()
    app = Services(load_settings(None, workspace=workspace, betty_home=home, bundled=False))
    result = anyio.run(app.runner.run, app.catalog.skills["hello.world"], {"who": "ann"})
    assert result.ok, result.structured
    assert result.structured["greeting"] == "from the betty package"
    assert result.structured["home"] == str(home) and result.structured["cwd"] == str(home)
    assert app.catalog.skills["hello.world"].source == "betty-home"


def test_a_skill_without_entrypoints_finds_its_handler_by_betty_convention(tmp_path: Path) -> None:
    text = "name: data.clean\nversion: 0.1.0\ndescription: d\ninputs: [path]\n"
    write_skill(tmp_path / "skills", "data.clean", text, handler="data_clean.py")
    write_skill(tmp_path / "skills", "data.lost", text.replace("data.clean", "data.lost"), handler=None)
    settings = load_settings(None, workspace=tmp_path, skills_dirs=[tmp_path / "skills"], bundled=False)
    catalog = load_catalog(settings)
    assert catalog.skills["data.clean"].handler == tmp_path / "skills" / "data.clean" / "data_clean.py"
    assert "data.lost" not in catalog.skills
    lost = next(str(p) for p in catalog.problems if "data.lost" in p.path)
    assert "no handler: declare entrypoints[0].handler, or name it by Betty's convention" in lost


def test_flag_like_entrypoint_parameter_names_are_read_as_inputs() -> None:
    manifest = skill(
        {"entrypoints": [{"handler": "h.py", "parameters": [{"name": "--batch-size", "type": "integer"}]}]}
    )
    assert [p.name for p in manifest.params] == ["batch_size"] and not manifest.load_warnings
    broken = skill(
        {
            "inputs": [{"name": "queue", "type": "string"}],
            "entrypoints": [{"handler": "h.py", "parameters": [{"name": "q", "type": "blob"}]}],
        }
    )
    assert [p.name for p in broken.params] == ["queue"], "the unreadable part alone is left out"
    assert broken.load_warnings and "unknown type 'blob'" in broken.load_warnings[0]


def test_a_handler_that_leads_out_of_its_skill_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("print('{}')\n")
    skills = tmp_path / "skills"
    write_skill(skills, "t.escape", "name: t.escape\nentrypoints:\n  - handler: h.py\n", handler=None)
    (skills / "t.escape" / "h.py").symlink_to(outside)
    write_skill(skills, "t.inside", "name: t.inside\nentrypoints:\n  - handler: h.py\n")
    (skills / "t.linked").symlink_to(skills / "t.inside", target_is_directory=True)  # a linked folder is fine
    catalog = load_catalog(load_settings(workspace=tmp_path, skills_dirs=[skills], bundled=False))
    assert "t.escape" not in catalog.skills and "t.inside" in catalog.skills
    assert any("outside the skill's folder" in str(p) and "t.escape" in p.path for p in catalog.problems)
