"""Job submission and abort through the admin API, with a fake FLARE."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from user_support import USERS, FakeFlareActions, issue_tokens, write_workspace

from admin_api.app import create_app
from admin_api.errors import FlareActionError
from admin_api.schemas.job_requests import JobParameters
from admin_api.settings import Settings
from consortia.jobs import SERVER_PARAMETERS


@pytest.fixture
def flare() -> FakeFlareActions:
    return FakeFlareActions()


@pytest.fixture
def tokens(database_url: str, tmp_path: Path) -> dict[str, str]:
    return issue_tokens(database_url, write_workspace(tmp_path / "workspace"))


@pytest.fixture
def api(database_url: str, tmp_path: Path, tokens: dict[str, str], flare: FakeFlareActions) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN, workspace=tmp_path / "workspace"
    )  # type: ignore[arg-type]
    with TestClient(create_app(settings, flare_actions=flare)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def audit(api: TestClient, action: str) -> list[dict[str, Any]]:
    response = api.get("/api/v1/audit/events", params={"action": action}, headers=auth(API_TOKEN))
    return response.json()["data"]  # type: ignore[no-any-return]


def test_parameters_match_prepare_job() -> None:
    assert set(JobParameters.model_fields) == {*SERVER_PARAMETERS, "script_args"}


def test_submit_records_requester(api: TestClient, tokens: dict[str, str], flare: FakeFlareActions) -> None:
    body = {"job": "fedavg_clinical", "job_name": "api_run", "parameters": {"num_rounds": 2, "round_timeout": 60}}
    response = api.post("/api/v1/jobs", json=body, headers=auth(tokens["lead"]))

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["requested_by"] == USERS["lead"]
    assert job["status"] == "SUBMITTED"
    assert job["name"] == "api_run"
    assert flare.server_configs[0]["workflows"][0]["args"]["num_rounds"] == 2
    events = audit(api, "job.submit_requested")
    assert len(events) == 1
    assert events[0]["actor"] == USERS["lead"]
    assert events[0]["role"] == "lead"
    assert events[0]["target"] == f"job:{job['job_id']}"
    assert events[0]["details"]["source_address"] == "testclient"
    assert events[0]["details"]["outcome"] == "submitted"
    assert events[0]["details"]["parameters"] == {"num_rounds": 2, "round_timeout": 60}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"job": "no_such_job"}, "unknown job 'no_such_job'"),
        ({"job": "../etc"}, "body.job"),
        ({"job": "fedavg_clinical", "parameters": {"num_rounds": "5"}}, "valid integer"),
        ({"job": "fedavg_clinical", "parameters": {"num_rounds": 0}}, "greater than or equal to 1"),
        ({"job": "fedavg_clinical", "parameters": {"learning_rate": 0.1}}, "Extra inputs are not permitted"),
    ],
)
def test_submit_bad_input(
    api: TestClient, tokens: dict[str, str], flare: FakeFlareActions, body: dict[str, Any], fragment: str
) -> None:
    response = api.post("/api/v1/jobs", json=body, headers=auth(tokens["lead"]))
    assert response.status_code == 422
    assert fragment in response.json()["detail"] + json.dumps(response.json().get("errors"))
    assert flare.submitted == []


def test_submit_flare_failure_audited(api: TestClient, tokens: dict[str, str], flare: FakeFlareActions) -> None:
    flare.error = FlareActionError("FLARE failed to submit job folder fedavg_clinical: NoConnection: refused")
    response = api.post("/api/v1/jobs", json={"job": "fedavg_clinical"}, headers=auth(tokens["project_admin"]))

    assert response.status_code == 502
    assert "NoConnection" in response.json()["detail"]
    events = audit(api, "job.submit_requested")
    assert events[0]["details"]["outcome"] == "failed"
    assert events[0]["target"] == "job-definition:fedavg_clinical"


def submit_as(api: TestClient, token: str) -> str:
    response = api.post("/api/v1/jobs", json={"job": "fedavg_clinical"}, headers=auth(token))
    assert response.status_code == 201, response.text
    return str(response.json()["job_id"])


def test_lead_aborts_only_own(api: TestClient, tokens: dict[str, str], flare: FakeFlareActions) -> None:
    admin_job = submit_as(api, tokens["project_admin"])
    lead_job = submit_as(api, tokens["lead"])

    denied = api.post(f"/api/v1/jobs/{admin_job}/abort", headers=auth(tokens["lead"]))
    allowed = api.post(f"/api/v1/jobs/{lead_job}/abort", headers=auth(tokens["lead"]))

    assert denied.status_code == 403
    assert "may abort only its own jobs" in denied.json()["detail"]
    assert allowed.status_code == 202
    assert allowed.json()["flare_message"].startswith("Abort signal")
    assert flare.aborted == [lead_job]
    assert [e["target"] for e in audit(api, "job.abort_requested")] == [f"job:{lead_job}"]
    assert [e["details"]["request"] for e in audit(api, "access.denied")] == ["abort"]


def test_org_admin_aborts_org_job(api: TestClient, tokens: dict[str, str], flare: FakeFlareActions) -> None:
    lead_job = submit_as(api, tokens["lead"])
    response = api.post(f"/api/v1/jobs/{lead_job}/abort", headers=auth(tokens["org_admin"]))
    assert response.status_code == 202
    assert audit(api, "job.abort_requested")[0]["actor"] == USERS["org_admin"]


def test_abort_finished_job_409(api: TestClient, tokens: dict[str, str], make_event: EventFactory) -> None:
    events = [make_event("job.submitted", job_id="job-done"), make_event("job.finished", job_id="job-done")]
    api.post("/api/v1/events:batch", json=events, headers=auth(EVENT_TOKEN))
    response = api.post("/api/v1/jobs/job-done/abort", headers=auth(tokens["project_admin"]))
    assert response.status_code == 409
    assert "already finished with status FINISHED:COMPLETED" in response.json()["detail"]


def test_abort_unknown_job_404(api: TestClient, tokens: dict[str, str]) -> None:
    response = api.post("/api/v1/jobs/missing/abort", headers=auth(tokens["project_admin"]))
    assert response.status_code == 404


def test_submit_without_flare_502(database_url: str) -> None:
    settings = Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/jobs", json={"job": "fedavg_clinical"}, headers=auth(API_TOKEN))
    assert response.status_code == 502
    assert "CONSORTIA_FLARE_ADMIN_KIT" in response.json()["detail"]
