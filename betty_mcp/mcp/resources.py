"""MCP resources: skill and agent manifests, skill docs, and saved outputs of large results.

betty://skills/api.validate           the manifest (YAML)
betty://skills/api.validate/SKILL.md  its documentation
betty://agents/api.designer           an agent's manifest
betty://outputs/<id>                  the full result of a call whose result was cut

Each caller sees the skills and agents of their role and their own runs (an admin, every run).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mcp_types as types

from betty_mcp.agent.trace import LEGACY_USER
from betty_mcp.core.errors import PathOutsideWorkspace
from betty_mcp.core.identity import current_caller
from betty_mcp.core.rules import OUTPUT_ID, confined, run_id_problem
from betty_mcp.services import Services

LISTED_RUNS = 50
log = logging.getLogger(__name__)


class Resources:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def list(self) -> list[types.Resource]:
        found: list[types.Resource] = []
        for skill in self.services.skills().values():
            found.append(_manifest("skill", skill.name, skill.manifest.description))
            if skill.docs is not None:
                found.append(
                    types.Resource(
                        uri=f"betty://skills/{skill.name}/{skill.docs.name}",
                        name=f"skill {skill.name} docs",
                        title=f"{skill.name} {skill.docs.name}",
                        mime_type="text/markdown",
                    )
                )
        found += [_manifest("agent", a.name, a.manifest.description) for a in self.services.agents().values()]
        caller = current_caller()
        whose = None if caller.is_admin else caller.user  # an admin sees every run, others their own
        found += [
            types.Resource(
                uri=f"betty://runs/{run_id}",
                name=f"run {run_id}",
                title=f"agent run {run_id}",
                mime_type="application/jsonl",
            )
            for run_id in await self.services.store.traced_runs(LISTED_RUNS, user=whose)
        ]
        return found

    def _state_file(self, uri: str, relative: Path, mime: str) -> types.TextResourceContents | None:
        """A file of the runs folder, never through a symlink leading out of the workspace."""
        settings = self.services.settings
        try:
            path = confined(settings.runs_dir / relative, settings.workspace)
        except PathOutsideWorkspace as exc:
            log.warning("resource %s refused: %s", uri, exc)
            return None
        return _text(uri, path.read_text(encoding="utf-8"), mime) if path.is_file() else None

    async def _trace(self, uri: str, run_id: str) -> types.TextResourceContents | None:
        """A run's trace as JSON Lines, from whichever instance ran it (the store keeps it); another
        user's is, to anyone but an admin, like one that does not exist."""
        store = self.services.store
        if not current_caller().may_see(await store.trace_user(run_id) or LEGACY_USER):
            return None
        if store.backend == "sqlite":  # a file of the runs folder: never through a symlink out of it
            return self._state_file(uri, Path(f"{run_id}.jsonl"), "application/jsonl")
        events = await store.events(run_id)
        if events is None:
            return None
        lines = "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in events)
        return _text(uri, lines, "application/jsonl")

    def templates(self) -> list[types.ResourceTemplate]:
        return [
            types.ResourceTemplate(
                uri_template="betty://runs/{id}",
                name="agent run trace",
                description="Every model request and response (summarised) and skill call of an agent run.",
                mime_type="application/jsonl",
            ),
            types.ResourceTemplate(
                uri_template="betty://outputs/{id}",
                name="skill output",
                description="The full result of a skill call whose result was too large to return inline.",
                mime_type="application/json",
            ),
        ]

    async def read(self, uri: str) -> types.TextResourceContents | None:
        kind, _, rest = uri.removeprefix("betty://").partition("/")
        if kind == "skills":
            name, _, doc = rest.partition("/")
            skill = self.services.skills().get(name)
            if skill is None:
                return None
            if not doc:
                return _text(uri, skill.manifest_path.read_text(encoding="utf-8"), "application/yaml")
            if skill.docs is not None and doc == skill.docs.name:
                return _text(uri, skill.docs.read_text(encoding="utf-8"), "text/markdown")
            return None
        if kind == "agents":
            agent = self.services.agents().get(rest)
            return (
                _text(uri, agent.manifest_path.read_text(encoding="utf-8"), "application/yaml")
                if agent
                else None
            )
        if kind == "runs" and run_id_problem(rest) is None:
            return await self._trace(uri, rest)
        if kind == "outputs" and OUTPUT_ID.match(rest):
            return self._state_file(uri, Path("outputs") / f"{rest}.json", "application/json")
        return None


def _manifest(kind: str, name: str, description: str) -> types.Resource:
    return types.Resource(
        uri=f"betty://{kind}s/{name}",
        name=f"{kind} {name}",
        title=f"{name} manifest",
        description=description.strip()[:300] or None,
        mime_type="application/yaml",
    )


def _text(uri: str, text: str, mime: str) -> types.TextResourceContents:
    return types.TextResourceContents(uri=uri, text=text, mime_type=mime)
