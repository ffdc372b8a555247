"""Parsed manifests kept between starts, keyed by path, size and modification time.

Parsing YAML is most of the cost of loading a large catalogue (about half a millisecond a
manifest); reading one JSON file of already parsed manifests costs a few microseconds each. The
cache holds the parsed data only, never a validation result: every start validates as before, so
a change of the rules applies to cached manifests too. A file modified in the last two seconds is
not cached (a coarse clock could give a quick second edit the same time); data JSON cannot hold
exactly (dates, non-string keys) is not cached either. A cache that cannot be read or written only
makes start-up slower.

    cache = ManifestCache(settings.cache_dir / "manifests.json")
    data = cache.data(path, read_yaml)      # parsed once, then from the cache until the file changes
    cache.save()
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from betty_mcp.core.documents import write_atomically

CACHE_FORMAT = 1
SETTLE_SECONDS = 2.0


class ManifestCache:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries = self._load()
        self._used: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.path is None:
            return {}
        try:
            document = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT:
            return {}
        entries = document.get("entries")
        return entries if isinstance(entries, dict) else {}

    def data(self, path: Path, read: Callable[[Path], Any]) -> Any:
        """The parsed content of ``path``: from the cache while the file is unchanged, else ``read(path)``."""
        try:
            info = os.stat(path)
        except OSError:
            return read(path)  # let the reader say what is wrong
        key = str(path)
        entry = self._entries.get(key)
        if (
            isinstance(entry, dict)
            and entry.get("size") == info.st_size
            and entry.get("mtime_ns") == info.st_mtime_ns
            and "data" in entry
        ):
            self._used[key] = entry
            return entry["data"]
        data = read(path)
        if time.time() - info.st_mtime_ns / 1e9 > SETTLE_SECONDS and _exact_in_json(data):
            self._used[key] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "data": data}
        return data

    def save(self) -> None:
        """Write the entries used since this cache was opened (others are gone or elsewhere), if changed."""
        if self.path is None or self._used == self._entries:
            return
        text = json.dumps({"format": CACHE_FORMAT, "entries": self._used}, separators=(",", ":"))
        if write_atomically(self.path, text):
            self._entries = dict(self._used)


def _exact_in_json(data: Any) -> bool:
    """Whether ``data`` comes back from JSON as it is (no dates, tuples or non-string keys)."""
    if data is None or isinstance(data, str | bool | int | float):
        return True
    if isinstance(data, list):
        return all(_exact_in_json(item) for item in data)
    if isinstance(data, dict):
        return all(isinstance(k, str) and _exact_in_json(v) for k, v in data.items())
    return False
