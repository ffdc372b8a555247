"""The skill and agent registry: ``registry/skills.json`` and ``registry/agents.json`` in a workspace.

Each file is ``{registry_version, generated_at, skills|agents: [{...manifest, updated_at}]}``, one
entry per name. Writes are serialised with ``fcntl.flock`` on a lock file beside the registry and
land atomically (temporary file + ``os.replace``), so concurrent writers lose nothing and readers
never see half a file. Registration refuses what would corrupt history: a different manifest under
an active version already registered, a version lower than the registered one, a non-semver
version. Queries filter by name, tag, status and capability, fuzzily by default, best match first.

    registry = Registry(workspace)
    outcome = registry.register("skills", manifest)          # outcome.action: added|updated|unchanged
    matches = registry.query("skills", name="validat")        # [{...entry, "score": 0.93}, ...]

Also here, because every framework skill needs them: Betty's naming rule and manifest reading
with the loader's own models (imported on first use, so queries stay light).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from betty_mcp.core.errors import PathOutsideWorkspace
from betty_mcp.core.rules import STATUSES, confined
from betty_mcp.kit.skillkit import SkillError

Kind = Literal["skills", "agents"]
KINDS: tuple[Kind, ...] = ("skills", "agents")
MANIFEST_FILES: dict[str, Kind] = {"skill.yaml": "skills", "agent.yaml": "agents"}
REGISTRY_VERSION = "1.0.0"
FUZZY_THRESHOLD = 0.6
SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


class RegistryError(SkillError):
    """A registration or query the registry refuses; the message says why and what to do."""


@dataclass(frozen=True)
class Registration:
    action: Literal["added", "updated", "unchanged"]
    kind: Kind
    name: str
    version: str
    previous_version: str | None
    path: Path
    written: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "previous_version": self.previous_version,
            "registry_path": str(self.path),
            "written": self.written,
        }


def parse_version(version: Any, *, subject: str = "version") -> Version:
    """A semantic version (``MAJOR.MINOR.PATCH[-pre][+build]``) as a comparable ``Version``."""
    text = str(version) if isinstance(version, int | float) else version
    if not isinstance(text, str) or not SEMVER.match(text):
        raise RegistryError(
            f"{subject} {version!r} is not a semantic version; write MAJOR.MINOR.PATCH, e.g. '1.2.0'",
            code="invalid_version",
        )
    try:
        return Version(text)
    except InvalidVersion:
        raise RegistryError(
            f"{subject} {text!r} cannot be ordered: use a pre-release tag like -alpha.1, -beta.2 or -rc.1",
            code="invalid_version",
        ) from None


def kind_of(path: Path, declared: str | None = None) -> Kind:
    """``skills`` or ``agents`` for a manifest file: from ``declared`` or the file name."""
    by_name = MANIFEST_FILES.get(path.name)
    if declared is not None:
        kind = {"skill": "skills", "agent": "agents"}.get(declared, declared)
        if kind not in KINDS:
            raise RegistryError(f"kind must be 'skills' or 'agents', not {declared!r}")
        if by_name is not None and by_name != kind:
            raise RegistryError(
                f"{path} is named {path.name}, which holds {by_name}, but kind is '{declared}'"
            )
        return kind  # type: ignore[return-value]
    if by_name is None:
        raise RegistryError(
            f"cannot tell whether {path} is a skill or an agent manifest: name it skill.yaml or agent.yaml, "
            "or pass kind"
        )
    return by_name


def manifest_file(value: str, kind: Kind) -> Path:
    """The manifest ``value`` names (a file, or a folder holding one), inside the workspace."""
    from betty_mcp.kit.skillkit import workspace_path

    name, article, other, wrong = (
        ("skill.yaml", "a", "agent.yaml", "an agent manifest; use agent.define")
        if kind == "skills"
        else ("agent.yaml", "an", "skill.yaml", "a skill manifest; use skill.define")
    )
    path = workspace_path(value, must_exist=True, kind="manifest_path")
    if path.is_dir():
        path = path / name
        if not path.is_file():
            raise SkillError(f"manifest_path '{value}' is a folder without {article} {name}", "not_found")
    if path.name == other:
        raise SkillError(f"{path} is {wrong}", code="wrong_kind")
    return path


def load_manifest(kind: Kind, path: Path) -> tuple[dict[str, Any], Any]:
    """The raw manifest and its model, validated with the catalog loader's models.

    Raises ``RegistryError`` (code ``invalid_manifest``) whose ``problems`` list has one line per
    problem, each naming the file, the field and what is wrong.
    """
    from betty_mcp.core.errors import ManifestError
    from betty_mcp.core.manifests import AgentManifest, SkillManifest, parse_manifest, read_yaml

    model = SkillManifest if kind == "skills" else AgentManifest
    try:
        raw = read_yaml(path)
        manifest = parse_manifest(model, raw, str(path))
    except ManifestError as exc:
        problems = str(exc).splitlines()
        raise RegistryError("; ".join(problems), code="invalid_manifest", problems=problems) from None
    return json.loads(json.dumps(raw, default=str)), manifest


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k != "updated_at"}


def _status(entry: dict[str, Any]) -> str:
    return str(entry.get("status") or "active")


class Registry:
    """The registry files of one workspace (``<root>/registry``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folder = self.root / "registry"

    def path(self, kind: Kind) -> Path:
        return self.folder / f"{kind}.json"

    def _inside(self, path: Path) -> Path:
        """``path`` if it stays in the workspace (a symlinked ``registry/`` must not lead writes out)."""
        try:
            return confined(path, self.root)
        except PathOutsideWorkspace as exc:
            raise RegistryError(str(exc), code="path_outside_workspace") from None

    def read(self, kind: Kind) -> dict[str, Any]:
        """The registry document; an empty one when the file does not exist yet."""
        path = self._inside(self.path(kind))
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"registry_version": REGISTRY_VERSION, "generated_at": None, kind: []}
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RegistryError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}; fix or remove it",
                code="corrupt_registry",
            ) from None
        if not isinstance(doc, dict) or not isinstance(doc.get(kind, []), list):
            raise RegistryError(f"{path}: expected an object with a '{kind}' list", code="corrupt_registry")
        doc.setdefault(kind, [])
        return doc

    def entries(self, kind: Kind) -> list[dict[str, Any]]:
        return [e for e in self.read(kind)[kind] if isinstance(e, dict)]

    @contextmanager
    def _locked(self, kind: Kind) -> Iterator[None]:
        self._inside(self.folder).mkdir(parents=True, exist_ok=True)
        with open(self._inside(self.folder / f".{kind}.json.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, kind: Kind, doc: dict[str, Any]) -> None:
        path = self._inside(self.path(kind))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=2, ensure_ascii=False)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def register(
        self, kind: Kind, manifest: dict[str, Any], *, source: str | None = None, dry_run: bool = False
    ) -> Registration:
        """Add or update ``manifest``'s entry; refuse overwrites of active versions and downgrades.

        ``source`` (the manifest's file) only makes refusals name where the new manifest came from.
        """
        name = manifest.get("name")
        if not isinstance(name, str) or not name:
            raise RegistryError("the manifest has no name", code="invalid_manifest")
        new = {**manifest, "version": str(manifest.get("version", "")), "status": _status(manifest)}
        version = parse_version(new["version"], subject=f"version of {kind[:-1]} '{name}'")
        with nullcontext() if dry_run else self._locked(kind):
            doc = self.read(kind)
            same = [e for e in doc[kind] if isinstance(e, dict) and e.get("name") == name]
            action, previous = _decide(f"{kind[:-1]} '{name}'", new, version, same, source)
            if action != "unchanged" and not dry_run:
                kept = [e for e in doc[kind] if not (isinstance(e, dict) and e.get("name") == name)]
                doc[kind] = sorted([*kept, {**new, "updated_at": _now()}], key=lambda e: str(e.get("name")))
                doc["registry_version"] = REGISTRY_VERSION
                doc["generated_at"] = _now()
                self._write(kind, doc)
        return Registration(
            action=action,
            kind=kind,
            name=name,
            version=new["version"],
            previous_version=previous,
            path=self.path(kind),
            written=action != "unchanged" and not dry_run,
        )

    def query(
        self,
        kind: Kind,
        *,
        name: str | None = None,
        tag: str | None = None,
        status: str | None = None,
        capability: str | None = None,
        fuzzy: bool = True,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Entries matching every given filter, each with a ``score`` in (0, 1], best first."""
        matches = []
        for entry in self.entries(kind):
            scores = []
            if name:
                scores.append(similarity(name, [str(entry.get("name", ""))], fuzzy))
            if tag:
                scores.append(similarity(tag, _strings(entry.get("tags")), fuzzy))
            if status:
                scores.append(1.0 if _status(entry) == status.strip().lower() else 0.0)
            if capability:
                scores.append(similarity(capability, _capability_texts(entry), fuzzy))
            if all(s > 0 for s in scores):
                score = sum(scores) / len(scores) if scores else 1.0
                matches.append({**entry, "score": round(score, 3)})
        matches.sort(key=lambda m: (-m["score"], str(m.get("name"))))
        return matches[:limit] if limit is not None else matches


def _decide(
    label: str, new: dict[str, Any], version: Version, same: list[dict[str, Any]], source: str | None
) -> tuple[Literal["added", "updated", "unchanged"], str | None]:
    """What registering ``new`` does, given the entries already registered under its name."""
    if not same:
        return "added", None
    registered = []
    for entry in same:
        try:
            registered.append((parse_version(entry.get("version")), entry))
        except RegistryError:
            continue  # a hand-edited entry with a broken version: the new one replaces it
    if not registered:
        return "updated", str(same[0].get("version"))
    highest, current = max(registered, key=lambda pair: pair[0])
    old = str(current.get("version"))
    if version < highest:
        raise RegistryError(
            f"{label} {new['version']} is older than the registered {old}: "
            "downgrades are refused; bump the version above it",
            code="version_downgrade",
            registered_version=old,
        )
    if version > highest:
        return "updated", old
    if _content(current) == new:
        return "unchanged", old
    changed = sorted(k for k in {*_content(current), *new} if current.get(k) != new.get(k))
    old_status, new_status = _status(current), new["status"]
    if changed == ["status"] and _lifecycle_step(old_status, new_status):
        return "updated", old
    if old_status == "active":
        raise RegistryError(
            f"{label} {old} is registered and active (since {current.get('updated_at')}) with different "
            f"content; the new manifest{f' ({source})' if source else ''} differs in: {', '.join(changed)}. "
            "Bump the version to register the change",
            code="active_version_conflict",
            changed_fields=changed,
        )
    return "updated", old


def _lifecycle_step(old: str, new: str) -> bool:
    """A status change forward in the lifecycle (draft -> active -> deprecated -> archived)."""
    return old in STATUSES and new in STATUSES and STATUSES.index(new) > STATUSES.index(old)


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _capability_texts(entry: dict[str, Any]) -> list[str]:
    """What an entry can do: an agent's ``capabilities``; a skill's tags and description."""
    texts = _strings(entry.get("capabilities"))
    if not texts:
        texts = [*_strings(entry.get("tags")), str(entry.get("description") or "")]
    return [t for t in texts if t]


def similarity(query: str, candidates: list[str], fuzzy: bool = True) -> float:
    """The best score of ``query`` against ``candidates``: 1 for equal (case-insensitive), else fuzzy.

    Fuzzy scores: a substring scores 0.8 to 1 (more when it covers more of the text); otherwise
    the better of difflib's ratio and the share of query words found in the text, counted only
    from ``FUZZY_THRESHOLD`` up. 0 means no match.
    """
    q = query.strip().lower()
    best = 0.0
    for candidate in candidates:
        text = candidate.strip().lower()
        if not text:
            continue
        if q == text:
            return 1.0
        if not fuzzy:
            continue
        if q in text:
            score = 0.8 + 0.19 * len(q) / len(text)
        else:
            words = q.split()
            found = sum(1 for w in words if w in text) / len(words) if words else 0.0
            score = max(SequenceMatcher(None, q, text).ratio(), 0.75 * found)
        best = max(best, score if score >= FUZZY_THRESHOLD else 0.0)
    return best


def definition_parser(kind: Kind) -> argparse.ArgumentParser:
    """skill.define and agent.define take a manifest, then ``--[no-]register`` and ``--dry_run``."""
    from betty_mcp.kit.skillkit import parser

    manifest = "skill.yaml" if kind == "skills" else "agent.yaml"
    noun = kind.removesuffix("s")
    argparser = parser(f"Validate a {manifest} and register it in registry/{kind}.json.")
    argparser.add_argument("manifest_path", help=f"the {manifest} (or its folder)")
    argparser.add_argument(
        "--register",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"register the {noun} after validating it (default: yes)",
    )
    argparser.add_argument(
        "--dry_run", action="store_true", help="report what registering would do, write nothing"
    )
    return argparser
