"""``betty-mcp users``: the per-user bearer tokens of the HTTP front end.

betty-mcp users add ada --role analyst     # prints ada's token, once
betty-mcp users list
betty-mcp users revoke ada
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from betty_mcp.cli.serve import SOURCE_HELP
from betty_mcp.core.config import Settings, load_settings
from betty_mcp.core.errors import BettyError
from betty_mcp.core.identity import ADMIN_ROLE

users_app = typer.Typer(
    help="Per-user tokens for serve --http (kept as hashes in the state database).", no_args_is_help=True
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
    from betty_mcp.llm.users import UserStore

    settings = _settings(config, workspace)
    if role is not None and role != ADMIN_ROLE and role not in settings.roles:
        known = ", ".join([*sorted(settings.roles), ADMIN_ROLE])
        _fail(f"role '{role}' is not defined under roles: in betty.yaml (defined: {known})")
    store = UserStore(settings.ledger_path)
    try:
        token = store.add(name, role)
    except BettyError as exc:
        _fail(str(exc))
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"user": name, "role": role, "token": token}))
        return
    typer.echo(f"user {name} added{f' (role {role})' if role else ''}; its token, shown only now:", err=True)
    typer.echo(token)


@users_app.command("list")
def list_users(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Every user, active or revoked (never a token)."""
    from betty_mcp.llm.users import UserStore

    store = UserStore(_settings(config, workspace).ledger_path)
    try:
        users = store.list()
    finally:
        store.close()
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
    from betty_mcp.llm.users import UserStore

    store = UserStore(_settings(config, workspace).ledger_path)
    try:
        revoked = store.revoke(name)
    finally:
        store.close()
    if not revoked:
        _fail(f"no active user '{name}'; see betty-mcp users list")
    typer.echo(f"user {name} revoked", err=True)
