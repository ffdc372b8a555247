"""``betty-mcp users``: the per-user bearer tokens of the HTTP front end, kept by the store (the
workspace's SQLite file, or the shared PostgreSQL database when ``database_url`` is set).

betty-mcp users add ada --role analyst     # prints ada's token, once
betty-mcp users list
betty-mcp users revoke ada
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

from betty_mcp.cli.serve import SOURCE_HELP
from betty_mcp.core.config import Settings, load_settings
from betty_mcp.core.errors import BettyError
from betty_mcp.core.identity import ADMIN_ROLE

if TYPE_CHECKING:
    from betty_mcp.llm.users import Users

T = TypeVar("T")

users_app = typer.Typer(
    help="Per-user tokens for serve --http (kept as hashes in the state database).",
    no_args_is_help=True,
)
ConfigOpt = Annotated[Path | None, typer.Option("--config", help=SOURCE_HELP["config"])]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", help=SOURCE_HELP["workspace"])]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings(config: Path | None, workspace: Path | None) -> Settings:
    try:
        return load_settings(config, workspace=workspace)
    except BettyError as exc:
        _fail(str(exc))


def _with_users(settings: Settings, work: Callable[[Users], Awaitable[T]]) -> T:
    """Run ``work`` on the users of ``settings``' store, then close it; a BettyError (a name taken, a
    database that cannot be reached) ends the command with its message."""
    import anyio

    from betty_mcp.llm.users import Users
    from betty_mcp.store import open_store

    async def main() -> T:
        store = open_store(settings)
        try:
            return await work(Users(store))
        finally:
            await store.aclose()

    try:
        return anyio.run(main)
    except BettyError as exc:
        _fail(str(exc))


@users_app.command("add")
def add(
    name: str,
    role: Annotated[
        str | None, typer.Option("--role", help="A role of betty.yaml's roles:, or admin.")
    ] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user and print their token: the only time it is shown (only its hash is kept)."""
    settings = _settings(config, workspace)
    if role is not None and role != ADMIN_ROLE and role not in settings.roles:
        known = ", ".join([*sorted(settings.roles), ADMIN_ROLE])
        _fail(f"role '{role}' is not defined under roles: in betty.yaml (defined: {known})")
    token = _with_users(settings, lambda users: users.add(name, role))
    if as_json:
        typer.echo(json.dumps({"user": name, "role": role, "token": token}))
        return
    typer.echo(f"user {name} added{f' (role {role})' if role else ''}; its token, shown only now:", err=True)
    typer.echo(token)


@users_app.command("list")
def list_users(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every user, active or revoked (never a token)."""
    users = _with_users(_settings(config, workspace), lambda found: found.list())
    if as_json:
        typer.echo(json.dumps([u.__dict__ for u in users], indent=2))
        return
    for u in users:
        state = "active" if u.active else f"revoked {u.revoked_at}"
        typer.echo(f"{u.name:<24} {u.role or '-':<12} added {u.created_at}  {state}")
    if not users:
        typer.echo("no users yet; add one with: betty-mcp users add NAME [--role R]")


@users_app.command("revoke")
def revoke(name: str, config: ConfigOpt = None, workspace: WorkspaceOpt = None) -> None:
    """Revoke a user's token at once (a running server refuses it from its next request)."""
    revoked = _with_users(_settings(config, workspace), lambda users: users.revoke(name))
    if not revoked:
        _fail(f"no active user '{name}'; see betty-mcp users list")
    typer.echo(f"user {name} revoked", err=True)
