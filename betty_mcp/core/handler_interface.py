"""A skill handler's command-line interface as betty-mcp knows it: its argparse actions, and where
that knowledge came from (the running parser, a static reading of the source, or the manifest alone).

Plain data, JSON round-trippable for the cache. How it is read is ``run/interface.py``; how
arguments are mapped onto it is ``run/argv.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Source = Literal["parser", "ast", "manifest"]
ACTION_KINDS = (
    "store",
    "store_const",
    "store_true",
    "store_false",
    "boolean_optional",
    "count",
    "append",
    "append_const",
    "extend",
)
# Kinds whose option takes no value: nargs is recorded as None for them.
FLAG_KINDS = frozenset(
    {"store_const", "store_true", "store_false", "boolean_optional", "count", "append_const"}
)
UNSUPPORTED_SUBPARSERS = "subcommands (argparse subparsers)"


@dataclass(frozen=True)
class ParserAction:
    """One argparse action (help/version actions are skipped)."""

    dest: str
    option_strings: tuple[str, ...] = ()  # empty for positionals
    kind: str = "store"  # one of ACTION_KINDS
    nargs: int | str | None = None  # None, an int, "?", "*", "+" or "..." (REMAINDER)
    required: bool = False
    type: str | None = None  # "int", "float", "str", or the callable's __name__
    choices: list[Any] | None = None
    default: Any = None
    help: str | None = None
    group: int | None = None  # index of its mutually exclusive group
    const: Any = None  # store_const/append_const value

    @property
    def positional(self) -> bool:
        return not self.option_strings

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["option_strings"] = list(self.option_strings)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParserAction:
        kind = data.get("kind", "store")
        if kind not in ACTION_KINDS:
            raise ValueError(f"unknown action kind {kind!r}")
        nargs = data.get("nargs")
        if nargs is not None and not isinstance(nargs, int | str):
            raise ValueError(f"bad nargs {nargs!r}")
        choices = data.get("choices")
        return cls(
            dest=str(data["dest"]),
            option_strings=tuple(str(o) for o in data.get("option_strings") or ()),
            kind=kind,
            nargs=nargs,
            required=bool(data.get("required", False)),
            type=None if data.get("type") is None else str(data["type"]),
            choices=None if choices is None else list(choices),
            default=data.get("default"),
            help=data.get("help"),
            group=data.get("group"),
            const=data.get("const"),
        )


@dataclass(frozen=True)
class HandlerInterface:
    """What betty-mcp knows about how a handler reads its arguments, and where that came from."""

    source: Source
    actions: tuple[ParserAction, ...] = ()
    json_argv: bool = False  # the handler reads one JSON object from sys.argv[1]
    unsupported: str | None = None  # e.g. "subcommands (argparse subparsers)"
    problem: str | None = None  # why capture failed or was not attempted, for people
    required_groups: tuple[int, ...] = ()  # mutually exclusive groups with required=True
    capture_ms: float | None = None  # how long reading the interface took

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "actions": [a.as_dict() for a in self.actions],
            "json_argv": self.json_argv,
            "unsupported": self.unsupported,
            "problem": self.problem,
            "required_groups": list(self.required_groups),
            "capture_ms": self.capture_ms,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HandlerInterface:
        source = data.get("source")
        if source not in ("parser", "ast", "manifest"):
            raise ValueError(f"unknown interface source {source!r}")
        capture_ms = data.get("capture_ms")
        return cls(
            source=source,
            actions=tuple(ParserAction.from_dict(a) for a in data.get("actions") or ()),
            json_argv=bool(data.get("json_argv", False)),
            unsupported=data.get("unsupported"),
            problem=data.get("problem"),
            required_groups=tuple(int(g) for g in data.get("required_groups") or ()),
            capture_ms=None if capture_ms is None else float(capture_ms),
        )
