"""User tokens: issue, authenticate, expire, revoke, and the consortia users commands."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner
from user_support import USERS, issue_tokens, write_workspace

from admin_api.app import create_app
from admin_api.db import Database
from admin_api.models import ApiToken, AuditEvent, User
from admin_api.services.tokens import revoke_token
from admin_api.services.users import load_directory, sync_users
from admin_api.settings import Settings
from consortia.cli import app as cli_app


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return write_workspace(tmp_path / "workspace")


@pytest.fixture
def tokens(database_url: str, workspace: Path) -> dict[str, str]:
    return issue_tokens(database_url, workspace)


@pytest.fixture
def user_client(database_url: str, workspace: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN, workspace=workspace)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        yield client


def me(client: TestClient, token: str) -> tuple[int, dict[str, object]]:
    response = client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json()


def test_token_authenticates_user(user_client: TestClient, tokens: dict[str, str]) -> None:
    status, body = me(user_client, tokens["org_admin"])
    assert status == 200
    assert body["name"] == USERS["org_admin"]
    assert body["role"] == "org_admin"
    assert body["org"] == "hospital_a"
    assert str(body["token_id"]).startswith("tok_")


def test_token_stored_as_digest(database: Database, tokens: dict[str, str]) -> None:
    with database.session() as session:
        digests = set(session.scalars(select(ApiToken.token_sha256)))
    assert len(digests) == len(tokens)
    assert not digests & set(tokens.values())
    assert all(len(digest) == 64 for digest in digests)


@pytest.mark.parametrize(
    ("token", "fragment"),
    [
        ("cst_short", "malformed bearer token"),
        ("cst_" + "A" * 43, "unknown bearer token"),
        ("not-a-known-token-not-a-known-token-0", "consortia users token NAME"),
    ],
)
def test_bad_user_token_401(user_client: TestClient, token: str, fragment: str) -> None:
    response = user_client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert fragment in response.json()["detail"]


def test_expired_token_401(user_client: TestClient, database: Database, tokens: dict[str, str]) -> None:
    with database.write_session() as session:
        session.execute(update(ApiToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        session.commit()
    status, body = me(user_client, tokens["lead"])
    assert status == 401
    assert "expired at" in str(body["detail"])
    assert "consortia users token NAME" in str(body["detail"])


def test_revoked_token_401(user_client: TestClient, database: Database, tokens: dict[str, str]) -> None:
    _, body = me(user_client, tokens["lead"])
    with database.write_session() as session:
        revoke_token(session, str(body["token_id"]), actor="test", role=None)
        session.commit()
    status, body = me(user_client, tokens["lead"])
    assert status == 401
    assert "was revoked at" in str(body["detail"])
    assert tokens["lead"] not in str(body)


def test_removed_user_401(user_client: TestClient, database: Database, workspace: Path, tokens: dict[str, str]) -> None:
    users = [user for user in load_directory(workspace).users if user.name != USERS["lead"]]
    with database.write_session() as session:
        result = sync_users(session, users)
        session.commit()
    assert result.deactivated == [USERS["lead"]]
    status, body = me(user_client, tokens["lead"])
    assert status == 401
    assert "no longer in the consortium file" in str(body["detail"])


def test_sync_audited_once(database: Database, workspace: Path, tokens: dict[str, str]) -> None:
    with database.write_session() as session:
        assert sync_users(session, load_directory(workspace).users).added == []
        session.commit()
        actions = list(session.scalars(select(AuditEvent.action)))
        num_users = len(list(session.scalars(select(User))))
    assert actions.count("user.added") == num_users
    assert actions.count("token.issued") == len(tokens)


def test_cli_token_list_revoke(database_url: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSORTIA_DATABASE_URL", database_url)
    runner = CliRunner()
    issued = runner.invoke(
        cli_app, ["users", "token", USERS["lead"], "--expires-in-days", "7", "--workspace", str(workspace)]
    )
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("cst_")

    listed = runner.invoke(cli_app, ["users", "list", "--workspace", str(workspace)])
    assert listed.exit_code == 0, listed.output
    assert USERS["lead"] in listed.stdout
    assert token not in listed.stdout
    token_id = next(word for word in listed.stdout.split() if word.startswith("tok_"))

    revoked = runner.invoke(cli_app, ["users", "revoke", token_id, "--workspace", str(workspace)])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(cli_app, ["users", "list", "--workspace", str(workspace)])
    assert "revoked" in again.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["users", "token", "nobody@nowhere.org"], "not found"),
        (["users", "revoke", "tok_000000000000"], "not found"),
    ],
)
def test_cli_bad_input(
    database_url: str, workspace: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], fragment: str
) -> None:
    monkeypatch.setenv("CONSORTIA_DATABASE_URL", database_url)
    result = CliRunner().invoke(cli_app, [*args, "--workspace", str(workspace)])
    assert result.exit_code == 1
    assert fragment in result.output
