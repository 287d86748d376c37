"""The admin API acting on a real federation: user tokens, submit and abort for a user, console commands audited."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from admin_api.db import Database
from admin_api.services.tokens import issue_token

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def user_headers(running_federation) -> dict[str, dict[str, str]]:
    """Bearer headers of the lead and the hospital-a org admin, issued in the federation's database."""
    database = Database(running_federation.workspace.database_url)
    try:
        with database.write_session() as session:
            tokens = {
                name: issue_token(session, name, expires_in_days=1, actor="integration-test", role=None).token
                for name in ("lead@hospital-a.org", "it@hospital-a.org")
            }
            session.commit()
    finally:
        database.dispose()
    return {name: {"Authorization": f"Bearer {token}"} for name, token in tokens.items()}


def audit_events(federation, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{federation.api}/audit/events", params=params, headers=federation.headers, timeout=10)
    return response.raise_for_status().json()["data"]  # type: ignore[no-any-return]


def submit(federation, headers: dict[str, str], **parameters: Any) -> dict[str, Any]:
    body = {"job": "fedavg_clinical", "parameters": parameters}
    response = httpx.post(f"{federation.api}/jobs", json=body, headers=headers, timeout=60)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_api_submission_records_requester(running_federation, user_headers) -> None:
    lead = "lead@hospital-a.org"
    job = submit(running_federation, user_headers[lead], num_rounds=1)

    done = running_federation.wait_for(job["job_id"], lambda j: j["status"].startswith("FINISHED"), timeout=240)

    assert done["status"] == "FINISHED:COMPLETED"
    assert done["requested_by"] == lead
    assert done["submitter"] == running_federation.state.service_identity
    requested = audit_events(running_federation, action="job.submit_requested", target=f"job:{job['job_id']}")
    assert [(e["actor"], e["role"], e["details"]["source_address"]) for e in requested] == [(lead, "lead", "127.0.0.1")]


def test_org_admin_aborts_lead_job(running_federation, user_headers) -> None:
    job = submit(running_federation, user_headers["lead@hospital-a.org"], num_rounds=50)
    running_federation.wait_for(job["job_id"], lambda j: j["status"] == "RUNNING", timeout=120)

    response = httpx.post(
        f"{running_federation.api}/jobs/{job['job_id']}/abort", headers=user_headers["it@hospital-a.org"], timeout=60
    )

    assert response.status_code == 202, response.text
    done = running_federation.wait_for(job["job_id"], lambda j: j["status"].startswith("FINISHED"), timeout=120)
    assert done["status"] == "FINISHED:ABORTED"


def test_console_command_audited(running_federation) -> None:
    state = running_federation.state
    kit = running_federation.workspace.kit_dir(state, state.lead_user)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env["HOME"] = str(running_federation.workspace.home_dir)
    subprocess.run(
        ["bash", str(kit / "startup" / "fl_admin.sh")],
        input=f"{state.lead_user}\nlist_jobs\nbye\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )

    deadline = time.monotonic() + 60
    commands: list[str] = []
    while time.monotonic() < deadline:
        events = audit_events(running_federation, action="console.command", actor=state.lead_user, limit="1000")
        commands = [event["details"]["command"] for event in events]
        if "list_jobs" in commands:
            break
        time.sleep(1.0)
    assert "list_jobs" in commands
    service_events = audit_events(running_federation, action="console.command", actor=state.service_identity)
    assert service_events == []
