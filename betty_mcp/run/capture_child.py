"""Run by ``interface_capture.capture`` as ``python capture_child.py CHANNEL HANDLER``, under the
handler's own interpreter (standard library only, nothing of betty_mcp is importable there).

It patches ``ArgumentParser.parse_args`` and friends, runs the handler as ``__main__``, and at the
first parse writes the parser's actions as JSON to CHANNEL (opened before the handler runs, so its
prints, chdir or env changes cannot touch it), then ends the process: the handler never runs past
its argument parsing.
"""

import argparse
import contextlib
import json
import os
import runpy
import sys

_fd = os.open(sys.argv[1], os.O_WRONLY | os.O_TRUNC)
_handler = sys.argv[2]


def _send(payload):
    data = json.dumps(payload, default=str).encode()
    while data:
        data = data[os.write(_fd, data) :]


def _jsonable(value):
    if isinstance(value, (tuple, set, frozenset)):
        value = list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        json.dumps(value, allow_nan=False)
        return value
    except (TypeError, ValueError):
        return None


_KINDS = [
    ("store_true", "_StoreTrueAction"),
    ("store_false", "_StoreFalseAction"),
    ("store_const", "_StoreConstAction"),
    ("boolean_optional", "BooleanOptionalAction"),
    ("count", "_CountAction"),
    ("extend", "_ExtendAction"),
    ("append_const", "_AppendConstAction"),
    ("append", "_AppendAction"),
    ("store", "_StoreAction"),
]
_FLAGS = {"store_true", "store_false", "store_const", "boolean_optional", "count", "append_const"}


def _kind(action):
    for kind, name in _KINDS:
        cls = getattr(argparse, name, None)
        if cls is not None and isinstance(action, cls):
            return kind
    return "store_const" if action.nargs == 0 else "store"


def _help(parser, action):
    text = action.help
    if text is None or text == argparse.SUPPRESS:
        return None
    if "%" in text:
        params = dict(vars(action), prog=parser.prog)
        for key in list(params):
            if params[key] is argparse.SUPPRESS:
                del params[key]
            elif hasattr(params[key], "__name__"):
                params[key] = params[key].__name__
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        with contextlib.suppress(Exception):
            text = text % params
    return text


def _describe(parser):
    groups = {}
    required_groups = []
    for index, group in enumerate(getattr(parser, "_mutually_exclusive_groups", [])):
        if getattr(group, "required", False):
            required_groups.append(index)
        for action in group._group_actions:
            groups[id(action)] = index
    actions, unsupported = [], None
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if isinstance(action, argparse._SubParsersAction):
            names = ", ".join(map(str, action.choices or ()))
            unsupported = "subcommands (argparse subparsers)" + (": " + names if names else "")
            continue
        kind = _kind(action)
        kind_type = action.type
        if kind_type is None:
            type_name = None
        elif isinstance(kind_type, str):
            type_name = kind_type
        else:
            type_name = getattr(kind_type, "__name__", type(kind_type).__name__)
        choices = action.choices
        if choices is not None:
            try:
                choices = list(choices)
            except TypeError:
                choices = None
        if choices is not None and (
            len(choices) > 1000 or any(not isinstance(c, (str, int, float, bool)) for c in choices)
        ):
            choices = None
        default = action.default
        if default is argparse.SUPPRESS:
            default = None
        nargs = None if kind in _FLAGS else action.nargs
        if nargs == argparse.SUPPRESS or (nargs is not None and not isinstance(nargs, (int, str))):
            nargs = None
        actions.append(
            {
                "dest": action.dest,
                "option_strings": list(action.option_strings),
                "kind": kind,
                "nargs": nargs,
                "required": bool(action.required),
                "type": type_name,
                "choices": choices,
                "default": _jsonable(default),
                "help": _help(parser, action),
                "group": groups.get(id(action)),
                "const": _jsonable(getattr(action, "const", None)),
            }
        )
    return {"actions": actions, "unsupported": unsupported, "required_groups": required_groups}


def _captured(self, *args, **kwargs):
    try:
        payload = {"status": "parsed", "parser": _describe(self)}
    except BaseException as exc:
        error = f"reading the parser failed: {type(exc).__name__}: {exc}"
        payload = {"status": "raised", "error": error}
    _send(payload)
    os._exit(0)


for _name in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
    if hasattr(argparse.ArgumentParser, _name):
        setattr(argparse.ArgumentParser, _name, _captured)

sys.argv = [_handler]
sys.path[0] = os.path.dirname(os.path.abspath(_handler))  # as `python handler.py` has it, not this folder
try:
    runpy.run_path(_handler, run_name="__main__")
    _send({"status": "finished"})
except SystemExit as exc:
    code = exc.code
    _send({"status": "exited", "code": code if code is None or isinstance(code, int) else str(code)})
except BaseException as exc:
    _send({"status": "raised", "error": f"{type(exc).__name__}: {exc}"})
os._exit(0)
