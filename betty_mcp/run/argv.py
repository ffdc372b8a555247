"""MCP tool arguments -> a handler's real command line, and the tool's input schema.

The handler's interface (``interface.HandlerInterface``) decides, in this order (``argv_mode``):

1. ``style`` set explicitly in the manifest (``mcp.arguments``): ``json-argv`` -> one JSON object as
   argv[1]; ``json-stdin`` -> no argv (the caller writes the object to stdin).
2. Any other explicit ``mcp`` mapping (``arguments: betty``, ``flag_style``, ``positional``) -> the
   manifest rule, exactly as declared: the author's mapping wins over what the parser says.
3. The handler reads ``json.loads(sys.argv[1])`` -> one JSON object as argv[1].
4. No parser known (source "manifest") or one betty-mcp cannot drive (subcommands) -> the manifest
   rule: required inputs positional in declared order, optional ones ``--name value`` (snake, or
   kebab with flag_style "kebab"), booleans as bare flags (``--no-name`` when the default is true and
   the value false), arrays/objects as JSON text.
5. Otherwise the parser rule: positionals in the parser's order, then options by their declared
   option string (the first ``--long`` one), each action sent the way it reads its value.

Matching an input to a parser action (``match_action``) folds case and treats ``-`` and ``_`` alike,
and tries, in order: the action's dest, any of its option strings, then a negated name. The value of
a boolean input always means the thing it is named after:

- ``check_headers`` (dest of ``--no-headers``, store_false): false -> ``--no-headers``;
- ``no_headers`` (the option string itself): true -> ``--no-headers``;
- ``headers`` (the option without ``no-``): false -> ``--no-headers``;
- ``no_verbose`` for a store_true ``--verbose``: false -> ``--verbose``.

Schema: in the parser rule, a manifest input the parser does not know cannot be sent (argparse would
exit 2 on it), so it is left out of the schema and reported by ``mismatches``. Parser options and
positionals the manifest lacks become properties named by their dest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from betty_mcp.core.catalog import input_schema as manifest_schema
from betty_mcp.core.errors import ArgvError
from betty_mcp.core.handler_interface import HandlerInterface, ParserAction
from betty_mcp.core.manifests import Param

Mode = Literal["json-argv", "json-stdin", "manifest", "parser"]
LIST_NARGS = ("+", "*", "...")
BOOL_FLAG_KINDS = frozenset({"store_true", "store_false", "boolean_optional"})
PRESENCE_KINDS = frozenset({"store_true", "store_false", "store_const", "append_const"})
TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1", "t"})
FALSE_WORDS = frozenset({"false", "no", "n", "off", "0", "f"})
JSON_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


@dataclass(frozen=True)
class ActionMatch:
    """An input name resolved to a parser action.

    ``via``: what the name matched (the dest, an option string, or a negated name). ``inverted``: for
    boolean actions, the input's value is the opposite of the action's positive form (store_true /
    store_const / store_false flag present, BooleanOptionalAction's ``--x``): e.g. ``check_headers``
    for ``--no-headers`` (dest of a store_false), ``headers`` for ``--no-headers``, ``no_color`` for
    ``--color/--no-color``.
    """

    action: ParserAction
    index: int
    via: Literal["dest", "option", "negated"]
    inverted: bool = False


def _norm(text: str) -> str:
    return text.strip().lstrip("-").casefold().replace("-", "_")


def _negative_option(option: str) -> bool:
    return _norm(option).startswith("no_")


def _candidate_inverted(action: ParserAction, candidate: str, is_dest: bool) -> bool:
    """Whether true for ``candidate`` (dest or option string) means the action's negative form."""
    if action.kind == "store_false":
        return is_dest
    if action.kind == "boolean_optional" and not is_dest:
        return _negative_option(candidate)
    return False


def match_action(name: str, interface: HandlerInterface) -> ActionMatch | None:
    """The parser action an input named ``name`` sets, or None (see the module docstring)."""
    key = _norm(name)
    if not key:
        return None
    actions = interface.actions
    for index, action in enumerate(actions):
        if _norm(action.dest) == key:
            return ActionMatch(action, index, "dest", _candidate_inverted(action, action.dest, True))
    for index, action in enumerate(actions):
        for option in action.option_strings:
            if _norm(option) == key:
                return ActionMatch(action, index, "option", _candidate_inverted(action, option, False))
    for index, action in enumerate(actions):
        if action.kind not in BOOL_FLAG_KINDS:
            continue
        for candidate, is_dest in [(action.dest, True), *((o, False) for o in action.option_strings)]:
            norm = _norm(candidate)
            if norm == "no_" + key or key == "no_" + norm:
                return ActionMatch(
                    action, index, "negated", not _candidate_inverted(action, candidate, is_dest)
                )
    return None


# --------------------------------------------------------------------------------------------------
# Values.


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _truth(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().casefold() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().casefold() in TRUE_WORDS
    raise ArgvError(f"argument '{name}' must be true or false, not {value!r}")


def _bool_spellings(action: ParserAction) -> tuple[str, str]:
    """How this action spells true and false: its choices' own words, else "true"/"false"."""
    words = [str(c) for c in action.choices or () if not isinstance(c, bool)]

    def pick(exact: str, group: frozenset[str]) -> str:
        for word in words:
            if word.strip().casefold() == exact:
                return word
        return next((w for w in words if w.strip().casefold() in group), exact)

    return pick("true", TRUE_WORDS), pick("false", FALSE_WORDS)


def is_bool_value(action: ParserAction) -> bool:
    """A store action taking a true/false word (``--blocking true``): bool-like type or choices."""
    if action.kind != "store" or action.nargs not in (None, "?") or action.positional:
        return False
    if action.type and "bool" in action.type.casefold():
        return True
    words = {str(c).strip().casefold() for c in action.choices or ()}
    return (
        bool(words)
        and words <= TRUE_WORDS | FALSE_WORDS
        and bool(words & TRUE_WORDS)
        and bool(words & FALSE_WORDS)
    )


def _is_list(action: ParserAction) -> bool:
    return action.kind in ("append", "extend") or action.nargs in LIST_NARGS or isinstance(action.nargs, int)


def _preferred(action: ParserAction, *, negative: bool | None = None) -> str:
    options = list(action.option_strings)
    if negative is not None:
        options = [o for o in options if _negative_option(o) == negative] or options
    long = [o for o in options if len(o) > 2 and o[0] == o[1]]
    return (long or options)[0]


def _scalar_value(action: ParserAction, value: Any) -> str:
    if isinstance(value, bool) and is_bool_value(action):
        true, false = _bool_spellings(action)
        return true if value else false
    return _text(value)


def _values(action: ParserAction, value: Any) -> list[str]:
    if isinstance(value, list) and _is_list(action):
        return [_text(v) for v in value]
    return [_scalar_value(action, value)]


def _with_option(option: str, values: list[str]) -> list[str]:
    if len(values) == 1 and values[0].startswith("-") and values[0] != "-":
        return [f"{option}={values[0]}"]  # "--name -x" would read -x as an option
    return [option, *values]


def _option_tokens(match: ActionMatch, name: str, value: Any, interface: HandlerInterface) -> list[str]:
    action = match.action
    kind = action.kind
    if kind in PRESENCE_KINDS:
        if kind == "store_const" and match.via == "dest" and not isinstance(value, bool):
            # Several store_const flags sharing this dest (--json/--yaml -> format): pick by const.
            for other in interface.actions:
                if other.dest == action.dest and other.kind == "store_const" and other.const == value:
                    return [_preferred(other)]
            raise ArgvError(f"argument '{name}': {value!r} is not one of the handler's choices")
        present = _truth(name, value) != match.inverted
        return [_preferred(action)] if present else []
    if kind == "boolean_optional":
        positive = _truth(name, value) != match.inverted
        return [_preferred(action, negative=not positive)]
    if kind == "count":
        count = int(value) if isinstance(value, bool) else value
        if not isinstance(count, int) or count < 0:
            raise ArgvError(f"argument '{name}' must be a count (an integer >= 0), not {value!r}")
        return [_preferred(action)] * count
    option = _preferred(action)
    items = value if isinstance(value, list) else [value]
    if kind == "append":
        tokens: list[str] = []
        for item in items:
            many = action.nargs in LIST_NARGS or isinstance(action.nargs, int)
            values = [_text(v) for v in item] if many and isinstance(item, list) else [_text(item)]
            tokens += _with_option(option, values)
        return tokens
    if kind == "extend" or action.nargs in LIST_NARGS or isinstance(action.nargs, int):
        if not items and action.nargs not in ("*", "..."):
            return []
        return [option, *(_text(v) for v in items)]
    if action.nargs == "?" and value is True and not is_bool_value(action):
        return [option]  # the bare option: argparse stores its const
    return _with_option(option, [_scalar_value(action, value)])


# --------------------------------------------------------------------------------------------------
# Modes and argv.


def argv_mode(
    interface: HandlerInterface,
    *,
    style: str | None = None,
    flag_style: str | None = None,
    positional: list[str] | None = None,
) -> Mode:
    """Which mapping applies (see the module docstring); None means "not set in the manifest"."""
    if style in ("json-argv", "json-stdin"):
        return style  # type: ignore[return-value]
    if style is not None or flag_style is not None or positional is not None:
        return "manifest"
    if interface.json_argv:
        return "json-argv"
    if interface.source == "manifest" or interface.unsupported or not interface.actions:
        return "manifest"
    return "parser"


def _manifest_argv(
    inputs: list[Param], arguments: dict[str, Any], flag_style: str, positional: list[str] | None
) -> list[str]:
    names = {i.name for i in inputs}
    unknown = [k for k in arguments if k not in names]
    if unknown:
        raise ArgvError(
            f"argument '{unknown[0]}' is not an input of this skill ({', '.join(names) or 'none'})"
        )
    order = positional if positional is not None else [i.name for i in inputs if i.required]
    argv = [_text(arguments[n]) for n in order if arguments.get(n) is not None]
    for inp in inputs:
        value = arguments.get(inp.name)
        if inp.name in order or value is None:
            continue
        flag = "--" + (inp.name.replace("_", "-") if flag_style == "kebab" else inp.name)
        if isinstance(value, bool):
            if value:
                argv.append(flag)
            elif inp.default is True:
                argv.append("--no-" + flag[2:])
            continue
        argv += [flag, _text(value)]
    return argv


def _matches(
    interface: HandlerInterface, arguments: dict[str, Any]
) -> dict[int, tuple[str, ActionMatch, Any]]:
    matched: dict[int, tuple[str, ActionMatch, Any]] = {}
    for name, value in arguments.items():
        if value is None:
            continue
        match = match_action(name, interface)
        if match is None:
            known = ", ".join(_public_name(a) for a in interface.actions) or "nothing"
            raise ArgvError(
                f"argument '{name}' is not an option or positional of the handler (it takes: {known})"
            )
        if match.index in matched:
            other = matched[match.index][0]
            raise ArgvError(f"arguments '{other}' and '{name}' both set the handler's {_label(match.action)}")
        matched[match.index] = (name, match, value)
    return matched


def _public_name(action: ParserAction) -> str:
    return action.dest if action.positional else _preferred(action)


def _label(action: ParserAction) -> str:
    return f"positional '{action.dest}'" if action.positional else _preferred(action)


def build_argv(
    interface: HandlerInterface,
    inputs: list[Param],
    arguments: dict[str, Any],
    *,
    style: str | None = None,
    flag_style: str | None = None,
    positional: list[str] | None = None,
) -> list[str]:
    """The handler's arguments (after ``python handler.py``) for these MCP arguments.

    ``style``/``flag_style``/``positional``: the manifest's ``mcp`` settings, None when not set there.
    Raises ``ArgvError`` (a ValueError) for arguments the handler cannot take.
    """
    mode = argv_mode(interface, style=style, flag_style=flag_style, positional=positional)
    if mode == "json-argv":
        return [json.dumps(arguments, ensure_ascii=False)]
    if mode == "json-stdin":
        return []
    if mode == "manifest":
        return _manifest_argv(inputs, arguments, flag_style or "snake", positional)
    matched = _matches(interface, arguments)
    positionals: list[str] = []
    missing: ParserAction | None = None
    for index, action in enumerate(interface.actions):
        if not action.positional:
            continue
        if index not in matched:
            missing = missing or action
            continue
        name, _, value = matched[index]
        if missing is not None:
            raise ArgvError(
                f"argument '{name}' is positional after '{missing.dest}', which is not given: "
                f"the handler reads positionals in order, so give '{missing.dest}' too"
            )
        positionals += _values(action, value)
    options: list[str] = []
    used: dict[int, list[str]] = {}  # group -> input names that produced tokens
    for index, action in enumerate(interface.actions):
        if action.positional or index not in matched:
            continue
        name, match, value = matched[index]
        tokens = _option_tokens(match, name, value, interface)
        if tokens and action.group is not None:
            used.setdefault(action.group, []).append(name)
        options += tokens
    for names in used.values():
        if len(names) > 1:
            raise ArgvError(
                f"arguments {' and '.join(repr(n) for n in names)} cannot be used together "
                "(the handler's parser makes them mutually exclusive)"
            )
    if any(t.startswith("-") and t != "-" for t in positionals):
        return [*options, "--", *positionals]  # a value like "-x" must not be read as an option
    return [*positionals, *options]


# --------------------------------------------------------------------------------------------------
# Schema, mismatches, description.


def _parser_type(action: ParserAction) -> str | None:
    return JSON_TYPES.get(action.type or "")


def _scalar_type(declared: str | None, parsed: str | None) -> str | None:
    """The manifest's type unless the parser's is more precise."""
    if parsed in (None, "string"):
        return declared
    if declared in (None, "string"):
        return parsed
    if declared == "number" and parsed == "integer":
        return "integer"
    return declared


def _required_by_parser(action: ParserAction) -> bool:
    if action.positional:
        return action.nargs not in ("?", "*", "...")
    return action.required


def _enrich(base: dict[str, Any], match: ActionMatch, interface: HandlerInterface) -> dict[str, Any]:
    action = match.action
    schema = dict(base)
    if not schema.get("description") and action.help:
        schema["description"] = action.help.strip()
    kind = action.kind
    shared_const = [a.const for a in interface.actions if a.dest == action.dest and a.kind == "store_const"]
    if kind == "store_const" and match.via == "dest" and len(shared_const) > 1:
        schema.pop("type", None)
        schema.setdefault("enum", shared_const)
    elif kind in PRESENCE_KINDS or kind == "boolean_optional" or is_bool_value(action):
        schema["type"] = "boolean"
        schema.pop("enum", None)
        if "default" not in schema:
            if kind in PRESENCE_KINDS:
                schema["default"] = match.inverted  # the value that sends nothing
            elif isinstance(action.default, bool):
                schema["default"] = action.default != match.inverted
    elif kind == "count":
        schema["type"] = "integer"
        schema["minimum"] = 0
        schema.pop("enum", None)
    elif _is_list(action):
        item: dict[str, Any] = dict(schema.get("items") or {})
        declared = schema.get("type")
        if "type" not in item:
            item_type = _scalar_type(None if declared == "array" else declared, _parser_type(action))
            if item_type:
                item["type"] = item_type
        if action.choices is not None and "enum" not in item:
            item["enum"] = list(action.choices)
        if declared != "array" and "enum" in schema:
            item.setdefault("enum", schema.pop("enum"))
        schema["type"] = "array"
        if item:
            schema["items"] = item
        if action.nargs == "+":
            schema.setdefault("minItems", 1)
        elif isinstance(action.nargs, int) and action.kind == "store":
            schema.setdefault("minItems", action.nargs)
            schema.setdefault("maxItems", action.nargs)
    else:
        json_type = _scalar_type(schema.get("type"), _parser_type(action))
        if json_type:
            schema["type"] = json_type
        if action.choices is not None and "enum" not in schema:
            schema["enum"] = list(action.choices)
    parser_default = action.default is not None and not (kind == "count" and action.default == 0)
    if "default" not in schema and kind not in PRESENCE_KINDS | {"boolean_optional"} and parser_default:
        schema["default"] = action.default
    if action.group is not None:
        partners = [_public_name(a) for a in interface.actions if a.group == action.group and a is not action]
        if partners:
            note = f"Cannot be combined with {', '.join(partners)}."
            if action.group in interface.required_groups:
                note = f"One of this and {', '.join(partners)} is required. " + note
            schema["description"] = f"{schema.get('description', '').rstrip()} {note}".strip()
    return schema


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _resolve(inputs: list[Param], interface: HandlerInterface) -> tuple[dict[str, ActionMatch], list[str]]:
    """Each manifest input that reaches an action (first one wins), and the inputs that do not."""
    resolved: dict[str, ActionMatch] = {}
    taken: set[int] = set()
    lost: list[str] = []
    for inp in inputs:
        match = match_action(inp.name, interface)
        if match is None or match.index in taken:
            lost.append(inp.name)
            continue
        taken.add(match.index)
        resolved[inp.name] = match
    return resolved, lost


def input_schema(
    inputs: list[Param],
    interface: HandlerInterface,
    *,
    style: str | None = None,
    flag_style: str | None = None,
    positional: list[str] | None = None,
) -> dict[str, Any]:
    """The tool's JSON Schema (2020-12): the manifest's inputs enriched by the parser's facts.

    In the parser rule, manifest inputs the parser lacks are left out (they cannot be sent) and
    parser actions the manifest lacks are added, named by dest. Otherwise: the manifest's inputs.
    """
    mode = argv_mode(interface, style=style, flag_style=flag_style, positional=positional)
    if mode != "parser":
        return manifest_schema(inputs)
    resolved, _ = _resolve(inputs, interface)
    by_name = {i.name: i for i in inputs}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, match in resolved.items():
        inp = by_name[name]
        properties[name] = _enrich(inp.json_schema(), match, interface)
        if inp.required or _required_by_parser(match.action):
            required.append(name)
    taken = {m.index for m in resolved.values()}
    for index, action in enumerate(interface.actions):
        if index in taken or action.dest in properties:
            continue
        match = ActionMatch(action, index, "dest", _candidate_inverted(action, action.dest, True))
        properties[action.dest] = _enrich({}, match, interface)
        if _required_by_parser(action):
            required.append(action.dest)
    return _object(properties, required)


def mismatches(
    inputs: list[Param],
    interface: HandlerInterface,
    *,
    style: str | None = None,
    flag_style: str | None = None,
    positional: list[str] | None = None,
) -> list[str]:
    """Disagreements between the manifest's inputs and the handler's parser, one sentence each."""
    problems: list[str] = []
    if interface.unsupported and style is None and flag_style is None and positional is None:
        problems.append(
            f"the handler uses {interface.unsupported}; its arguments follow the manifest's rule "
            "(required inputs positional, optional ones --name value)"
        )
    if argv_mode(interface, style=style, flag_style=flag_style, positional=positional) != "parser":
        return problems
    resolved, lost = _resolve(inputs, interface)
    for name in lost:
        match = match_action(name, interface)
        if match is not None:
            other = next(n for n, m in resolved.items() if m.index == match.index)
            problems.append(
                f"input '{name}' and input '{other}' both reach the handler's {_label(match.action)}; "
                f"'{name}' is left out"
            )
        else:
            known = ", ".join(_public_name(a) for a in interface.actions)
            problems.append(
                f"input '{name}' is not an option or positional of the handler's parser ({known}); "
                "it cannot be sent and is left out of the tool's schema"
            )
    taken = {m.index for m in resolved.values()}
    for index, action in enumerate(interface.actions):
        if index not in taken and _required_by_parser(action):
            problems.append(
                f"the handler requires {_label(action)}, which the manifest does not declare "
                f"(the tool's schema adds it as '{action.dest}')"
            )
    return problems


def _argv_form(match: ActionMatch, interface: HandlerInterface) -> str:
    action = match.action
    if action.positional:
        number = [a for a in interface.actions if a.positional].index(action) + 1
        form = f"positional #{number}"
        if action.nargs in ("?", "*", "..."):
            form += " (optional)"
        if _is_list(action):
            form += ", one item per value"
        return form
    kind = action.kind
    option = _preferred(action)
    if kind == "store_const" and match.via == "dest":
        consts = [a for a in interface.actions if a.dest == action.dest and a.kind == "store_const"]
        if len(consts) > 1:
            return ", ".join(f"{_preferred(a)} when {a.const!r}" for a in consts)
    if kind in PRESENCE_KINDS:
        return f"{option} when {'false' if match.inverted else 'true'}"
    if kind == "boolean_optional":
        positive, negative = _preferred(action, negative=False), _preferred(action, negative=True)
        if match.inverted:
            positive, negative = negative, positive
        return f"{positive} when true, {negative} when false"
    if kind == "count":
        return f"{option} repeated N times"
    if kind == "append":
        return f"{option} VALUE, once per item"
    if _is_list(action):
        return f"{option} VALUE..."
    if is_bool_value(action):
        true, false = _bool_spellings(action)
        return f"{option} {true}|{false}"
    return f"{option} VALUE"


def describe(
    interface: HandlerInterface,
    inputs: list[Param],
    *,
    style: str | None = None,
    flag_style: str | None = None,
    positional: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Per input: how it reaches the handler (``{"input", "argv", "origin", "source"}``)."""
    mode = argv_mode(interface, style=style, flag_style=flag_style, positional=positional)
    source = interface.source
    rows: list[dict[str, Any]] = []

    def row(name: str, form: str, origin: str = "manifest") -> None:
        rows.append({"input": name, "argv": form, "origin": origin, "source": source, "mode": mode})

    if mode in ("json-argv", "json-stdin"):
        where = "argv[1]" if mode == "json-argv" else "stdin"
        for inp in inputs:
            row(inp.name, f"key '{inp.name}' of the JSON object in {where}")
        return rows
    if mode == "manifest":
        order = positional if positional is not None else [i.name for i in inputs if i.required]
        for inp in inputs:
            flag = "--" + (inp.name.replace("_", "-") if flag_style == "kebab" else inp.name)
            if inp.name in order:
                form = f"positional #{order.index(inp.name) + 1}"
            elif inp.type == "boolean":
                form = f"{flag} when true" + (f", --no-{flag[2:]} when false" if inp.default is True else "")
            else:
                form = f"{flag} VALUE"
            row(inp.name, form)
        return rows
    resolved, _ = _resolve(inputs, interface)
    for inp in inputs:
        match = resolved.get(inp.name)
        row(
            inp.name,
            _argv_form(match, interface) if match else "not sent: the handler's parser has no such argument",
        )
    taken = {m.index for m in resolved.values()}
    for index, action in enumerate(interface.actions):
        if index not in taken:
            match = ActionMatch(action, index, "dest", _candidate_inverted(action, action.dest, True))
            row(action.dest, _argv_form(match, interface), "parser")
    return rows
