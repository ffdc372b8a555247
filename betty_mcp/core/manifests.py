"""Pydantic models of Betty's ``skill.yaml`` and ``agent.yaml``, accepting every real variant.

Skill inputs arrive in many shapes (dicts, ``"name (type, required): text"`` strings,
``entrypoints[0].parameters``, ``parameters:`` with ``type: enum`` + ``values:``); each is
normalised to a list of ``Param``. ``load_skill_manifest``/``load_agent_manifest`` raise
``ManifestError`` naming the file, the field and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from betty_mcp.core.documents import MAX_MANIFEST_BYTES, MAX_MANIFEST_NODES, read_document
from betty_mcp.core.errors import DocumentError, ManifestError
from betty_mcp.core.rules import DEFAULT_RETRIES, MANIFEST_NAME, MAX_RETRIES, SkillStatus

M = TypeVar("M", bound=BaseModel)
MAX_REPORTED_PROBLEMS = 20

# Manifest type names (Betty's and Python's) -> JSON Schema types. "path"/"file" are strings
# that name a file: the runner checks them against the workspace.
TYPE_ALIASES: dict[str, str] = {
    "string": "string",
    "str": "string",
    "text": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "integer": "integer",
    "int": "integer",
    "number": "number",
    "float": "number",
    "double": "number",
    "array": "array",
    "list": "array",
    "object": "object",
    "dict": "object",
    "map": "object",
    "json": "object",
    "enum": "string",
    "path": "string",
    "file": "string",
    "filepath": "string",
    "directory": "string",
    "dir": "string",
}
PATH_TYPES = {"path", "file", "filepath", "directory", "dir"}
PATH_NAME = re.compile(r"(^|_)(path|paths|file|files|dir|directory|folder)$")

_STRING_INPUT = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w.-]*)\s*(?:\((?P<meta>[^)]*)\))?\s*(?:[:\-\u2013\u2014]+\s*(?P<text>.*))?$"
)


_PARAM_KEYS = {
    "name",
    "type",
    "required",
    "optional",
    "description",
    "default",
    "enum",
    "options",
    "values",
    "choices",
    "allowed_values",
    "items",
    "is_path",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Manifest(_Model):
    """What skill and agent manifests share: a name, a version YAML may have read as a number, a status."""

    name: str = Field(pattern=MANIFEST_NAME, max_length=128)
    version: str = "0.0.0"
    description: str = ""
    status: SkillStatus = "active"

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int | float) else value


class Param(BaseModel):
    """One input, normalised: a JSON Schema type and the facts needed to build argv."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z_][\w.-]*$")
    type: str | None = None
    required: bool = False
    description: str = ""
    default: Any = None
    enum: list[Any] | None = None
    items: dict[str, Any] | None = None
    is_path: bool = False

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return _parse_string_input(raw)
        if isinstance(raw, dict) and len(raw) == 1 and not set(raw) & _PARAM_KEYS:
            # Unquoted YAML turns "- epic_file (string, required): Path" into a one-key mapping.
            ((key, value),) = raw.items()
            return _parse_string_input(f"{key}: {value}" if value is not None else str(key))
        if not isinstance(raw, dict):
            raise ValueError(f"an input must be a mapping or a string, not {type(raw).__name__}")
        data = dict(raw)
        declared = data.get("type")
        if declared is not None:
            if not isinstance(declared, str) or declared.lower() not in TYPE_ALIASES:
                raise ValueError(
                    f"unknown type {declared!r}; use one of {', '.join(sorted(set(TYPE_ALIASES)))}"
                )
            data["type"] = TYPE_ALIASES[declared.lower()]
            data["is_path"] = data.get("is_path") or declared.lower() in PATH_TYPES
        for key in ("options", "values", "choices", "allowed_values"):
            if key in data and "enum" not in data:
                data["enum"] = data.pop(key)
        if "optional" in data and "required" not in data:
            data["required"] = not bool(data.pop("optional"))
        if isinstance(data.get("items"), str):
            data["items"] = {"type": TYPE_ALIASES.get(data["items"].lower(), "string")}
        if data.get("enum") is not None and not isinstance(data["enum"], list):
            raise ValueError("options/values/enum must be a list")
        if data.get("description") is None:
            data["description"] = ""
        return data

    @model_validator(mode="after")
    def _infer(self) -> Param:
        if self.type is None and self.enum:
            self.type = _json_type_of(self.enum[0])
        if not self.is_path and self.type in (None, "string") and PATH_NAME.search(self.name):
            self.is_path = True
        return self

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.type:
            schema["type"] = self.type
        if self.description:
            schema["description"] = self.description.strip()
        if self.enum is not None:
            schema["enum"] = self.enum
        if self.default is not None:
            schema["default"] = self.default
        if self.type == "array" and self.items:
            schema["items"] = self.items
        return schema


def _json_type_of(value: Any) -> str | None:
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(value))


def _parse_string_input(text: str) -> dict[str, Any]:
    """``epic_file (string, required): Path to the epic`` -> a Param dict."""
    match = _STRING_INPUT.match(text)
    if not match:
        raise ValueError(f"cannot read input {text!r}; write 'name (type, required): description'")
    data: dict[str, Any] = {
        "name": match["name"],
        "type": "string",
        "description": match["text"] or "",
        "required": True,
    }
    for token in (t.strip().lower() for t in (match["meta"] or "").split(",")):
        if not token:
            continue
        if token in ("optional", "opt"):
            data["required"] = False
        elif token == "required":
            data["required"] = True
        elif token.startswith("default"):
            data["default"] = token.partition("=")[2].strip() or None
        elif token in TYPE_ALIASES:
            data["type"] = token
    return data


class Entrypoint(_Model):
    command: str | None = None
    handler: str = Field(min_length=1)
    runtime: str = "python"
    description: str | None = None
    parameters: list[Param] | None = None
    permissions: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _lenient_parameters(cls, raw: Any) -> Any:
        """Parameter names written as flags (``--batch``) mean the input ``batch``; parameters that still
        cannot be read are left out (the skill's ``inputs`` describe it), with a warning."""
        if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), list):
            return raw
        params = [
            {**p, "name": p["name"].lstrip("-").replace("-", "_")}
            if isinstance(p, dict) and isinstance(p.get("name"), str)
            else p
            for p in raw["parameters"]
        ]
        try:
            for param in params:
                Param.model_validate(param)
        except ValidationError as exc:
            problem = describe_validation_error("entrypoints.0.parameters", exc).splitlines()[0]
            return {**raw, "parameters": None, "ignored": f"{problem}; using the skill's inputs instead"}
        return {**raw, "parameters": params}


class Execution(_Model):
    type: str = "script"
    entry_point: str = Field(min_length=1)
    runtime: str = "python"


class McpOptions(BaseModel):
    """betty-mcp's own manifest block (``mcp:``): how to call the handler. All optional.

    - ``arguments``: ``betty`` (default: required inputs positional, optional ones ``--name value``),
      ``json-argv`` (one JSON object as argv[1]) or ``json-stdin`` (one JSON object on stdin).
    - ``flag_style``: ``snake`` (``--rule_set``, default) or ``kebab`` (``--rule-set``).
    - ``positional``: input names passed positionally, overriding "the required ones".
    - ``timeout_seconds``: per-call timeout; the configured default otherwise.
    - ``env``: environment variables the handler needs that would otherwise be scrubbed (API keys...).
    - ``path_inputs``: inputs that name files, beyond those inferred from names/types.
    - ``llm_keys``: pass the API keys named by ``llm_router`` providers (for skills that call LLMs).
    """

    model_config = ConfigDict(extra="forbid")

    arguments: Literal["betty", "json-argv", "json-stdin"] = "betty"
    flag_style: Literal["snake", "kebab"] = "snake"
    positional: list[str] | None = None
    timeout_seconds: float | None = Field(default=None, gt=0)
    env: list[str] = Field(default_factory=list)
    path_inputs: list[str] = Field(default_factory=list)
    llm_keys: bool = False


class Output(_Model):
    name: str
    type: str | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return {"name": raw}
        if isinstance(raw, dict) and raw.get("description") is None:
            return {**raw, "description": ""}
        return raw


class SkillManifest(_Manifest):
    inputs: list[Param] = Field(default_factory=list)
    outputs: list[Output] = Field(default_factory=list)
    parameters: list[Param] | None = None
    returns: list[Output] | None = None
    entrypoints: list[Entrypoint] = Field(default_factory=list)
    execution: Execution | None = None
    tags: list[str] = Field(default_factory=list)
    dependencies: list[Any] = Field(default_factory=list)
    permissions: list[Any] = Field(default_factory=list)
    mcp: McpOptions = Field(default_factory=McpOptions)

    @field_validator("inputs", "outputs", "tags", "dependencies", "permissions", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @field_validator("returns", mode="before")
    @classmethod
    def _returns_as_list(cls, value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:  # {field: type} mapping
            return [{"name": k, **(v if isinstance(v, dict) else {"type": v})} for k, v in value.items()]
        return value

    @property
    def handler(self) -> str | None:
        """The declared handler file; None when neither entrypoints nor execution name one (Betty then
        finds it by convention: ``rules.conventional_handler``)."""
        if self.entrypoints:
            return self.entrypoints[0].handler
        return self.execution.entry_point if self.execution else None

    @property
    def runtime(self) -> str:
        if self.entrypoints:
            return self.entrypoints[0].runtime
        return self.execution.runtime if self.execution else "python"

    @property
    def load_warnings(self) -> list[str]:
        """What the lenient reading left out, for ``validate`` and the catalog's problems."""
        ignored = self.entrypoints[0].model_extra.get("ignored") if self.entrypoints else None
        return [ignored] if isinstance(ignored, str) else []

    @property
    def params(self) -> list[Param]:
        """The most precise input description: entrypoint parameters, then ``parameters``, then inputs."""
        if self.entrypoints and self.entrypoints[0].parameters:
            params = self.entrypoints[0].parameters
        elif self.parameters:
            params = self.parameters
        else:
            params = self.inputs
        marked = set(self.mcp.path_inputs)
        return [p.model_copy(update={"is_path": True}) if p.name in marked else p for p in params]

    @property
    def typed_outputs(self) -> list[Output]:
        return self.returns or self.outputs


class LlmConfig(_Model):
    primary_provider: str | None = None
    primary_model: str | None = None
    fallback_provider: str | None = None
    fallback_model: str | None = None
    reasoning_budget: Literal["low", "medium", "high"] | None = None


class ErrorHandling(_Model):
    max_retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=MAX_RETRIES)
    timeout_seconds: float | None = Field(default=None, gt=0)
    retry_strategy: str | None = None


class AgentManifest(_Manifest):
    capabilities: list[str] = Field(default_factory=list)
    skills_available: list[str] = Field(default_factory=list)
    reasoning_mode: Literal["iterative", "oneshot"] = "iterative"
    system_prompt: str | None = None
    workflow_pattern: str | None = None
    example_task: str | None = None
    context_requirements: dict[str, Any] | list[Any] | None = None
    error_handling: ErrorHandling = Field(default_factory=ErrorHandling)
    output: dict[str, Any] | None = None
    llm_config: LlmConfig | None = None
    llm_preference: str | None = None
    permissions: list[Any] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    dependencies: list[Any] = Field(default_factory=list)

    @field_validator("capabilities", "skills_available", "permissions", "tags", "dependencies", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


def describe_validation_error(source: str, exc: ValidationError, prefix: str = "") -> str:
    """``skill.yaml: inputs.2.type: unknown type 'blob'; ...`` - one line per problem."""
    errors = exc.errors()
    lines = []
    for err in errors[:MAX_REPORTED_PROBLEMS]:
        where = prefix + ".".join(str(p) for p in err["loc"]) or "(top level)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {where}: {message}")
    if len(errors) > MAX_REPORTED_PROBLEMS:
        lines.append(f"{source}: ... and {len(errors) - MAX_REPORTED_PROBLEMS:,} more problem(s)")
    return "\n".join(lines)


def read_yaml(path: Path) -> Any:
    """A manifest or config file's data; ``ManifestError`` naming the file when it cannot be read."""
    try:
        return read_document(path, max_bytes=MAX_MANIFEST_BYTES, max_nodes=MAX_MANIFEST_NODES)
    except DocumentError as exc:
        raise ManifestError(str(exc)) from None


def parse_manifest(model: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(source, exc)) from None


def load_skill_manifest(path: Path) -> SkillManifest:
    return parse_manifest(SkillManifest, read_yaml(path), str(path))


def load_agent_manifest(path: Path) -> AgentManifest:
    return parse_manifest(AgentManifest, read_yaml(path), str(path))
