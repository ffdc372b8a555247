"""Run traces: one JSON Lines file per agent run, ``<runs_dir>/<run_id>.jsonl``.

Events, in order: ``run_started`` (user, agent, task, model override, limits, skills offered and
missing), then per model call ``llm_request`` (message count, tool names) and
``llm_response`` (model, text summary, tool calls, tokens, cost, ms, fallbacks) or
``llm_error``, per skill call ``skill_call`` and ``skill_result`` (ok, summary, ms) or
``refusal``, and last ``run_finished`` (status, answer summary, totals). Texts are cut to
about 500 characters and every string is scrubbed of secret environment values. Each line
is written and flushed at once (a plain write: a cancelled run can still record its end).

    trace = TraceWriter.open(settings.runs_dir, run_id)
    trace.event("run_started", agent="api.analyzer")
    list_runs(settings.runs_dir)  # [{"run_id", "user", "agent", "status", "started", "steps", ...}]
    trace_user(path)              # who started the run ("local" for traces older than users)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from betty_mcp.agent.state import now_iso
from betty_mcp.core.secrets import scrub_data, secret_values

SUMMARY_CHARS = 500
LEGACY_USER = "local"  # traces written before runs had users were the local user's


def summarise(text: str | None, limit: int = SUMMARY_CHARS) -> str:
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}... (+{len(text) - limit} chars)"


def scrub_value(value: Any, secrets: list[str]) -> Any:
    """``value`` with every string in it (keys too) scrubbed of ``secrets`` (every secret variable's
    value: secret-looking names and every configured ``api_key_env``)."""
    return scrub_data(value, secrets)


class TraceWriter:
    def __init__(self, path: Path, stream: TextIO) -> None:
        self.path = path
        self._stream = stream

    @classmethod
    def open(cls, runs_dir: Path, run_id: str) -> TraceWriter:
        runs_dir.mkdir(parents=True, exist_ok=True)
        path = runs_dir / f"{run_id}.jsonl"
        return cls(path, path.open("a", encoding="utf-8"))

    def event(self, name: str, /, **fields: Any) -> None:
        record = scrub_value({"ts": now_iso(), "event": name, **fields}, secret_values())
        self._stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The events of one trace; a line cut short by a crash is skipped."""
    events: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def trace_user(path: Path) -> str:
    """The user who started the traced run: its first line's ``user`` (``run_started`` comes first)."""
    try:
        with path.open(encoding="utf-8") as f:
            first = json.loads(f.readline() or "{}")
    except (OSError, ValueError):
        return LEGACY_USER
    user = first.get("user") if isinstance(first, dict) else None
    return user if isinstance(user, str) else LEGACY_USER


def run_summary(path: Path) -> dict[str, Any]:
    """run id, user, agent, status ("running" until run_finished is written), start time, steps, answer."""
    events = read_trace(path)
    started = next((e for e in events if e.get("event") == "run_started"), {})
    finished = next((e for e in reversed(events) if e.get("event") == "run_finished"), None)
    steps = (
        finished.get("totals", {}).get("steps")
        if finished
        else sum(e.get("event") in ("llm_response", "llm_error", "skill_result", "refusal") for e in events)
    )
    return {
        "run_id": started.get("run_id", path.stem),
        "user": started.get("user", LEGACY_USER),
        "agent": started.get("agent"),
        "task": started.get("task"),
        "status": finished.get("status") if finished else "running",
        "started": started.get("ts"),
        "finished": finished.get("ts") if finished else None,
        "steps": steps,
        "answer": finished.get("answer") if finished else None,
        "path": str(path),
    }


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """A summary of every run traced under ``runs_dir``, newest first."""
    if not runs_dir.is_dir():
        return []
    runs = [run_summary(p) for p in runs_dir.glob("*.jsonl") if p.is_file()]
    return sorted(runs, key=lambda r: r["started"] or "", reverse=True)
