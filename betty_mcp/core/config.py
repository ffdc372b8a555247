"""Settings: ``betty.yaml`` plus command-line flags, validated with pydantic.

The file is found via ``--config``, ``$BETTY_CONFIG``, ``./betty.yaml``, then
``~/.config/betty-mcp/betty.yaml``; relative paths in it are relative to the file.
Flags override the file. API keys never live here: only environment variable names.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from betty_mcp.core.errors import ConfigError
from betty_mcp.core.llm_config import UserBudgetConfig
from betty_mcp.core.manifests import describe_validation_error, read_yaml
from betty_mcp.core.rules import SkillStatus

if TYPE_CHECKING:
    from betty_mcp.core.llm_config import LlmRouterConfig

CONFIG_ENV = "BETTY_CONFIG"
TOKEN_ENV = "BETTY_MCP_TOKEN"
# Shared state on PostgreSQL instead of the workspace's SQLite file (overrides ``database_url``).
DATABASE_URL_ENV = "BETTY_MCP_DATABASE_URL"
# The key sealing 2026-07-28 request state, the same on every instance behind one load balancer
# (a secret: kept from handlers, scrubbed everywhere). Unset: a key of this process's own.
REQUEST_STATE_KEY_ENV = "BETTY_MCP_REQUEST_STATE_KEY"
# The server's settings, as JSON, in every handler's environment: skills that run other skills
# (workflow.run) or write where the server watches (skill.create) see what the server sees.
SETTINGS_ENV = "BETTY_MCP_SETTINGS"


class ToolSelection(BaseModel):
    """Which skills get a tool of their own; ``skills_list``/``skill_run`` reach every skill anyway."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = ["*"]
    exclude: list[str] = []
    statuses: list[SkillStatus] = ["active"]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skill_timeout_seconds: float = Field(default=120, gt=0)
    max_concurrent_skills: int = Field(default=4, ge=1, le=256)
    max_result_chars: int = Field(default=40_000, ge=1_000, le=400_000)
    max_output_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    stderr_tail_chars: int = Field(default=4_000, ge=0)
    # Fork Python handlers from a process that has their heavy imports done (zygote.py).
    fork_server: bool = True
    # Each call in its own cgroup v2 (where writable): nothing escapes its kill, but moving a process into
    # a cgroup can cost ~10 ms a call while other processes fork. Off: calls are tracked through /proc.
    call_cgroups: bool = False
    # HTTP: a client that has not sent a whole request head by then is disconnected (slow clients).
    http_head_timeout_seconds: float = Field(default=10, gt=0, le=300)
    # With a shared database: how often an instance says it still holds its runs (and reservations), and
    # after how long without a word any instance marks its runs failed (worker_lost; never run again) and
    # gives its reservations back.
    run_heartbeat_seconds: float = Field(default=2, gt=0, le=60)
    run_lost_after_seconds: float = Field(default=15, gt=0, le=3600)
    # With a shared database: how many queued runs (wait=false) ``serve`` takes at once; 0 leaves them to
    # ``betty-mcp worker`` processes.
    run_workers: int = Field(default=4, ge=0, le=256)


# JWS algorithms an OAuth access token may be signed with: asymmetric only. ``none`` and the HMAC family
# (HS*) are never accepted: with HS*, the IdP's public key would become a shared secret anyone can sign with.
ASYMMETRIC_ALGORITHMS = (
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
)
ROLE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class ToolPatterns(BaseModel):
    """Globs over tool names (``api_validate``, ``llm_query``) and skills' Betty names (``api.*``)."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = ["*"]
    exclude: list[str] = []


class RoleConfig(BaseModel):
    """What the users of one role may use, and what each of them may spend."""

    model_config = ConfigDict(extra="forbid")

    tools: ToolPatterns = ToolPatterns()
    agents: list[str] = ["*"]  # globs over agent names that agent_run may run for them
    budgets: UserBudgetConfig | None = None  # replaces budgets.per_user for this role's users


class AuthConfig(BaseModel):
    """OAuth resource-server mode: accept JWT access tokens an outside authorization server issued."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1, description="The token's expected iss, exactly.")
    audience: str = Field(description="This server's public MCP URL: the tokens' aud and the resource.")
    jwks_url: str | None = None
    jwks_file: Path | None = None
    required_scopes: list[str] = []
    user_claim: str = "sub"
    role_claim: str | None = None  # a claim (string or list) naming a configured role
    default_role: str | None = None  # the role of a token whose role_claim names none
    algorithms: list[str] = ["RS256", "ES256", "PS256", "EdDSA"]
    leeway_seconds: float = Field(default=30, ge=0, le=300)  # clock skew allowed on exp and nbf
    jwks_max_age_seconds: float = Field(default=300, gt=0, le=86_400)  # keys are re-read this often
    # An unknown kid makes the keys be fetched again (a rotation), but not more often than this.
    jwks_refetch_seconds: float = Field(default=30, gt=0, le=3_600)

    @field_validator("audience", "jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        wrong = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if wrong or not value:
            raise ValueError(
                f"algorithms must be among {', '.join(ASYMMETRIC_ALGORITHMS)} (never none or HS*): {value}"
            )
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> AuthConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("auth needs exactly one of jwks_url or jwks_file")
        return self


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: Path = Field(default_factory=Path.cwd)
    bundled: bool = True
    skills_dirs: list[Path] = []
    agents_dirs: list[Path] = []
    betty_home: Path | None = None
    # The Python that runs a checkout's handlers (default: its own .venv/bin/python when it has one).
    betty_home_python: Path | None = None
    # Per source folder (a skills dir or a checkout), the Python that runs its handlers.
    interpreters: dict[Path, Path] = {}
    allowed_roots: list[Path] = []
    tools: ToolSelection = ToolSelection()
    limits: Limits = Limits()
    hot_reload: bool = True
    usage_db: Path | None = None
    # postgresql://user:pass@host/db: the ledger, budgets, runs and traces shared by every instance.
    # Unset: the workspace's SQLite file (usage_db) and in-process runs. $BETTY_MCP_DATABASE_URL wins.
    database_url: str | None = None
    auth: AuthConfig | None = None
    roles: dict[str, RoleConfig] = {}
    # Kept as written and validated on first use (``router``), so start-up does no LLM work;
    # load_settings validates it at once when a file has the block, to report errors early.
    llm_router: dict[str, Any] | None = None

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, RoleConfig]) -> dict[str, RoleConfig]:
        wrong = [name for name in value if not re.match(ROLE_NAME, name)]
        if wrong:
            raise ValueError(f"role names are letters, digits, '_', '.', '-' (at most 64): {wrong}")
        return value

    @cached_property
    def router(self) -> LlmRouterConfig:
        return validate_router(self.llm_router, "settings")

    @property
    def cache_dir(self) -> Path:
        """Facts betty-mcp reads once and keeps (handler interfaces), valid until their source changes."""
        return self.workspace / ".betty-mcp" / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.workspace / ".betty-mcp" / "runs"

    @property
    def database(self) -> str | None:
        """The PostgreSQL URL in force ($BETTY_MCP_DATABASE_URL, else ``database_url``), or None."""
        return os.environ.get(DATABASE_URL_ENV) or self.database_url

    @property
    def ledger_path(self) -> Path:
        """The usage ledger: every LLM call, for accounting and budgets."""
        return self.usage_db or self.workspace / ".betty-mcp" / "usage.sqlite"

    def roots(self) -> list[Path]:
        """Where path arguments may point: the workspace, the allowed roots, a served Betty checkout."""
        extra = [self.betty_home] if self.betty_home else []
        return [self.workspace, *self.allowed_roots, *extra]


def validate_router(raw: dict[str, Any] | None, source: str) -> LlmRouterConfig:
    from betty_mcp.core.llm_config import LlmRouterConfig

    try:
        return LlmRouterConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(source, exc, prefix="llm_router.")) from None


def settings_from_env() -> Settings:
    """The serving process's settings inside a handler; flags-free defaults when run by hand.

    A handler is short-lived: skills it runs (workflow.run) start cold, not through a zygote.
    """
    raw = os.environ.get(SETTINGS_ENV)
    settings = Settings.model_validate_json(raw) if raw else load_settings()
    settings.limits.fork_server = False
    return settings


def find_config_file(explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        path = Path(from_env)
        if not path.is_file():
            raise ConfigError(f"${CONFIG_ENV} points to {path}, which does not exist")
        return path
    for candidate in (Path("betty.yaml"), Path.home() / ".config" / "betty-mcp" / "betty.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def resolve(value: Any) -> Any:
        return str((base / Path(value).expanduser()).resolve()) if isinstance(value, str) else value

    def interpreter(value: Any) -> Any:  # a venv's python is a symlink: absolute, never resolved
        return os.path.normpath(base / Path(value).expanduser()) if isinstance(value, str) else value

    for key in ("workspace", "betty_home", "usage_db"):
        if key in data:
            data[key] = resolve(data[key])
    if "betty_home_python" in data:
        data["betty_home_python"] = interpreter(data["betty_home_python"])
    if isinstance(data.get("auth"), dict) and isinstance(data["auth"].get("jwks_file"), str):
        data["auth"] = {**data["auth"], "jwks_file": resolve(data["auth"]["jwks_file"])}
    if isinstance(data.get("interpreters"), dict):
        data["interpreters"] = {resolve(k): interpreter(v) for k, v in data["interpreters"].items()}
    for key in ("skills_dirs", "agents_dirs", "allowed_roots"):
        if isinstance(data.get(key), list):
            data[key] = [resolve(v) for v in data[key]]
    return data


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """File settings (if any) with non-None ``overrides`` on top; every path made absolute."""
    path = find_config_file(config)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = read_yaml(path)
        except Exception as exc:
            raise ConfigError(str(exc)) from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{path}: (top level): expected a mapping, got {type(raw).__name__}")
        data = _resolve_paths(dict(raw or {}), path.parent.resolve())
    for key, value in overrides.items():
        if value is None or value == []:
            continue
        if key in ("include", "exclude", "statuses"):
            data.setdefault("tools", {})[key] = value
        elif key in ("skills_dirs", "agents_dirs", "allowed_roots"):
            data[key] = [*data.get(key, []), *value]
        else:
            data[key] = value
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(str(path or "flags"), exc)) from None
    settings = settings.model_copy(
        update={
            "workspace": settings.workspace.expanduser().resolve(),
            "skills_dirs": [p.expanduser().resolve() for p in settings.skills_dirs],
            "agents_dirs": [p.expanduser().resolve() for p in settings.agents_dirs],
            "allowed_roots": [p.expanduser().resolve() for p in settings.allowed_roots],
            "betty_home": settings.betty_home.expanduser().resolve() if settings.betty_home else None,
        }
    )
    if settings.llm_router is not None:  # report a broken block now, naming the file
        settings.__dict__["router"] = validate_router(settings.llm_router, str(path or "flags"))
    return settings
