"""Reading a handler's interface from its source with ``ast``: literal ``add_argument(...)`` calls,
``add_subparsers`` and ``json.loads(sys.argv[1])``. Used when running the handler is unsafe (a
click or hand-parsed CLI would run for real) or when running it failed.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from betty_mcp.core.handler_interface import (
    FLAG_KINDS,
    UNSUPPORTED_SUBPARSERS,
    HandlerInterface,
    ParserAction,
)

# Modules whose presence (without any argparse in the source) means "not an argparse CLI".
NON_ARGPARSE_CLIS = frozenset({"click", "typer", "fire", "docopt", "cleo", "plac"})
_ARGPARSE_WORDS = re.compile(
    r"\b(argparse|ArgumentParser|parse_args|parse_known_args|parse_intermixed_args)\b"
)
_NARGS_NAMES = {"OPTIONAL": "?", "ZERO_OR_MORE": "*", "ONE_OR_MORE": "+", "REMAINDER": "..."}
_DEFAULT_BY_KIND = {"store_true": False, "store_false": True}


@dataclass
class _Scan:
    actions: list[ParserAction] = field(default_factory=list)
    skipped: int = 0
    subparsers: bool = False
    json_argv: bool = False
    reads_sys_argv: bool = False
    mentions_argparse: bool = False
    imports: set[str] = field(default_factory=set)  # top-level module names; "." for relative imports
    required_groups: list[int] = field(default_factory=list)

    def interface(self) -> HandlerInterface | None:
        if not self.actions and not self.json_argv and not self.subparsers:
            return None
        problem = None
        if self.skipped:
            problem = f"{self.skipped} add_argument call(s) not literal, left out"
        return HandlerInterface(
            source="ast",
            actions=tuple(self.actions),
            json_argv=self.json_argv and not self.actions,
            unsupported=UNSUPPORTED_SUBPARSERS if self.subparsers else None,
            problem=problem,
            required_groups=tuple(self.required_groups),
        )

    def skip_reason(self) -> str | None:
        """Why running this handler could not reach argparse (so capture would only run the skill)."""
        if self.mentions_argparse:
            return None
        cli = sorted(self.imports & NON_ARGPARSE_CLIS)
        if cli:
            return f"it uses {cli[0]}, not argparse"
        if self.json_argv:
            return "it reads one JSON object from argv[1]"
        stdlib = getattr(sys, "stdlib_module_names", frozenset())
        if all(name in stdlib for name in self.imports):
            return "it reads sys.argv itself" if self.reads_sys_argv else "it does not use argparse"
        return None


def _is_sys_argv(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "argv"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def _is_json_argv(call: ast.Call) -> bool:
    func = call.func
    is_loads = (isinstance(func, ast.Attribute) and func.attr == "loads") or (
        isinstance(func, ast.Name) and func.id == "loads"
    )
    if not is_loads or not call.args:
        return False
    arg = call.args[0]
    return (
        isinstance(arg, ast.Subscript)
        and (_is_sys_argv(arg.value) or (isinstance(arg.value, ast.Name) and arg.value.id == "argv"))
        and isinstance(arg.slice, ast.Constant)
        and arg.slice.value == 1
    )


def _literal(node: ast.AST | None, names: dict[str, ast.AST] | None = None) -> tuple[bool, Any]:
    """The literal value of ``node`` (JSON-able), resolving module-level ``NAME = literal`` constants."""
    if node is None:
        return False, None
    if isinstance(node, ast.Name) and names and node.id in names:
        node = names[node.id]
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None
    if isinstance(value, tuple):
        value = list(value)
    elif isinstance(value, set | frozenset):
        try:
            value = sorted(value)
        except TypeError:
            value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False, None
    return True, value


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call):
        return _name_of(node.func)
    if isinstance(node, ast.Lambda):
        return "<lambda>"
    return None


def _receiver(call: ast.Call) -> str | None:
    value = call.func.value if isinstance(call.func, ast.Attribute) else None
    return value.id if isinstance(value, ast.Name) else None


_SKIP = ParserAction(dest="help")  # a help/version action: not an argument


def _static_action(call: ast.Call, group: int | None, names: dict[str, ast.AST]) -> ParserAction | None:
    flags: list[str] = []
    for arg in call.args:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            return None
        flags.append(arg.value)
    if not flags:
        return None
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    action_node = keywords.get("action")
    kind = "store"
    if action_node is not None:
        name = _name_of(action_node)
        if name in ("help", "version", "_HelpAction", "_VersionAction"):
            return _SKIP
        kind = {
            "store": "store",
            "store_const": "store_const",
            "store_true": "store_true",
            "store_false": "store_false",
            "BooleanOptionalAction": "boolean_optional",
            "count": "count",
            "append": "append",
            "append_const": "append_const",
            "extend": "extend",
        }.get(name or "", "store")
    nargs: int | str | None = None
    if "nargs" in keywords and kind not in FLAG_KINDS:
        node = keywords["nargs"]
        ok, value = _literal(node)
        if ok and isinstance(value, int | str):
            nargs = value
        elif isinstance(node, ast.Attribute) and node.attr in _NARGS_NAMES:
            nargs = _NARGS_NAMES[node.attr]
    positional = not flags[0].startswith("-")
    if kind == "boolean_optional":  # argparse adds --no-x after each --x
        flags = [
            f for flag in flags for f in ([flag, "--no-" + flag[2:]] if flag.startswith("--") else [flag])
        ]
    ok, dest = _literal(keywords.get("dest"))
    if not ok or not isinstance(dest, str):
        if positional:
            dest = flags[0]
        else:
            long = [f for f in flags if f.startswith("--")]
            dest = (long or flags)[0].lstrip("-").replace("-", "_")
    if positional:
        required = nargs not in ("?", "*", "...")
    else:
        ok, req = _literal(keywords.get("required"))
        required = bool(req) if ok else False
    type_node = keywords.get("type")
    choices_ok, choices = _literal(keywords.get("choices"), names)
    default_ok, default = _literal(keywords.get("default"), names)
    if not default_ok:
        default = _DEFAULT_BY_KIND.get(kind) if "default" not in keywords else None
    help_ok, help_text = _literal(keywords.get("help"), names)
    const_ok, const = _literal(keywords.get("const"), names)
    if kind == "store_true":
        const = True
    elif kind == "store_false":
        const = False
    return ParserAction(
        dest=dest,
        option_strings=() if positional else tuple(flags),
        kind=kind,
        nargs=nargs,
        required=required,
        type=None if type_node is None else _name_of(type_node),
        choices=choices if choices_ok and isinstance(choices, list) else None,
        default=default,
        help=help_text if help_ok and isinstance(help_text, str) else None,
        group=group,
        const=const if const_ok or kind in ("store_true", "store_false") else None,
    )


def _scan_source(source: str) -> _Scan | None:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    scan = _Scan(mentions_argparse=bool(_ARGPARSE_WORDS.search(source)))
    groups: dict[str, int] = {}  # variable -> mutually exclusive group index (source order)
    subparser_vars: set[str] = set()
    calls: list[ast.Call] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            scan.imports.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            scan.imports.add("." if node.level else (node.module or "").split(".")[0])
        elif isinstance(node, ast.Attribute) and _is_sys_argv(node):
            scan.reads_sys_argv = True
        elif isinstance(node, ast.Call):
            calls.append(node)
    calls.sort(key=lambda c: (c.lineno, c.col_offset))
    names: dict[str, ast.AST] = {}  # module-level NAME = literal, for choices=NAME and the like
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            names[node.target.id] = node.value
    # Group and sub-parser variables, in source order, before their add_argument calls are read.
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        attr = func.attr if isinstance(func, ast.Attribute) else None
        if attr == "add_parser":
            subparser_vars.update(t.id for t in node.targets if isinstance(t, ast.Name))
    group_order: list[tuple[int, int, str, bool]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr == "add_mutually_exclusive_group"
        ):
            ok, req = _literal(next((k.value for k in node.value.keywords if k.arg == "required"), None))
            for target in node.targets:
                if isinstance(target, ast.Name):
                    group_order.append((node.lineno, node.col_offset, target.id, bool(ok and req)))
    for index, (_, _, name, req) in enumerate(sorted(group_order)):
        groups[name] = index
        if req:
            scan.required_groups.append(index)
    for call in calls:
        func = call.func
        if _is_json_argv(call):
            scan.json_argv = True
        if not isinstance(func, ast.Attribute):
            continue
        if func.attr == "add_subparsers":
            scan.subparsers = True
        elif func.attr == "add_argument":
            receiver = _receiver(call)
            if receiver in subparser_vars:
                continue
            action = _static_action(call, groups.get(receiver or ""), names)
            if action is None:
                scan.skipped += 1
            elif action is not _SKIP:
                scan.actions.append(action)
    return scan


def scan_file(handler: Path) -> _Scan | None:
    try:
        source = handler.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return _scan_source(source)


def read_statically(handler: Path) -> HandlerInterface | None:
    """The interface from the source: literal ``add_argument`` calls, ``add_subparsers``,
    ``json.loads(sys.argv[1])``. None when the file shows none of these (click, hand-parsed argv...)."""
    scan = scan_file(handler)
    return None if scan is None else scan.interface()


# --------------------------------------------------------------------------------------------------
# Cache and the one entry point.


def imported_modules(handler: Path) -> set[str]:
    """The top-level modules ``handler`` imports (``"."`` for relative imports); empty if unreadable."""
    scan = scan_file(handler)
    return set(scan.imports) if scan else set()
