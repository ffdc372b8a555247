"""Reading YAML and JSON documents safely: the one loader for manifests, config and handler inputs.

Safe YAML only (no Python objects), with bounds a hostile file cannot get past: a size cap
(read before parsing) and a cap on the nodes that aliases expand to, so a few hundred bytes of
``&a [*a, *a, ...]`` cannot cost gigabytes. Errors are ``DocumentError`` naming the file and where.

    data = parse_document(text, source="skills/x/skill.yaml")
    data = read_document(Path("betty.yaml"))
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from betty_mcp.core.errors import DocumentError

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
# Nodes a document may hold, aliases expanded (a large real OpenAPI document has ~10^5).
MAX_EXPANDED_NODES = 2_000_000
# A real skill.yaml or agent.yaml holds a few hundred: more is refused before any validation.
MAX_MANIFEST_NODES = 20_000


def read_document(
    path: Path, *, max_bytes: int = MAX_DOCUMENT_BYTES, max_nodes: int = MAX_EXPANDED_NODES
) -> Any:
    """Read and parse ``path`` (JSON when it ends in .json, else YAML), refusing files over ``max_bytes``
    and documents of more than ``max_nodes`` values (aliases expanded)."""
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise DocumentError(f"{path}: larger than {max_bytes // 1024} KiB; refusing to read it")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError(f"{path}: not UTF-8 text") from None
    return parse_document(text, source=str(path), max_nodes=max_nodes)


def parse_document(text: str, *, source: str, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    if source.endswith(".json"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(
                f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        except RecursionError:
            raise DocumentError(f"{source}: nested too deeply") from None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        if max_nodes < MAX_EXPANDED_NODES:  # building Python objects is the slow part: count events first
            _check_events(yaml.parse(text, Loader=loader), source, max_nodes)
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise DocumentError(f"{source}: nested too deeply") from None
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        # PyYAML's constructor fails this way on scalars it resolves but cannot build (2024-02-30, !!int x)
        raise DocumentError(f"{source}: invalid YAML value: {exc}") from None
    if max_nodes < MAX_EXPANDED_NODES or "&" in text:  # small budgets always; else only when aliases exist
        _check_expansion(data, source, max_nodes)
    return data


def _check_events(events: Any, source: str, max_nodes: int) -> None:
    """Refuse a document with more YAML events than ``max_nodes`` values could need (a few per value)."""
    for count, _ in enumerate(events):
        if count > 4 * max_nodes:
            raise DocumentError(f"{source}: more than {max_nodes:,} values; refusing it (not a manifest?)")


def _check_expansion(data: Any, source: str, max_nodes: int) -> None:
    """Refuse a document holding more than ``max_nodes`` values, aliases counted each time they are used."""
    budget = max_nodes
    stack = [data]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise DocumentError(
                f"{source}: more than {max_nodes:,} values (aliases expanded); refusing it "
                "(a YAML alias bomb, or not a manifest?)"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
            stack.extend(node.keys())
        elif isinstance(node, list):
            stack.extend(node)


def write_atomically(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` all at once (a temporary file renamed over it); False if it failed.

    Readers see the old content or the new, never a part: for caches several processes share.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return False
    return True
