"""Helpers for tests with consortium users: a workspace with a consortium file, user tokens and a fake FLARE."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from admin_api.db import Database
from admin_api.services.tokens import issue_token
from admin_api.services.users import load_directory, sync_users

ROOT = Path(__file__).resolve().parents[2]

USERS = {
    "project_admin": "admin@consortium.org",
    "org_admin": "it@hospital-a.org",
    "lead": "lead@hospital-a.org",
    "member": "member@hospital-b.org",
    "compliance_officer": "compliance@consortium.org",
}
"""One user per role, as in write_workspace's consortium file."""


def write_workspace(root: Path) -> Path:
    """Write a workspace folder with the repository's consortium file plus a member, and return it."""
    data = yaml.safe_load((ROOT / "provisioning" / "consortium.yml").read_text(encoding="utf-8"))
    data["users"].append({"name": USERS["member"], "org": "hospital_b", "role": "member"})
    root.mkdir(parents=True, exist_ok=True)
    (root / "consortium.yml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return root


def issue_tokens(database_url: str, workspace: Path, *, expires_in_days: int = 30) -> dict[str, str]:
    """Sync the workspace's users and issue one token per role; return role to token."""
    database = Database(database_url)
    try:
        database.upgrade()
        with database.write_session() as session:
            sync_users(session, load_directory(workspace).users)
            tokens = {
                role: issue_token(session, name, expires_in_days=expires_in_days, actor="test", role=None).token
                for role, name in USERS.items()
            }
            session.commit()
    finally:
        database.dispose()
    return tokens


class FakeFlareActions:
    """FLARE actions that record calls and return new job ids, or raise while ``error`` is set."""

    def __init__(self) -> None:
        self.submitted: list[Path] = []
        self.server_configs: list[dict[str, Any]] = []
        self.aborted: list[str] = []
        self.error: Exception | None = None

    def submit_job(self, job_folder: Path) -> str:
        if self.error is not None:
            raise self.error
        self.submitted.append(job_folder)
        # The folder is a temporary copy, removed after submission, so its server config is kept here.
        config = job_folder / "app" / "config" / "config_fed_server.json"
        self.server_configs.append(json.loads(config.read_text(encoding="utf-8")))
        return str(uuid.uuid4())

    def abort_job(self, job_id: str) -> str:
        if self.error is not None:
            raise self.error
        self.aborted.append(job_id)
        return "Abort signal has been sent to the server app."
