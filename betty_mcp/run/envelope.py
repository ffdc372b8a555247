"""Reading a handler's stdout: the last complete JSON document, normalised into one shape.

Betty handlers print logs before their JSON and use several envelopes
(``ok``/``status``/``success``/``valid``, payload under ``data`` or ``details``). Every one
becomes ``{"ok": bool, "status": "success"|"failed", ...payload, "errors": [...]}``.
"""

from __future__ import annotations

import json
from typing import Any

_DECODER = json.JSONDecoder()
_SUCCESS = {"success", "ok", "completed", "complete", "done", "passed", "valid"}
_FAILURE = {"failed", "failure", "error", "errored", "invalid", "fail"}
_ENVELOPE_KEYS = {"ok", "status", "success", "data", "details"}


def last_json_document(text: str) -> Any:
    """The last complete JSON value on stdout that starts a line and ends one; ``None`` when there is none.

    Log lines before it are skipped, and so are text lines after it ("✓ Telemetry captured"):
    candidates are lines starting with ``{`` or ``[``, tried from the last one upwards.
    """
    stripped = text.rstrip()
    pos = len(stripped)
    while pos > 0:
        pos = stripped.rfind("\n", 0, pos)
        start = pos + 1
        if stripped[start : start + 1] in ("{", "["):
            try:
                value, stop = _DECODER.raw_decode(stripped, start)
            except (json.JSONDecodeError, RecursionError):
                value, stop = None, -1
            line_end = stripped.find("\n", stop) if stop >= 0 else -1
            rest = stripped[stop : len(stripped) if line_end < 0 else line_end] if stop >= 0 else "x"
            if not rest.strip():
                return value
        if pos < 0:
            break
    return None


def _verdict(doc: dict[str, Any]) -> bool | None:
    if isinstance(doc.get("ok"), bool):
        return doc["ok"]
    if isinstance(doc.get("success"), bool):
        return doc["success"]
    status = doc.get("status")
    if isinstance(status, str):
        if status.lower() in _SUCCESS:
            return True
        if status.lower() in _FAILURE:
            return False
    if isinstance(doc.get("valid"), bool):
        return doc["valid"]
    return None


def normalise(doc: Any, exit_code: int) -> dict[str, Any]:
    """One result shape from any envelope; a non-zero exit always means failure."""
    if not isinstance(doc, dict):
        ok = exit_code == 0
        return {"ok": ok, "status": "success" if ok else "failed", "result": doc}
    verdict = _verdict(doc)
    ok = (verdict if verdict is not None else True) and exit_code == 0
    result: dict[str, Any] = {"ok": ok, "status": "success" if ok else "failed"}
    for key in ("data", "details"):
        payload = doc.get(key)
        if isinstance(payload, dict):
            result.update({k: v for k, v in payload.items() if k not in ("ok", "status")})
        elif payload is not None:
            result[key] = payload
    result.update({k: v for k, v in doc.items() if k not in _ENVELOPE_KEYS})
    if not ok and not result.get("errors"):
        message = doc.get("error") or doc.get("message")
        if isinstance(message, str) and message:
            result["errors"] = [{"message": message}]
    return result
