"""A handler's real interface, read once and cached: ``interface_for`` = the cache, else a capture
(``interface_capture``), or the static reading (``interface_static``) when running the handler would
be unsafe, else an empty "manifest" interface (betty-mcp then maps arguments from the manifest).

The cache is one JSON file keyed by the handler's resolved path and interpreter, valid while the
handler's size and mtime are unchanged; a failed capture is retried after FAILURE_TTL_SECONDS.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from betty_mcp.core.documents import write_atomically
from betty_mcp.core.handler_interface import HandlerInterface
from betty_mcp.run.interface_capture import capture, ms_since
from betty_mcp.run.interface_static import scan_file

CACHE_FORMAT = 1
SAVE_EVERY_SECONDS = 1.0
# A failed capture (timeout, import error...) may succeed once the environment is fixed: retry then.
FAILURE_TTL_SECONDS = 600.0


class InterfaceCache:
    """Captured interfaces in one JSON file, keyed by handler path + size + mtime_ns + interpreter.

    A corrupt or unreadable file counts as empty. Writes are atomic (temp file + os.replace). A failed
    capture is kept ``failure_ttl`` seconds only (the environment may get fixed); the rest until the
    handler file changes.
    """

    def __init__(self, path: Path, *, failure_ttl: float = FAILURE_TTL_SECONDS) -> None:
        self.path = path
        self.failure_ttl = failure_ttl
        self._entries: dict[str, dict[str, Any]] = {}
        self._stamp: tuple[int, int] | None = None
        self._pending: dict[str, dict[str, Any]] = {}  # stored, not written yet
        self._batching = False
        self._saved_at = 0.0

    @staticmethod
    def _key(handler: Path, python: str) -> tuple[str, dict[str, int]] | None:
        # The absolute path, not the resolved one: one stat instead of one per path component (a
        # catalogue's worth at every start); stat follows a symlink, so a re-pointed one is noticed.
        path = os.path.abspath(handler)
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return f"{path}\0{python}", {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            stat = self.path.stat()
        except OSError:
            self._entries, self._stamp = {}, None
            return self._entries
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            entries: dict[str, dict[str, Any]] = {}
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
                    raw = data.get("entries")
                    if isinstance(raw, dict):
                        entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
            except (OSError, ValueError, UnicodeDecodeError):
                entries = {}
            self._entries, self._stamp = entries, stamp
        return self._entries

    def get(self, handler: Path, python: str) -> HandlerInterface | None:
        key = self._key(handler, python)
        if key is None:
            return None
        name, stamp = key
        entry = self._pending.get(name) or self._load().get(name)
        if not entry or entry.get("size") != stamp["size"] or entry.get("mtime_ns") != stamp["mtime_ns"]:
            return None
        if entry.get("retry") and time.time() - float(entry.get("stored_at", 0)) > self.failure_ttl:
            return None
        try:
            return HandlerInterface.from_dict(entry["interface"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    def put(self, handler: Path, python: str, interface: HandlerInterface, *, retry: bool = False) -> None:
        """Store ``interface``; ``retry``: a failed capture, to try again after ``failure_ttl``. Within
        ``batch()``, the file is written at most every SAVE_EVERY_SECONDS and when the batch ends."""
        key = self._key(handler, python)
        if key is None:
            return
        name, stamp = key
        entry = {"stored_at": time.time(), "retry": retry, "interface": interface.as_dict()}
        self._pending[name] = {**stamp, **entry}
        if not self._batching or time.monotonic() - self._saved_at > SAVE_EVERY_SECONDS:
            self.save()

    def save(self) -> None:
        """Write the entries stored since the last save (merged into the file's current ones)."""
        if not self._pending:
            return
        entries = {**self._load(), **self._pending}
        text = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True)
        self._saved_at = time.monotonic()
        if write_atomically(self.path, text):  # else: a cache that cannot be written is only slower
            self._entries, self._stamp, self._pending = entries, None, {}

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many ``put`` calls, one write (reading a whole catalogue's interfaces rewrote it per handler)."""
        self._batching, self._saved_at = True, time.monotonic()
        try:
            yield
        finally:
            self._batching = False
            self.save()


def interface_for(
    handler: Path,
    *,
    python: str,
    env: dict[str, str],
    cwd: Path,
    cache: InterfaceCache | None = None,
    timeout: float = 5.0,
    refresh: bool = False,
) -> HandlerInterface:
    """The cached interface, else: capture (then ast), or ast alone when the source shows the handler
    cannot reach argparse, else an empty source "manifest" interface. The result is cached."""
    if cache is not None and not refresh:
        hit = cache.get(handler, python)
        if hit is not None:
            return hit
    started = time.perf_counter()
    scan = scan_file(handler)
    retry = False
    if not handler.is_file():
        result = HandlerInterface(source="manifest", problem=f"handler not found: {handler}")
    elif scan is None:
        result = HandlerInterface(source="manifest", problem="handler source cannot be parsed")
    elif (reason := scan.skip_reason()) is not None:
        static = scan.interface()
        problem = f"not run: {reason}"
        result = replace(static, problem=problem) if static else HandlerInterface("manifest", problem=problem)
        result = replace(result, capture_ms=ms_since(started))
    else:
        result = capture(handler, python=python, env=env, cwd=cwd, timeout=timeout)
        retry = result.source != "parser"
    if cache is not None:
        cache.put(handler, python, result, retry=retry)
    return result
