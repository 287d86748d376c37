"""``consortia users``: list users, issue and revoke their API tokens.

The commands write straight to the workspace's admin database through the admin service's service layer, so they
work whether or not the service runs. Users come from the workspace's ``consortium.yml`` and are synced before each
command. Whoever runs these commands needs write access to the workspace, which also holds the root CA key.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from admin_api.db import Database
from admin_api.errors import AdminApiError
from admin_api.models import ApiToken
from admin_api.services.tokens import (
    DEFAULT_EXPIRES_IN_DAYS,
    MAX_EXPIRES_IN_DAYS,
    issue_token,
    list_tokens,
    revoke_token,
)
from admin_api.services.users import list_users, load_directory, sync_users
from provisioning.workspace import Workspace

users_app = typer.Typer(no_args_is_help=True, help="Users of the consortium file and their admin API tokens.")
console = Console()
err_console = Console(stderr=True)

CLI_ROLE = "workspace_operator"
"""Audit role of a CLI user: someone with write access to the workspace, not a consortium role."""

WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="workspace folder (git-ignored)")]


def _actor() -> str:
    return f"{getpass.getuser()} (consortia CLI)"


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=1)


@contextmanager
def _synced_session(workspace: Path) -> Iterator[Session]:
    """Open a write session on the workspace database, migrated and with users synced from consortium.yml."""
    root = Workspace(workspace).root
    url = os.environ.get("CONSORTIA_DATABASE_URL", Workspace(workspace).database_url)
    directory = load_directory(root)
    database = Database(url)
    try:
        database.upgrade()
        with database.write_session() as session:
            sync_users(session, directory.users)
            session.commit()
            yield session
    finally:
        database.dispose()


def _token_state(token: ApiToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"


@users_app.command("list")
def list_command(workspace: WorkspaceOption = Path("workspace")) -> None:
    """List users with their roles, and every token with its state (never the token itself)."""
    try:
        with _synced_session(workspace) as session:
            users = list_users(session)
            tokens = list_tokens(session)
            user_table = Table(title="Users")
            for column in ("name", "org", "role", "active"):
                user_table.add_column(column)
            for user in users:
                user_table.add_row(user.name, user.org, user.role, "yes" if user.active else "no")
            token_table = Table(title="API tokens")
            for column in ("token id", "user", "created", "expires", "state"):
                token_table.add_column(column)
            now = datetime.now(UTC)
            for token in tokens:
                state = _token_state(token, now)
                token_table.add_row(
                    token.token_id,
                    token.user.name,
                    f"{token.created_at:%Y-%m-%d}",
                    f"{token.expires_at:%Y-%m-%d}",
                    state,
                )
    except AdminApiError as exc:
        _fail(str(exc))
        return
    console.print(user_table)
    console.print(token_table if tokens else "No API tokens issued.")


@users_app.command("token")
def token_command(
    name: Annotated[str, typer.Argument(help="user name from consortium.yml, for example lead@hospital-a.org")],
    expires_in_days: Annotated[
        int, typer.Option(min=1, max=MAX_EXPIRES_IN_DAYS, help="days until the token expires")
    ] = DEFAULT_EXPIRES_IN_DAYS,
    workspace: WorkspaceOption = Path("workspace"),
) -> None:
    """Issue an API token for a user and print it once; only its SHA-256 digest is stored."""
    try:
        with _synced_session(workspace) as session:
            issued = issue_token(session, name, expires_in_days=expires_in_days, actor=_actor(), role=CLI_ROLE)
            session.commit()
            token_id, expires_at = issued.record.token_id, issued.record.expires_at
    except (AdminApiError, ValueError) as exc:
        _fail(str(exc))
        return
    err_console.print(f"Issued token {token_id} for {name}, expires {expires_at:%Y-%m-%d %H:%M} UTC.")
    err_console.print("Store it now: it cannot be shown again. Send it as 'Authorization: Bearer <token>'.")
    # The token alone goes to stdout, so `TOKEN=$(consortia users token NAME)` captures it.
    print(issued.token)


@users_app.command("revoke")
def revoke_command(
    token_id: Annotated[str, typer.Argument(help="token id from 'consortia users list', for example tok_1a2b3c4d5e6f")],
    workspace: WorkspaceOption = Path("workspace"),
) -> None:
    """Revoke a token; requests with it are rejected from then on."""
    try:
        with _synced_session(workspace) as session:
            record = revoke_token(session, token_id, actor=_actor(), role=CLI_ROLE)
            session.commit()
            user_name = record.user.name
    except AdminApiError as exc:
        _fail(str(exc))
        return
    console.print(f"Revoked token {token_id} of {user_name}.")
