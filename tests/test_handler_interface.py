"""A handler's real interface (betty_mcp.run.interface) and the argv/schema built from it (run.argv).

No MCP server here: capture of every shape in tests/fixtures/handlers, build_argv against the
hand-written argv of cases.json (and that argv against the handlers themselves), schema facts, the
cache, and capture safety (stops at parse_args, kills the process group on timeout, exact env).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from betty_mcp.core.errors import ArgvError
from betty_mcp.core.handler_interface import HandlerInterface, ParserAction
from betty_mcp.core.manifests import Param, load_skill_manifest
from betty_mcp.core.rules import conventional_handler, handler_path
from betty_mcp.run import interface as iface
from betty_mcp.run.argv import (
    argv_mode,
    build_argv,
    describe,
    input_schema,
    match_action,
    mismatches,
)
from betty_mcp.run.interface import InterfaceCache, interface_for
from betty_mcp.run.interface_capture import capture
from betty_mcp.run.interface_static import read_statically

HANDLERS = Path(__file__).resolve().parent / "fixtures" / "handlers"
CASES: list[dict[str, Any]] = json.loads((HANDLERS / "cases.json").read_text(encoding="utf-8"))
SHAPES = sorted(p.name for p in HANDLERS.iterdir() if (p / "skill.yaml").is_file())
PYTHON = sys.executable
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8"}


@dataclass
class Shape:
    name: str
    folder: Path
    handler: Path
    inputs: list[Param]


def load_shape(name: str) -> Shape:
    """A shape as the server reads it: the real manifest loader, and its handler rule."""
    folder = HANDLERS / name
    manifest = load_skill_manifest(folder / "skill.yaml")
    assert manifest.name == name
    handler = handler_path(folder, manifest.handler, name)
    assert handler is not None and handler.is_file(), name
    return Shape(name, folder, handler, manifest.params)


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HandlerInterface]:
    """Every shape's interface as the server would get it (interface_for, no cache)."""
    cwd = tmp_path_factory.mktemp("capture-cwd")
    result = {
        name: interface_for(load_shape(name).handler, python=PYTHON, env=ENV, cwd=cwd) for name in SHAPES
    }
    assert not (cwd / "out").exists(), "capture ran a handler past its argument parsing"
    return result


def action(interface: HandlerInterface, dest: str) -> ParserAction:
    return next(a for a in interface.actions if a.dest == dest)


# --------------------------------------------------------------------------------------------------
# Capture


def test_corpus_has_the_shapes() -> None:
    assert len(SHAPES) >= 18
    assert {c["shape"] for c in CASES} == set(SHAPES)


def test_capture_kebab_options(captured: dict[str, HandlerInterface]) -> None:
    found = captured["shape.kebab_options"]
    assert found.source == "parser" and found.problem is None
    assert [a.dest for a in found.actions] == ["title", "output_dir", "max_items", "dry_run"]
    title, output_dir, max_items, dry_run = found.actions
    assert title.positional and title.required and title.nargs is None
    assert output_dir.option_strings == ("--output-dir",) and output_dir.default == "reports"
    assert output_dir.help == "Folder under out/ (default: reports)"  # %(default)s expanded
    assert (max_items.kind, max_items.type, max_items.default) == ("store", "int", 10)
    assert (dry_run.kind, dry_run.nargs, dry_run.default) == ("store_true", None, False)
    assert found.capture_ms is not None and found.capture_ms > 0


def test_capture_action_kinds(captured: dict[str, HandlerInterface]) -> None:
    target = action(captured["shape.required_option"], "target")
    assert target.required and target.option_strings == ("--target",)
    assert action(captured["shape.required_option"], "mode").choices == ["append", "replace"]
    assert [a.nargs for a in captured["shape.optional_positional"].actions] == [None, "?", "?"]
    duration = action(captured["shape.audit_log"], "duration_ms")
    assert (duration.nargs, duration.type, duration.required) == ("?", "int", False)
    headers = action(captured["shape.store_false_renamed"], "check_headers")
    assert (headers.kind, headers.option_strings, headers.default) == ("store_false", ("--no-headers",), True)
    color = action(captured["shape.boolean_optional"], "color")
    assert (color.kind, color.option_strings, color.default) == (
        "boolean_optional",
        ("--color", "--no-color"),
        True,
    )
    assert action(captured["shape.bool_value"], "strict").type == "str_to_bool"
    assert action(captured["shape.kebab_store_true"], "auto_version").option_strings == ("--auto-version",)
    out = action(captured["shape.dest_override"], "output_path")
    assert out.option_strings == ("-o", "--out")
    assert action(captured["shape.dest_override"], "label").option_strings == ("--name",)
    assert action(captured["shape.nargs_plus"], "words").nargs == "+"
    assert action(captured["shape.nargs_plus"], "tags").nargs == "*"
    numbers = captured["shape.typed_numbers"]  # parse_intermixed_args
    assert (action(numbers, "count").type, action(numbers, "ratio").type) == ("int", "float")
    assert action(captured["shape.json_then_log"], "count").type == "int"  # parse_known_args
    group = captured["shape.exclusive_group"]
    assert (action(group, "json").group, action(group, "yaml").group, action(group, "name").group) == (
        0,
        0,
        None,
    )
    assert group.required_groups == (0,)
    verbose = action(captured["shape.count_verbosity"], "verbose")
    assert (verbose.kind, verbose.option_strings, verbose.default) == ("count", ("-v", "--verbose"), 0)
    bundle = captured["shape.append_option"]
    assert (action(bundle, "tags").kind, action(bundle, "tags").option_strings) == ("append", ("--tag",))
    assert (action(bundle, "ext").kind, action(bundle, "ext").nargs) == ("extend", "+")
    assert [a.dest for a in captured["shape.no_inputs"].actions] == ["limit", "format", "prefix"]


@pytest.mark.parametrize("name", SHAPES)
def test_static_reading_agrees_with_capture(name: str, captured: dict[str, HandlerInterface]) -> None:
    found = captured[name]
    static = read_statically(load_shape(name).handler)
    if found.source != "parser":
        return
    assert static is not None

    def facts(a: ParserAction) -> tuple[Any, ...]:
        return (a.dest, a.option_strings, a.kind, a.nargs, a.required, a.type, a.choices, a.default, a.group)

    assert [facts(a) for a in static.actions] == [facts(a) for a in found.actions]
    assert static.required_groups == found.required_groups
    assert bool(static.unsupported) == bool(found.unsupported)


def test_subparsers_are_unsupported(captured: dict[str, HandlerInterface]) -> None:
    found = captured["shape.subparsers"]
    assert found.source == "parser"
    assert found.unsupported and found.unsupported.startswith("subcommands (argparse subparsers)")
    assert "add" in found.unsupported and "remove" in found.unsupported
    static = read_statically(load_shape("shape.subparsers").handler)
    assert static is not None and static.unsupported == "subcommands (argparse subparsers)"
    assert argv_mode(found) == "manifest"
    assert mismatches(load_shape("shape.subparsers").inputs, found)[0].startswith(
        "the handler uses subcommands"
    )


@pytest.mark.parametrize("name", ["shape.click_style", "shape.hand_parsed"])
def test_non_argparse_handlers_fall_back_to_the_manifest(
    name: str, captured: dict[str, HandlerInterface], tmp_path: Path
) -> None:
    found = captured[name]
    assert found.source == "manifest" and not found.actions and not found.json_argv
    assert found.problem and found.problem.startswith("not run:")  # never executed: it would run for real
    assert read_statically(load_shape(name).handler) is None
    # capture() itself (no gate) runs it without arguments: it exits with its usage error.
    direct = capture(load_shape(name).handler, python=PYTHON, env=ENV, cwd=tmp_path)
    assert direct.source == "manifest"
    assert direct.problem and direct.problem.startswith("exited 2 before parsing its arguments")
    assert not (tmp_path / "out").exists()


def test_json_argv_handler(captured: dict[str, HandlerInterface], tmp_path: Path) -> None:
    found = captured["shape.json_argv"]
    assert (found.source, found.json_argv, found.actions) == ("ast", True, ())
    assert found.problem == "not run: it reads one JSON object from argv[1]"
    direct = capture(load_shape("shape.json_argv").handler, python=PYTHON, env=ENV, cwd=tmp_path)
    assert direct.source == "ast" and direct.json_argv
    assert direct.problem and direct.problem.startswith("IndexError")


def test_import_failure_gives_a_problem_and_falls_back(captured: dict[str, HandlerInterface]) -> None:
    found = captured["shape.import_failure"]
    assert found.source == "ast"
    assert found.problem == "ModuleNotFoundError: No module named 'betty_shape_missing_graph_lib'"
    assert [a.dest for a in found.actions] == ["graph", "depth"]
    assert action(found, "depth").type == "int"


def test_missing_interpreter_is_a_problem(tmp_path: Path) -> None:
    handler = load_shape("shape.plain_text").handler
    found = capture(handler, python=str(tmp_path / "no-python"), env=ENV, cwd=tmp_path)
    assert found.source == "ast" and found.problem and found.problem.startswith("cannot start")


def test_interface_round_trips(captured: dict[str, HandlerInterface]) -> None:
    for found in captured.values():
        data = json.loads(json.dumps(found.as_dict()))
        assert HandlerInterface.from_dict(data) == found


def test_conventional_handler(tmp_path: Path) -> None:
    folder = HANDLERS / "shape.no_entrypoints"
    assert conventional_handler(folder, "shape.no_entrypoints") == folder / "shape_no_entrypoints.py"
    (tmp_path / "validate.py").write_text("")
    (tmp_path / "test_validate.py").write_text("")
    assert conventional_handler(tmp_path, "api.validate") == tmp_path / "validate.py"
    (tmp_path / "api_validate.py").write_text("")
    assert conventional_handler(tmp_path, "api.validate") == tmp_path / "api_validate.py"
    other = tmp_path / "other"
    other.mkdir()
    (other / "run_it.py").write_text("")
    assert conventional_handler(other, "x.y") == other / "run_it.py"
    (other / "helper.py").write_text("")
    assert conventional_handler(other, "x.y") is None


# --------------------------------------------------------------------------------------------------
# argv: every case of cases.json


@pytest.mark.parametrize("case", CASES, ids=[f"{c['shape']}-{i}" for i, c in enumerate(CASES)])
def test_build_argv_matches_direct_argv(case: dict[str, Any], captured: dict[str, HandlerInterface]) -> None:
    shape = load_shape(case["shape"])
    found = captured[case["shape"]]
    if "build_error" in case:
        with pytest.raises(ArgvError, match=case["build_error"]):
            build_argv(found, shape.inputs, case["arguments"])
        return
    assert build_argv(found, shape.inputs, case["arguments"]) == case["direct_argv"]
    schema = input_schema(shape.inputs, found)
    jsonschema.Draft202012Validator.check_schema(schema)
    if case["expect_ok"]:
        jsonschema.validate(case["arguments"], schema, cls=jsonschema.Draft202012Validator)


def test_direct_argv_is_the_ground_truth(tmp_path: Path) -> None:
    """cases.json itself: running ``python handler.py *direct_argv`` gives expect_ok and writes files."""
    shapes = {name: load_shape(name) for name in SHAPES}
    procs = []
    for index, case in enumerate(CASES):
        cwd = tmp_path / str(index)
        cwd.mkdir()
        command = [PYTHON, str(shapes[case["shape"]].handler), *case["direct_argv"]]
        procs.append(
            (
                case,
                cwd,
                subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
            )
        )
    for case, cwd, proc in procs:
        out, err = proc.communicate(timeout=30)
        label = f"{case['shape']} {case['direct_argv']}: {err.decode()[-300:]}"
        assert (proc.returncode == 0) == case["expect_ok"], label
        if case["expect_ok"] and not case["arguments"].get("dry_run"):
            assert any(p.is_file() for p in (cwd / "out").rglob("*")), label
            assert out.strip(), label


# --------------------------------------------------------------------------------------------------
# argv: matching and errors


def test_store_false_is_reached_by_dest_option_and_negated_name(
    captured: dict[str, HandlerInterface],
) -> None:
    found = captured["shape.store_false_renamed"]
    for name, inverted in [
        ("check_headers", True),
        ("no_headers", False),
        ("NO-HEADERS", False),
        ("headers", True),
    ]:
        match = match_action(name, found)
        assert match is not None and match.action.dest == "check_headers", name
        assert match.inverted is inverted, name
    assert build_argv(found, [], {"name": "t", "check_headers": False}) == ["t", "--no-headers"]
    assert build_argv(found, [], {"name": "t", "headers": False}) == ["t", "--no-headers"]
    assert build_argv(found, [], {"name": "t", "headers": True}) == ["t"]
    assert build_argv(found, [], {"name": "t", "no_headers": True}) == ["t", "--no-headers"]
    assert build_argv(found, [], {"name": "t", "no_headers": False}) == ["t"]


def test_boolean_matching_rules(captured: dict[str, HandlerInterface]) -> None:
    theme = captured["shape.boolean_optional"]
    assert build_argv(theme, [], {"name": "n", "no_color": True}) == ["n", "--no-color"]
    assert build_argv(theme, [], {"name": "n", "no_color": False}) == ["n", "--color"]
    kebab = captured["shape.kebab_options"]
    assert match_action("output-dir", kebab).action.dest == "output_dir"  # type: ignore[union-attr]
    assert match_action("--Max-Items", kebab).action.dest == "max_items"  # type: ignore[union-attr]
    assert build_argv(kebab, [], {"title": "t", "no_dry_run": False}) == ["t", "--dry-run"]
    note = captured["shape.dest_override"]
    assert build_argv(note, [], {"content": "c", "out": "x.txt", "name": "L"}) == [
        "c",
        "--out",
        "x.txt",
        "--name",
        "L",
    ]
    assert build_argv(note, [], {"content": "c", "o": "y.txt"}) == ["c", "--out", "y.txt"]


def test_optional_positional_gap_is_an_error(captured: dict[str, HandlerInterface]) -> None:
    found = captured["shape.optional_positional"]
    with pytest.raises(ArgvError, match=r"'label'.*'name'"):
        build_argv(found, [], {"text": "hi", "label": "L"})


def test_unknown_argument_is_an_error(captured: dict[str, HandlerInterface]) -> None:
    with pytest.raises(ArgvError, match="'colour_scheme' is not an option or positional"):
        build_argv(captured["shape.kebab_options"], [], {"title": "t", "colour_scheme": "x"})
    with pytest.raises(ArgvError, match="both set"):
        build_argv(
            captured["shape.store_false_renamed"], [], {"name": "t", "headers": True, "no_headers": True}
        )


def test_value_conversions() -> None:
    found = HandlerInterface(
        source="parser",
        actions=(
            ParserAction("src"),
            ParserAction("flag", ("--flag",), choices=["True", "False"]),
            ParserAction("yes", ("--yes",), choices=["yes", "no"]),
            ParserAction("cfg", ("--cfg",), type="loads"),
            ParserAction("pair", ("--pair",), nargs=2),
            ParserAction("level", ("-l",), kind="count"),
            ParserAction("fmt", ("--json",), kind="store_const", const="json"),
            ParserAction("fmt", ("--yaml",), kind="store_const", const="yaml"),
        ),
    )
    argv = build_argv(
        found, [], {"src": "-odd", "flag": False, "yes": True, "cfg": {"a": 1}, "pair": [1, 2.5]}
    )
    assert argv == [
        "--flag",
        "False",
        "--yes",
        "yes",
        "--cfg",
        '{"a": 1}',
        "--pair",
        "1",
        "2.5",
        "--",
        "-odd",
    ]
    assert build_argv(found, [], {"src": "s", "level": 3, "fmt": "yaml"}) == ["s", "-l", "-l", "-l", "--yaml"]
    assert build_argv(found, [], {"src": "s", "cfg": "-x"}) == ["s", "--cfg=-x"]
    with pytest.raises(ArgvError, match="count"):
        build_argv(found, [], {"src": "s", "level": -1})


def test_manifest_overrides_win(captured: dict[str, HandlerInterface]) -> None:
    shape = load_shape("shape.kebab_options")
    found = captured["shape.kebab_options"]
    args = {"title": "t", "output_dir": "d", "dry_run": True}
    assert build_argv(found, shape.inputs, args, style="json-argv") == [json.dumps(args)]
    assert build_argv(found, shape.inputs, args, style="json-stdin") == []
    assert build_argv(found, shape.inputs, args, style="betty") == ["t", "--output_dir", "d", "--dry_run"]
    assert build_argv(found, shape.inputs, args, flag_style="kebab") == [
        "t",
        "--output-dir",
        "d",
        "--dry-run",
    ]
    assert build_argv(found, shape.inputs, args, positional=["title", "output_dir"]) == [
        "t",
        "d",
        "--dry_run",
    ]
    assert input_schema(shape.inputs, found, flag_style="kebab")["properties"]["max_items"] == {
        "type": "integer",
        "description": "How many item lines to write",
        "default": 10,
    }


def test_manifest_rule_without_a_parser() -> None:
    shape = load_shape("shape.hand_parsed")
    nothing = HandlerInterface(source="manifest")
    inputs = [
        *shape.inputs,
        Param(name="fancy", type="boolean", default=True),
        Param(name="meta", type="object"),
    ]
    argv = build_argv(nothing, inputs, {"text": "x", "upper": False, "fancy": False, "meta": {"k": [1]}})
    assert argv == ["x", "--no-fancy", "--meta", '{"k": [1]}']
    with pytest.raises(ArgvError, match="not an input"):
        build_argv(nothing, inputs, {"text": "x", "bogus": 1})


# --------------------------------------------------------------------------------------------------
# Schema, mismatches, describe


def schema_of(name: str, captured: dict[str, HandlerInterface]) -> dict[str, Any]:
    schema = input_schema(load_shape(name).inputs, captured[name])
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    return schema


def test_schema_enum_from_choices_and_required_from_parser(captured: dict[str, HandlerInterface]) -> None:
    schema = schema_of("shape.required_option", captured)
    assert schema["properties"]["mode"]["enum"] == ["append", "replace"]
    assert schema["required"] == ["target"]
    audit = schema_of("shape.audit_log", captured)
    assert audit["properties"]["status"]["enum"] == ["success", "failure", "timeout"]
    assert audit["properties"]["duration_ms"]["type"] == "integer"
    assert audit["required"] == ["skill", "status"]


def test_schema_types_from_parser(captured: dict[str, HandlerInterface]) -> None:
    numbers = schema_of("shape.typed_numbers", captured)["properties"]
    assert (numbers["count"]["type"], numbers["ratio"]["type"]) == ("integer", "number")
    headers = schema_of("shape.store_false_renamed", captured)["properties"]["check_headers"]
    assert headers == {"type": "boolean", "description": "Write the header row", "default": True}
    value = schema_of("shape.bool_value", captured)["properties"]
    assert value["blocking"]["type"] == "boolean" and "enum" not in value["blocking"]
    words = schema_of("shape.nargs_plus", captured)["properties"]["words"]
    assert words["type"] == "array" and words["minItems"] == 1 and words["items"] == {"type": "string"}
    verbose = schema_of("shape.count_verbosity", captured)["properties"]["verbose"]
    assert (verbose["type"], verbose["minimum"]) == ("integer", 0)
    group = schema_of("shape.exclusive_group", captured)["properties"]
    assert "Cannot be combined with --yaml" in group["json"]["description"]


def test_no_input_manifest_gets_the_parser_options(captured: dict[str, HandlerInterface]) -> None:
    schema = schema_of("shape.no_inputs", captured)
    assert schema["properties"] == {
        "limit": {"description": "How many rows", "type": "integer", "default": 3},
        "format": {"description": "Output format", "enum": ["json", "text"], "default": "json"},
        "prefix": {"description": "Row name prefix", "default": "row"},
    }
    assert "required" not in schema
    assert mismatches([], captured["shape.no_inputs"]) == []


def test_extra_parser_options_and_unknown_inputs(captured: dict[str, HandlerInterface]) -> None:
    found = captured["shape.kebab_options"]
    inputs = [Param(name="title", type="string", required=True), Param(name="colour", type="string")]
    schema = input_schema(inputs, found)
    assert set(schema["properties"]) == {"title", "output_dir", "max_items", "dry_run"}  # colour left out
    assert schema["properties"]["output_dir"]["description"] == "Folder under out/ (default: reports)"
    problems = mismatches(inputs, found)
    assert len(problems) == 1 and problems[0].startswith("input 'colour' is not an option or positional")
    required = mismatches([], captured["shape.required_option"])
    assert required == [
        "the handler requires --target, which the manifest does not declare "
        "(the tool's schema adds it as 'target')"
    ]


def test_json_argv_and_unsupported_schemas_are_the_manifests(captured: dict[str, HandlerInterface]) -> None:
    for name in ("shape.json_argv", "shape.subparsers", "shape.click_style"):
        schema = schema_of(name, captured)
        assert list(schema["properties"]) == [i.name for i in load_shape(name).inputs]
    assert schema_of("shape.subparsers", captured)["properties"]["command"]["enum"] == ["add", "remove"]


def test_describe(captured: dict[str, HandlerInterface]) -> None:
    rows = describe(captured["shape.store_false_renamed"], load_shape("shape.store_false_renamed").inputs)
    assert {r["input"]: r["argv"] for r in rows} == {
        "name": "positional #1",
        "columns": "--columns VALUE",
        "check_headers": "--no-headers when false",
    }
    assert {r["source"] for r in rows} == {"parser"}
    kebab = {r["input"]: r["argv"] for r in describe(captured["shape.kebab_options"], [])}
    assert kebab == {
        "title": "positional #1",
        "output_dir": "--output-dir VALUE",
        "max_items": "--max-items VALUE",
        "dry_run": "--dry-run when true",
    }
    audit = {
        r["input"]: r["argv"]
        for r in describe(captured["shape.audit_log"], load_shape("shape.audit_log").inputs)
    }
    assert audit["duration_ms"] == "positional #3 (optional)"
    value = {r["input"]: r["argv"] for r in describe(captured["shape.bool_value"], [])}
    assert value["notify"] == "--notify Yes|No"
    theme = {r["input"]: r["argv"] for r in describe(captured["shape.boolean_optional"], [])}
    assert theme["color"] == "--color when true, --no-color when false"
    widget = describe(captured["shape.json_argv"], load_shape("shape.json_argv").inputs)
    assert widget[0]["argv"] == "key 'name' of the JSON object in argv[1]" and widget[0]["source"] == "ast"


# --------------------------------------------------------------------------------------------------
# Cache


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = iface.capture

    def counting(handler: Path, **kwargs: Any) -> HandlerInterface:
        calls.append(handler)
        return real(handler, **kwargs)

    monkeypatch.setattr(iface, "capture", counting)
    return calls


def test_cache_hit_does_not_capture(counted: list[Path], tmp_path: Path) -> None:
    handler = tmp_path / "handler.py"
    shutil.copy(load_shape("shape.kebab_options").handler, handler)
    cache = InterfaceCache(tmp_path / "ws" / ".betty-mcp" / "cache" / "interfaces.json")
    first = interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache)
    second = interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache)
    assert len(counted) == 1 and first == second and first.source == "parser"
    fresh = InterfaceCache(cache.path)  # another process, same file
    assert interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=fresh) == first
    assert len(counted) == 1
    interface_for(handler, python="/other/python3", env=ENV, cwd=tmp_path, cache=fresh)
    assert len(counted) == 2  # the interpreter is part of the key
    with handler.open("a") as f:
        f.write("# edited\n")
    edited = interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=fresh)
    assert len(counted) == 3 and edited.actions == first.actions
    data = json.loads(cache.path.read_text())
    assert data["format"] == 1 and len(data["entries"]) == 2  # the edited handler replaced its entry


def test_cache_notices_same_size_edits(counted: list[Path], tmp_path: Path) -> None:
    handler = tmp_path / "h.py"
    handler.write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--aa')\np.parse_args()\n"
    )
    cache = InterfaceCache(tmp_path / "cache.json")
    assert action(interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache), "aa")
    handler.write_text(handler.read_text().replace("--aa", "--bb"))
    os.utime(handler, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    again = interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache)
    assert [a.dest for a in again.actions] == ["bb"] and len(counted) == 2


def test_corrupt_cache_is_ignored(counted: list[Path], tmp_path: Path) -> None:
    handler = load_shape("shape.plain_text").handler
    path = tmp_path / "interfaces.json"
    for garbage in [
        "{not json",
        '{"format": 1, "entries": []}',
        "[1, 2]",
        '{"format": 1, "entries": {"x": 1}}',
    ]:
        path.write_text(garbage)
        cache = InterfaceCache(path)
        assert cache.get(handler, PYTHON) is None
        assert interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache).source == "parser"
    assert len(counted) == 4
    assert InterfaceCache(path).get(handler, PYTHON) is not None  # rewritten, valid again
    key = next(iter(json.loads(path.read_text())["entries"]))
    path.write_text(
        json.dumps({"format": 1, "entries": {key: {"size": 1, "interface": {"source": "bogus"}}}})
    )
    assert InterfaceCache(path).get(handler, PYTHON) is None
    unwritable = InterfaceCache(tmp_path / "file-not-dir" / "x.json")
    (tmp_path / "file-not-dir").write_text("")
    assert interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=unwritable).source == "parser"


def test_failed_capture_is_retried_after_the_ttl(counted: list[Path], tmp_path: Path) -> None:
    handler = load_shape("shape.import_failure").handler
    cache = InterfaceCache(tmp_path / "c.json", failure_ttl=0.0)
    interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache)
    interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=cache)
    assert len(counted) == 2
    kept = InterfaceCache(tmp_path / "c.json")
    interface_for(handler, python=PYTHON, env=ENV, cwd=tmp_path, cache=kept)
    assert len(counted) == 2


# --------------------------------------------------------------------------------------------------
# Capture safety


def test_capture_stops_at_parse_args_with_exactly_the_given_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = tmp_path / "marks.py"
    handler.write_text(
        textwrap.dedent(
            """
            import argparse, json, os, sys
            from pathlib import Path
            Path("imported.json").write_text(json.dumps({"env": dict(os.environ), "argv": sys.argv,
                                                         "path0": sys.path[0]}))
            print("noise on stdout that must not matter {")
            parser = argparse.ArgumentParser()
            parser.add_argument("--x")
            parser.parse_args()
            Path("after-parse").write_text("ran past parse_args")
            """
        )
    )
    monkeypatch.setenv("BETTY_TEST_SECRET_TOKEN", "s3cr3t")
    env = {**ENV, "VISIBLE_SETTING": "1"}
    found = capture(handler, python=PYTHON, env=env, cwd=tmp_path)
    assert found.source == "parser" and [a.dest for a in found.actions] == ["x"]
    assert not (tmp_path / "after-parse").exists()
    seen = json.loads((tmp_path / "imported.json").read_text())
    assert set(seen["env"]) - {"LC_CTYPE"} == set(env)  # LC_CTYPE: Python's own C-locale coercion
    assert "BETTY_TEST_SECRET_TOKEN" not in seen["env"]
    assert seen["argv"] == [str(handler)] and seen["path0"] == str(tmp_path)


def test_capture_timeout_kills_the_process_group(tmp_path: Path) -> None:
    handler = tmp_path / "hang.py"
    handler.write_text(
        textwrap.dedent(
            """
            import argparse, os, subprocess, sys, time
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            with open(os.environ["PIDFILE"], "w") as f:
                f.write(str(child.pid))
            time.sleep(600)
            argparse.ArgumentParser().parse_args()
            """
        )
    )
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    found = capture(handler, python=PYTHON, env={**ENV, "PIDFILE": str(pidfile)}, cwd=tmp_path, timeout=1.0)
    assert time.monotonic() - started < 4
    assert found.problem is not None and found.problem.startswith("timed out after 1s")
    assert found.source == "manifest"  # no add_argument call to read statically either
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status
