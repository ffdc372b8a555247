#!/usr/bin/env python3
"""skill.create: scaffold a new skill folder (skill.yaml, handler, SKILL.md, test) in a skills folder.

The handler follows the bundled skills' conventions (``betty_mcp.kit.skillkit``, Betty argv: required
inputs positional in declared order, optional ones ``--name value``, booleans as flags, arrays and
objects as JSON) and returns what it received, ready to be filled in. The default target is the
first skills folder the server watches, so with hot reload the new skill is a tool at once.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any

from betty_mcp.core.rules import betty_name_problem
from betty_mcp.kit.skillkit import SkillError, json_arg, run, workspace, workspace_path, write_text_atomic
from betty_mcp.kit.skillkit import parser as make_parser

INPUT_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
INPUT_TYPES = ("string", "boolean", "integer", "number", "array", "object")
JSON_ARG = "skillkit.json_arg"
ARGPARSE_TYPES = {"integer": "int", "number": "float", "array": JSON_ARG, "object": JSON_ARG}
PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}
SAMPLE_VALUES = {"string": "example", "integer": 1, "number": 1.5, "array": ["a"], "object": {"k": "v"}}


def check_inputs(raw: Any) -> list[dict[str, Any]]:
    """The declared inputs as manifest dicts; SkillError naming the first bad one."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SkillError(f"inputs must be an array of input objects, got {type(raw).__name__}")
    inputs, seen = [], set()
    for index, item in enumerate(raw):
        where = f"inputs[{index}]"
        if not isinstance(item, dict):
            raise SkillError(f"{where} must be an object with name, type, required, description")
        unknown = sorted(set(item) - {"name", "type", "required", "description", "default", "options"})
        if unknown:
            raise SkillError(f"{where}: unknown field(s) {', '.join(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not INPUT_NAME.match(name):
            raise SkillError(f"{where}.name {name!r} must be a snake_case identifier like 'input_path'")
        if name in seen:
            raise SkillError(f"{where}.name '{name}' is declared twice")
        seen.add(name)
        kind = item.get("type", "string")
        if kind not in INPUT_TYPES:
            raise SkillError(f"{where}.type {kind!r} is not one of {', '.join(INPUT_TYPES)}")
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise SkillError(f"{where}.required must be true or false")
        if required and kind == "boolean":
            raise SkillError(f"{where}: a boolean input is a flag and cannot be required")
        default = item.get("default")
        if default is not None and required:
            raise SkillError(f"{where}: a required input cannot have a default")
        if default is not None and (
            not isinstance(default, PYTHON_TYPES[kind])
            or (kind in ("integer", "number") and isinstance(default, bool))
        ):
            raise SkillError(f"{where}.default {default!r} is not of type {kind}")
        options = item.get("options")
        if options is not None and (not isinstance(options, list) or not options):
            raise SkillError(f"{where}.options must be a non-empty list of allowed values")
        entry = {
            "name": name,
            "type": kind,
            "required": required,
            "description": str(item.get("description") or f"The {name.replace('_', ' ')}."),
        }
        for key in ("default", "options"):
            if item.get(key) is not None:
                entry[key] = item[key]
        inputs.append(entry)
    return inputs


def refuse_existing(name: str, folder: Path, settings: Any) -> None:
    from betty_mcp.core.catalog import load_catalog, tool_name_for

    if folder.exists():
        raise SkillError(f"{folder} already exists; choose another name or remove it", code="already_exists")
    catalog = load_catalog(settings)
    existing = catalog.skills.get(name)
    if existing is not None:
        raise SkillError(
            f"a skill named '{name}' already exists: {existing.manifest_path}", code="already_exists"
        )
    tool = tool_name_for(name)
    clash = next((s for s in catalog.skills.values() if s.tool_name == tool), None)
    if clash is not None:
        raise SkillError(
            f"'{name}' would get tool name '{tool}', already taken by '{clash.name}' ({clash.manifest_path})",
            code="already_exists",
        )


def manifest_text(name: str, description: str, inputs: list[dict[str, Any]], handler: str) -> str:
    import yaml

    manifest = {
        "name": name,
        "version": "0.1.0",
        "description": description,
        "status": "active",
        "tags": [name.split(".")[0]],
        "inputs": inputs,
        "outputs": [
            {"name": "skill", "type": "string", "description": "This skill's name."},
            {"name": "received", "type": "object", "description": "The inputs the handler received."},
        ],
        "entrypoints": [
            {
                "command": "/" + name.replace(".", "/"),
                "handler": handler,
                "runtime": "python",
                "permissions": ["filesystem:read"],
            }
        ],
    }
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=100)


def _docstring(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"""' + textwrap.fill(escaped, width=100, break_long_words=False) + '"""'


def argument_line(item: dict[str, Any]) -> str:
    name, kind = item["name"], item["type"]
    if kind == "boolean":
        flag, default = "--" + name, item.get("default") is True
        return f"parser.add_argument({flag!r}, action=argparse.BooleanOptionalAction, default={default})"
    parts = [repr(name) if item["required"] else repr("--" + name)]
    if kind in ARGPARSE_TYPES:
        parts.append(f"type={ARGPARSE_TYPES[kind]}")
    if item.get("options") is not None:
        parts.append(f"choices={item['options']!r}")
    if not item["required"] and item.get("default") is not None:
        parts.append(f"default={item['default']!r}")
    return f"parser.add_argument({', '.join(parts)})"


def handler_text(name: str, description: str, inputs: list[dict[str, Any]]) -> str:
    arguments = "".join(argument_line(i) + "\n" for i in inputs)
    return f'''#!/usr/bin/env python3
{_docstring(f"{name}: {description}")}

from __future__ import annotations

import argparse
from typing import Any

from betty_mcp.kit import skillkit

SKILL = {name!r}


def handle(args: argparse.Namespace) -> dict[str, Any]:
    """Do the skill's work here; raise skillkit.SkillError for input the caller must fix."""
    return {{"skill": SKILL, "received": vars(args)}}


parser = skillkit.parser(__doc__)
{arguments}
if __name__ == "__main__":
    skillkit.run(handle, parser)
'''


def sample_argv(inputs: list[dict[str, Any]]) -> list[str]:
    """Arguments that exercise every input once, Betty style."""

    def text(item: dict[str, Any]) -> str:
        value = item["options"][0] if item.get("options") else SAMPLE_VALUES[item["type"]]
        return json.dumps(value) if isinstance(value, list | dict) else str(value)

    argv = [text(i) for i in inputs if i["required"]]
    for item in inputs:
        if item["required"]:
            continue
        argv += [f"--{item['name']}"] if item["type"] == "boolean" else [f"--{item['name']}", text(item)]
    return argv


def _list_literal(items: list[str]) -> str:
    one_line = repr(items)
    return one_line if len(one_line) <= 90 else "[\n" + "".join(f"    {item!r},\n" for item in items) + "]"


def test_text(name: str, handler: str, inputs: list[dict[str, Any]]) -> str:
    return f"""{_docstring(f"Runs the {name} handler as the server does and checks its success envelope.")}

import json
import os
import subprocess
import sys
from pathlib import Path

HANDLER = Path(__file__).with_name({handler!r})
ARGS = {_list_literal(sample_argv(inputs))}


def test_handler_returns_success(tmp_path: Path) -> None:
    env = {{**os.environ, "BETTY_WORKSPACE": str(tmp_path)}}
    proc = subprocess.run([sys.executable, str(HANDLER), *ARGS], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    envelope = json.loads(proc.stdout.strip().splitlines()[-1])
    assert envelope["ok"] is True
    assert envelope["data"]["skill"] == {name!r}
"""


def skill_md(name: str, description: str, inputs: list[dict[str, Any]]) -> str:
    rows = (
        "\n".join(
            f"| `{i['name']}` | {i['type']} | {'yes' if i['required'] else 'no'} | {i['description']} |"
            for i in inputs
        )
        or "| (none) | | | |"
    )
    example = " ".join(f"{i['name']}=..." for i in inputs if i["required"])
    return f"""# {name}

{description}

Scaffolded by `skill.create`: the handler returns what it received. Replace `handle()` with the
real work and keep `skill.yaml`'s inputs and outputs in step with it.

## Inputs

| Name | Type | Required | Description |
|------|------|----------|-------------|
{rows}

## Outputs

- `skill` (string): this skill's name.
- `received` (object): the inputs the handler received.

## Examples

    betty-mcp skills run {name} {example}

MCP tool: `{name.replace(".", "_")}`.

## Errors

Bad or missing arguments give a failure envelope (`ok: false`) with a `bad_arguments` error.
"""


def handle(args: argparse.Namespace) -> dict[str, Any]:
    from betty_mcp.core.config import settings_from_env

    problem = betty_name_problem(args.name)
    if problem:
        raise SkillError(problem, code="invalid_name")
    if not args.description.strip():
        raise SkillError("description must not be empty")
    inputs = check_inputs(args.inputs)
    settings = settings_from_env()
    # The default is the first folder the server watches, so hot reload picks the skill up.
    default = settings.skills_dirs[0] if settings.skills_dirs else workspace() / "skills"
    target = workspace_path(args.target_dir or str(default), kind="target_dir")
    if target.exists() and not target.is_dir():
        raise SkillError(f"target_dir {target} is a file, not a folder", code="not_a_directory")
    folder = target / args.name
    refuse_existing(args.name, folder, settings)
    stem = args.name.replace(".", "_").replace("-", "_")
    handler, test_file = f"{stem}.py", f"test_{stem}.py"
    description = " ".join(args.description.split())
    files = {
        handler: handler_text(args.name, description, inputs),
        "skill.yaml": manifest_text(args.name, description, inputs, handler),
        "SKILL.md": skill_md(args.name, description, inputs),
        test_file: test_text(args.name, handler, inputs),
    }
    folder.mkdir(parents=True)
    for file_name, text in files.items():
        write_text_atomic(folder / file_name, text)
    (folder / handler).chmod(0o755)
    return {
        "name": args.name,
        "tool": args.name.replace(".", "_"),
        "directory": str(folder),
        "files": [str(folder / f) for f in files],
        "handler": handler,
        "test_file": test_file,
    }


parser = make_parser("Scaffold a new Betty skill folder.")
parser.add_argument("name", help="Betty name, e.g. data.clean")
parser.add_argument("description", help="what the skill does")
parser.add_argument("--inputs", type=json_arg, help="JSON array of input objects {name, type, required, ...}")
parser.add_argument("--target_dir", help="skills folder to create it in (default: the first watched one)")

if __name__ == "__main__":
    run(handle, parser)
