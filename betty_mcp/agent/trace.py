"""Run traces: the events of each run, kept by the store (``<runs_dir>/<run_id>.jsonl`` with SQLite,
``run_events`` with PostgreSQL), readable as ``betty://runs/<id>``.

Events, in order: ``run_started`` (user, agent, task, model override, limits, skills offered and
missing), then per model call ``llm_request`` (message count, tool names) and
``llm_response`` (model, text summary, tool calls, tokens, cost, ms, fallbacks) or
``llm_error``, per skill call ``skill_call`` and ``skill_result`` (ok, summary, ms) or
``refusal``, and last ``run_finished`` (status, answer summary, totals). Texts are cut to
about 500 characters and every string is scrubbed of secret environment values. Each line
is handed to the store at once, without awaiting (a cancelled run can still record its end).

    trace = TraceWriter(store, run_id)
    trace.event("run_started", agent="api.analyzer")
    await list_runs(store)  # [{"run_id", "user", "agent", "status", "started", "steps", ...}]
    await store.trace_user(run_id)  # who started the run ("local" for traces older than users)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from betty_mcp.agent.state import now_iso
from betty_mcp.core.identity import LOCAL
from betty_mcp.core.secrets import scrub_data, secret_values

if TYPE_CHECKING:
    from betty_mcp.store import Store

SUMMARY_CHARS = 500
LEGACY_USER = LOCAL.user  # traces written before runs had users were the local user's


def summarise(text: str | None, limit: int = SUMMARY_CHARS) -> str:
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}... (+{len(text) - limit} chars)"


def scrub_value(value: Any, secrets: list[str]) -> Any:
    """``value`` with every string in it (keys too) scrubbed of ``secrets`` (every secret variable's
    value: secret-looking names and every configured ``api_key_env``)."""
    return scrub_data(value, secrets)


class TraceWriter:
    """The events of one run, written to the store (a JSON Lines file with SQLite, ``run_events`` rows
    with PostgreSQL). ``path`` is where a person finds them."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store = store
        self.run_id = run_id
        self.path = store.trace_location(run_id)

    def event(self, name: str, /, **fields: Any) -> None:
        record = scrub_value({"ts": now_iso(), "event": name, **fields}, secret_values())
        self.store.append_event(self.run_id, record)


def summarise_trace(run_id: str, events: list[dict[str, Any]], location: str) -> dict[str, Any]:
    """run id, user, agent, status ("running" until run_finished is written), start time, steps, answer."""
    started = next((e for e in events if e.get("event") == "run_started"), {})
    finished = next((e for e in reversed(events) if e.get("event") == "run_finished"), None)
    steps = (
        finished.get("totals", {}).get("steps")
        if finished
        else sum(e.get("event") in ("llm_response", "llm_error", "skill_result", "refusal") for e in events)
    )
    return {
        "run_id": started.get("run_id", run_id),
        "user": started.get("user") or LEGACY_USER,
        "agent": started.get("agent"),
        "task": started.get("task"),
        "status": finished.get("status") if finished else "running",
        "started": started.get("ts"),
        "finished": finished.get("ts") if finished else None,
        "steps": steps,
        "answer": finished.get("answer") if finished else None,
        "path": location,
    }


async def list_runs(store: Store, limit: int = 200, user: str | None = None) -> list[dict[str, Any]]:
    """A summary of every traced run (the most recent ``limit``; only ``user``'s, if given), newest
    first."""
    runs = []
    for run_id in await store.traced_runs(limit, user=user):
        events = await store.events(run_id)
        if events is not None:
            runs.append(summarise_trace(run_id, events, store.trace_location(run_id)))
    return sorted(runs, key=lambda r: r["started"] or "", reverse=True)
