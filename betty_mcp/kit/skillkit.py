"""The small toolkit every bundled skill handler is written with.

A handler is a plain script run as ``python handler.py ARGS`` (the Betty convention):
required inputs positional in declared order, optional ones as ``--name value``, booleans
as bare flags, arrays and objects as JSON text. It prints one JSON envelope on stdout:

    {"ok": true, "status": "success", "data": {...}}
    {"ok": false, "status": "failed", "errors": [{"code": "...", "message": "..."}]}

and exits 0 on success, 1 on failure. Usage::

    def handle(args: argparse.Namespace) -> dict:
        spec = load_document(args.spec_path)
        return {"title": spec["info"]["title"]}

    if __name__ == "__main__":
        run(handle, parser)

This module is imported by every handler process, so it imports only the standard library
(YAML is imported on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from betty_mcp.core.rules import ALLOWED_ROOTS_ENV, WORKSPACE_ENV, failure_envelope


class SkillError(Exception):
    """A failure the caller can act on; becomes the failure envelope's error."""

    def __init__(self, message: str, code: str = "invalid_input", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details

    def as_error(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors become failure envelopes, not bare usage text."""

    def error(self, message: str) -> NoReturn:
        raise SkillError(f"bad arguments: {message}", code="bad_arguments")


def parser(description: str) -> argparse.ArgumentParser:
    return _Parser(description=description)


def json_arg(text: str) -> Any:
    """argparse ``type=`` for inputs passed as JSON text (arrays, objects)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at char {exc.pos})") from None


def workspace() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or os.getcwd()).resolve()


def allowed_roots() -> list[Path]:
    extra = [Path(p).resolve() for p in os.environ.get(ALLOWED_ROOTS_ENV, "").split(os.pathsep) if p]
    return [workspace(), *extra]


def workspace_path(value: str, *, must_exist: bool = False, kind: str = "path") -> Path:
    """Resolve ``value`` against the workspace and refuse anything outside the allowed roots."""
    if not isinstance(value, str) or not value.strip():
        raise SkillError(f"{kind} must be a non-empty string")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = workspace() / path
    path = path.resolve()
    if not any(path == root or path.is_relative_to(root) for root in allowed_roots()):
        raise SkillError(
            f"{kind} '{value}' resolves to {path}, outside the workspace {workspace()}",
            code="path_outside_workspace",
        )
    if must_exist and not path.exists():
        raise SkillError(f"{kind} '{value}' does not exist (looked at {path})", code="not_found")
    return path


def load_document(value: str, *, kind: str = "file") -> Any:
    """Read a YAML or JSON file inside the workspace, with a precise error for each failure."""
    path = workspace_path(value, must_exist=True, kind=kind)
    if path.is_dir():
        raise SkillError(f"{kind} '{value}' is a directory, not a file", code="not_a_file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SkillError(f"{kind} '{value}' is not UTF-8 text", code="unreadable") from None
    return parse_document(text, source=str(value))


def parse_document(text: str, *, source: str) -> Any:
    from betty_mcp.core.documents import DocumentError, parse_document

    try:
        return parse_document(text, source=source)
    except DocumentError as exc:
        raise SkillError(str(exc), code="parse_error") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def emit(envelope: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(envelope, ensure_ascii=False, default=str))
    sys.stdout.write("\n")
    sys.stdout.flush()


def failure(errors: list[dict[str, Any]], data: dict[str, Any] | None = None) -> dict[str, Any]:
    envelope: dict[str, Any] = {**failure_envelope(""), "errors": errors}
    if data is not None:
        envelope["data"] = data
    return envelope


def run(
    handle: Callable[[argparse.Namespace], dict[str, Any]], argparser: argparse.ArgumentParser
) -> NoReturn:
    """Parse argv, call ``handle`` and print its envelope; exit 0 on success, 1 on failure.

    ``handle`` returns the success payload, or raises SkillError. A payload carrying
    ``"ok": False`` (a check that found problems) is emitted as a failure with its data.
    """
    try:
        args = argparser.parse_args()
        data = handle(args)
    except SkillError as exc:
        emit(failure([exc.as_error()]))
        sys.exit(1)
    except Exception as exc:  # a bug in the handler: say so plainly, keep the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        emit(failure([{"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}]))
        sys.exit(1)
    ok = data.pop("ok", True) if isinstance(data, dict) else True
    if ok:
        emit({"ok": True, "status": "success", "data": data})
        sys.exit(0)
    errors = data.pop("errors", None) or [{"code": "failed", "message": "the check failed"}]
    emit(failure(errors, data))
    sys.exit(1)
