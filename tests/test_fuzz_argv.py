"""Fuzz of argv building and path checks: whatever the arguments, the only refusal is an ArgumentsError.

``build_argv``/``input_schema`` get random handler interfaces (argparse actions of every kind, nargs,
groups, choices) with random manifest inputs and random arguments; ``check_paths`` gets random path
strings (``~user``, NUL bytes, very long names, ``..`` chains, absolute paths, unicode). Anything but
an ``ArgumentsError`` subclass would reach a client as "internal error in <tool>".

The end-to-end tests at the bottom are the findings of this fuzz that only show once the argv is
handed to the operating system (a NUL byte, one argument over the kernel's per-argument limit).
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from betty_mcp.core.catalog import Skill
from betty_mcp.core.config import Settings, load_settings
from betty_mcp.core.errors import ArgumentsError
from betty_mcp.core.handler_interface import ACTION_KINDS, FLAG_KINDS, HandlerInterface, ParserAction
from betty_mcp.core.manifests import Param, SkillManifest
from betty_mcp.run.argv import build_argv, input_schema
from betty_mcp.run.invocation import check_paths
from betty_mcp.services import Services
from tests.conftest import FIXTURE_SKILLS, alive, stdio_client

# Hypothesis's caches (unicode tables, constants) go to the temp folder, not the checkout.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "betty-mcp-hypothesis")

FUZZ = settings(
    database=None,  # no .hypothesis folder in the checkout
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# One argument handed to execve may not exceed MAX_ARG_STRLEN (32 pages) on Linux.
MAX_ARG_STRLEN = 32 * 4096

# -- strategies --------------------------------------------------------------------------------

NAMES = [
    "spec_path",
    "rule_set",
    "verbose",
    "no_color",
    "color",
    "count",
    "items",
    "x",
    "format",
    "output_dir",
]
name_st = st.one_of(
    st.sampled_from(NAMES),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["-x", "--flag", "-", "true", "no", "1", "0", "", " ", "~", "a\0b", "é" * 5]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def parser_actions(draw: Any) -> ParserAction:
    dest = draw(name_st)
    kind = draw(st.sampled_from(ACTION_KINDS))
    positional = kind == "store" and draw(st.booleans())
    if positional:
        options: tuple[str, ...] = ()
    else:
        spelled = dest.replace("_", "-")
        options = tuple(
            draw(
                st.lists(
                    st.sampled_from(
                        [f"--{spelled}", f"--{dest}", f"--no-{spelled}", f"-{dest[:1] or 'x'}", "-"]
                    ),
                    min_size=1,
                    max_size=3,
                    unique=True,
                )
            )
        )
    nargs = None if kind in FLAG_KINDS else draw(st.sampled_from([None, "?", "*", "+", "...", 0, 1, 2, 3]))
    return ParserAction(
        dest=dest,
        option_strings=options,
        kind=kind,
        nargs=nargs,
        required=draw(st.booleans()),
        type=draw(st.sampled_from([None, "int", "float", "str", "bool", "str2bool", "Path", "custom"])),
        choices=draw(st.one_of(st.none(), st.lists(json_scalar, max_size=4))),
        default=draw(json_scalar),
        help=draw(st.one_of(st.none(), st.text(max_size=20))),
        group=draw(st.sampled_from([None, None, 0, 1])),
        const=draw(json_scalar),
    )


interfaces = st.builds(
    HandlerInterface,
    source=st.sampled_from(["parser", "ast", "manifest"]),
    actions=st.lists(parser_actions(), max_size=7).map(tuple),
    json_argv=st.booleans(),
    unsupported=st.sampled_from([None, None, "subcommands (argparse subparsers)"]),
    required_groups=st.lists(st.sampled_from([0, 1, 2]), max_size=2).map(tuple),
)


@st.composite
def params(draw: Any) -> Param:
    raw: dict[str, Any] = {"name": draw(name_st)}
    if draw(st.booleans()):
        raw["type"] = draw(
            st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "path"])
        )
    raw["required"] = draw(st.booleans())
    if draw(st.booleans()):
        raw["default"] = draw(json_scalar)
    if draw(st.integers(0, 4)) == 0:
        raw["enum"] = draw(st.lists(json_scalar, min_size=1, max_size=3))
    return Param.model_validate(raw)


@st.composite
def arguments_for(draw: Any, inputs: list[Param], interface: HandlerInterface) -> dict[str, Any]:
    known = [p.name for p in inputs] + [a.dest for a in interface.actions]
    keys = st.sampled_from(known) if known else name_st
    return draw(st.dictionaries(st.one_of(keys, name_st), json_value, max_size=6))


mcp_options = st.fixed_dictionaries(
    {
        "style": st.sampled_from([None, None, "betty", "json-argv", "json-stdin"]),
        "flag_style": st.sampled_from([None, None, "snake", "kebab"]),
        "positional": st.one_of(st.none(), st.lists(name_st, max_size=3)),
    }
)


# -- build_argv and input_schema ---------------------------------------------------------------


@FUZZ
@given(data=st.data(), interface=interfaces, inputs=st.lists(params(), max_size=5), options=mcp_options)
def test_build_argv_refuses_only_with_an_arguments_error(
    data: st.DataObject, interface: HandlerInterface, inputs: list[Param], options: dict[str, Any]
) -> None:
    arguments = data.draw(arguments_for(inputs, interface))
    try:
        argv = build_argv(interface, inputs, arguments, **options)
    except ArgumentsError as exc:
        assert str(exc).strip(), "a refusal must say why"
        return
    assert isinstance(argv, list) and all(isinstance(token, str) for token in argv), argv


@FUZZ
@given(interface=interfaces, inputs=st.lists(params(), max_size=5), options=mcp_options)
def test_input_schema_is_always_a_json_object_schema(
    interface: HandlerInterface, inputs: list[Param], options: dict[str, Any]
) -> None:
    schema = input_schema(inputs, interface, **options)
    assert schema["type"] == "object" and isinstance(schema["properties"], dict)
    json.dumps(schema, allow_nan=True)  # serialisable as it goes to the client
    assert set(schema.get("required", [])) <= set(schema["properties"])


@FUZZ
@given(interface=interfaces, inputs=st.lists(params(), max_size=5), data=st.data())
def test_round_trip_through_the_interface_cache_changes_nothing(
    interface: HandlerInterface, inputs: list[Param], data: st.DataObject
) -> None:
    """The interface cache stores ``as_dict`` as JSON: the argv built from the reloaded copy is the same."""
    arguments = data.draw(arguments_for(inputs, interface))
    reloaded = HandlerInterface.from_dict(json.loads(json.dumps(interface.as_dict())))

    def outcome(iface: HandlerInterface) -> Any:
        try:
            return build_argv(iface, inputs, arguments)
        except ArgumentsError as exc:
            return ("refused", str(exc))

    assert outcome(reloaded) == outcome(interface)


# -- check_paths -------------------------------------------------------------------------------

path_piece = st.one_of(
    st.sampled_from(
        ["..", ".", "", "~", "~root", "~nosuchuser", "~nosuchuser-betty-fuzz", "a", "é", "日本", "\0"]
    ),
    st.text(alphabet=string.ascii_letters + "._-~ \0é/", max_size=12),
    st.text(max_size=8),
)
path_values = st.one_of(
    st.lists(path_piece, max_size=8).map("/".join),
    st.lists(path_piece, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.integers(1, 40).map(lambda n: "../" * n + "etc/passwd"),
    st.integers(1, 300).map(lambda n: "a" * n * 20),  # components and paths past NAME_MAX / PATH_MAX
    st.integers(1, 200).map(lambda n: "/".join(["d" * 200] * n)),
    st.text(max_size=64),
)


def _skill(tmp: Path) -> Skill:
    manifest = SkillManifest.model_validate(
        {
            "name": "fuzz.paths",
            "inputs": [
                {"name": "spec_path", "type": "string", "required": True},
                {"name": "target", "type": "path"},
                {"name": "files", "type": "array"},
            ],
            "mcp": {"path_inputs": ["files"]},
            "entrypoints": [{"handler": "h.py"}],
        }
    )
    return Skill(
        manifest=manifest,
        directory=tmp / "skills" / "fuzz.paths",
        source="user",
        input_schema={},
        output_schema=None,
    )


@pytest.fixture(scope="module")
def path_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Skill, Settings]:
    tmp = tmp_path_factory.mktemp("paths")
    workspace = tmp / "workspace"
    (workspace / "sub").mkdir(parents=True)
    (workspace / "loop").symlink_to(workspace / "loop")  # a symlink loop inside the workspace
    (workspace / "out").symlink_to("/etc")  # a symlink leading out
    settings_ = Settings(workspace=workspace.resolve(), bundled=False)
    return _skill(tmp), settings_


def _resolved_inside(value: str, workspace: Path) -> bool:
    path = Path(os.path.realpath(workspace / os.path.expanduser(value)))
    return path == workspace or path.is_relative_to(workspace)


@FUZZ
@given(value=path_values, as_list=st.booleans(), which=st.sampled_from(["spec_path", "target", "files"]))
@example(value="~nosuchuser/x", as_list=False, which="spec_path")
@example(value="a\0b", as_list=False, which="spec_path")
@example(value="~nosuchuser\0/x", as_list=True, which="files")
@example(value="loop/x", as_list=False, which="target")
@example(value="x" * 5000, as_list=False, which="spec_path")
def test_check_paths_refuses_only_with_an_arguments_error(
    path_world: tuple[Skill, Settings], value: str, as_list: bool, which: str
) -> None:
    skill, settings_ = path_world
    arguments = {which: [value, "ok.txt"] if as_list else value}
    try:
        check_paths(skill, arguments, settings_)
    except ArgumentsError as exc:
        assert str(exc).strip()
        return
    # Accepted: it really does resolve inside the workspace.
    assert "\0" not in value
    assert _resolved_inside(value, settings_.workspace), value


@FUZZ
@given(
    parts=st.lists(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_. -]{0,20}", fullmatch=True), min_size=1, max_size=6
    )
)
def test_plain_relative_paths_inside_the_workspace_are_accepted(
    path_world: tuple[Skill, Settings], parts: list[str]
) -> None:
    """No false refusals: ``a/b c/d.txt`` (no ``..``, no ``~``, no symlink) is inside the workspace."""
    skill, settings_ = path_world
    parts = [p for p in parts if p.strip(".") and p not in ("loop", "out")] or ["f"]
    check_paths(skill, {"spec_path": "/".join(parts), "files": parts}, settings_)


# -- end to end: argv the operating system cannot take ----------------------------------------


def _config(workspace: Path, *, fork_server: bool) -> None:
    (workspace / "betty.yaml").write_text(f"limits:\n  fork_server: {str(fork_server).lower()}\n")


async def _echo(workspace: Path, arguments: dict[str, Any]) -> Any:
    async with stdio_client(workspace) as client:
        result = await client.call_tool("test_echo", arguments)
        after = await client.call_tool("test_echo", {"message": "still here"})
    assert not after.is_error
    return result


def _refused_cleanly(result: Any, code: str = "invalid_arguments") -> None:
    text = result.content[0].text
    assert result.is_error
    assert "internal error" not in text, text
    assert result.structured_content["errors"][0]["code"] == code, text


@pytest.mark.anyio
async def test_a_nul_byte_in_an_argument_is_refused_not_an_internal_error(workspace: Path) -> None:
    _config(workspace, fork_server=False)
    _refused_cleanly(await _echo(workspace, {"message": "a\0b"}))


@pytest.mark.anyio
async def test_an_argument_too_long_for_exec_is_refused_not_an_internal_error(workspace: Path) -> None:
    _config(workspace, fork_server=False)
    _refused_cleanly(
        await _echo(workspace, {"message": "y" * (MAX_ARG_STRLEN + 70_000)}), "arguments_too_large"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("size", [20_000, 100_000])
async def test_a_long_argument_through_the_warm_zygote_is_answered_and_the_zygote_survives(
    workspace: Path, size: int
) -> None:
    """The zygote's job (argv, env) travels over a socket, not execve: any size below the kernel's
    per-argument limit must get through, and leave the zygote serving."""
    app = Services(load_settings(None, workspace=workspace, skills_dirs=[FIXTURE_SKILLS], bundled=False))
    try:
        zygote = app.runner._zygote
        assert zygote is not None
        echo = app.catalog.skills["test.echo"]
        await app.runner.run(echo, {"message": "start the zygote"})
        with anyio.fail_after(30):
            while not zygote._ready.is_set():
                await anyio.sleep(0.05)
        process = zygote._process  # as tests/test_zygote.py reads it
        assert process is not None
        result = await app.runner.run(echo, {"message": "y" * size})
        assert result.ok, result.text[:500]
        await anyio.sleep(0.3)
        assert zygote._process is process and alive(process.pid), "the zygote died on a long argument"
        again = await app.runner.run(echo, {"message": "after"})
        assert again.ok
    finally:
        app.close()
