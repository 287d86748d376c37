"""The role matrix, endpoint by endpoint, and the rows an org admin may see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from user_support import USERS, FakeFlareActions, issue_tokens, write_workspace

from admin_api.api.auth import ROLE_SCOPES, Role, Scope
from admin_api.app import create_app
from admin_api.settings import Settings

ROLES = list(USERS)


@pytest.fixture
def tokens(database_url: str, tmp_path: Path) -> dict[str, str]:
    return issue_tokens(database_url, write_workspace(tmp_path / "workspace"))


@pytest.fixture
def role_client(database_url: str, tmp_path: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN, workspace=tmp_path / "workspace"
    )  # type: ignore[arg-type]
    with TestClient(create_app(settings, flare_actions=FakeFlareActions())) as client:
        yield client


@pytest.fixture
def two_jobs(role_client: TestClient, make_event: EventFactory) -> None:
    """job-a: lead@hospital-a.org on both sites; job-b: a hospital_b user on hospital-b only."""
    events = [
        make_event("job.submitted", job_id="job-a", payload={"name": "a", "submitter": USERS["lead"],
                                                             "submitter_org": "hospital_a", "submitter_role": "lead"}),
        make_event("job.started", job_id="job-a", payload={"sites": ["hospital-a", "hospital-b"], "num_rounds": 2}),
        make_event("job.submitted", job_id="job-b", payload={"name": "b", "submitter": "lead@hospital-b.org",
                                                             "submitter_org": "hospital_b", "submitter_role": "lead"}),
        make_event("job.started", job_id="job-b", payload={"sites": ["hospital-b"], "num_rounds": 2}),
        make_event("site.joined", site="hospital-a", payload={"org": "hospital_a"}),
        make_event("site.joined", site="hospital-b", payload={"org": "hospital_b"}),
    ]  # fmt: skip
    response = role_client.post("/api/v1/events:batch", json=events, headers={"Authorization": f"Bearer {EVENT_TOKEN}"})
    assert response.status_code == 200, response.text


SUBMIT_BODY = {"job": "fedavg_clinical", "parameters": {"num_rounds": 1}}
ALL = dict.fromkeys(ROLES, 200)

# (method, path, body, expected status by role). Keep docs/roles.md in step with this table.
MATRIX: list[tuple[str, str, dict[str, Any] | None, dict[str, int]]] = [
    ("GET", "/api/v1/jobs", None, ALL),
    ("GET", "/api/v1/jobs/job-a", None, ALL),
    ("GET", "/api/v1/jobs/job-a/report", None, {**ALL, "member": 403}),
    ("GET", "/api/v1/reports/jobs/job-a", None, {**ALL, "member": 403}),
    ("GET", "/api/v1/reports/period?start=2026-01-01T00:00:00Z&end=2030-01-01T00:00:00Z", None,
     {**dict.fromkeys(ROLES, 403), "project_admin": 200, "compliance_officer": 200}),
    ("GET", "/api/v1/sites", None, ALL),
    ("GET", "/api/v1/sites/certificates", None, {**dict.fromkeys(ROLES, 403), "project_admin": 200, "org_admin": 200,
                                                 "compliance_officer": 200}),
    ("GET", "/api/v1/privacy/ledger", None, {**ALL, "member": 403}),
    ("GET", "/api/v1/privacy/sites", None, {**ALL, "member": 403}),
    ("GET", "/api/v1/audit/verify", None, {**dict.fromkeys(ROLES, 403), "project_admin": 200, "compliance_officer": 200}),
    ("GET", "/api/v1/audit/verify?from_checkpoint=true", None,
     {**dict.fromkeys(ROLES, 403), "project_admin": 200, "compliance_officer": 200}),
    ("GET", "/api/v1/audit/events", None, {**dict.fromkeys(ROLES, 403), "project_admin": 200, "compliance_officer": 200}),
    ("GET", "/api/v1/users", None, {**ALL, "lead": 403, "member": 403}),
    ("GET", "/api/v1/users/me", None, ALL),
    ("POST", "/api/v1/jobs", SUBMIT_BODY, {**dict.fromkeys(ROLES, 403), "project_admin": 201, "lead": 201}),
    ("POST", "/api/v1/jobs/job-a/abort", None, {**dict.fromkeys(ROLES, 403), "project_admin": 202, "org_admin": 202,
                                                "lead": 202}),
    ("POST", "/api/v1/jobs/job-b/abort", None, {**dict.fromkeys(ROLES, 403), "project_admin": 202, "org_admin": 404}),
    ("POST", "/api/v1/events", {}, dict.fromkeys(ROLES, 403)),
]  # fmt: skip


@pytest.mark.usefixtures("two_jobs")
@pytest.mark.parametrize(("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX])
def test_role_matrix(
    role_client: TestClient,
    tokens: dict[str, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    expected: dict[str, int],
) -> None:
    actual = {}
    for role in ROLES:
        response = role_client.request(method, path, json=body, headers={"Authorization": f"Bearer {tokens[role]}"})
        actual[role] = response.status_code
    assert actual == expected


def test_matrix_covers_scopes() -> None:
    assert set(ROLE_SCOPES) == set(Role)
    assert all(Scope.EVENTS_WRITE not in scopes for scopes in ROLE_SCOPES.values())
    assert ROLE_SCOPES[Role.COMPLIANCE_OFFICER].isdisjoint({Scope.JOBS_SUBMIT, Scope.JOBS_ABORT})


def test_roles_doc_lists_every_scope() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "roles.md").read_text(encoding="utf-8")
    for scope in Scope:
        assert f"`{scope.value}`" in doc, scope


@pytest.mark.usefixtures("two_jobs")
def test_org_admin_sees_own_org(role_client: TestClient, tokens: dict[str, str]) -> None:
    hospital_b = {"Authorization": f"Bearer {tokens['member']}"}
    hospital_a = {"Authorization": f"Bearer {tokens['org_admin']}"}

    jobs = role_client.get("/api/v1/jobs", headers=hospital_a).json()
    sites = role_client.get("/api/v1/sites", headers=hospital_a).json()
    users = role_client.get("/api/v1/users", headers=hospital_a).json()
    assert [job["job_id"] for job in jobs["data"]] == ["job-a"]
    assert jobs["count"] == 1
    assert [site["name"] for site in sites["data"]] == ["hospital-a"]
    assert {user["org"] for user in users["data"]} == {"hospital_a"}
    assert role_client.get("/api/v1/jobs/job-b", headers=hospital_a).status_code == 404
    assert [job["job_id"] for job in role_client.get("/api/v1/jobs", headers=hospital_b).json()["data"]] == [
        "job-b",
        "job-a",
    ]


@pytest.mark.usefixtures("two_jobs")
def test_org_admin_sees_own_privacy_spends(
    role_client: TestClient, tokens: dict[str, str], make_event: EventFactory
) -> None:
    spends = [
        make_event("privacy.spent", job_id="job-a", site="hospital-a", round=0,
                   payload={"epsilon": 0.5, "delta": 1e-5, "mechanism": "dp-sgd"}),
        make_event("privacy.spent", job_id="job-a", site="hospital-b", round=0,
                   payload={"epsilon": 0.4, "delta": 1e-5, "mechanism": "dp-sgd"}),
        make_event("privacy.spent", job_id="job-a", round=0, payload={"epsilon": 0.2, "delta": 1e-5,
                                                                     "mechanism": "dp-fedavg"}),
        make_event("privacy.spent", job_id="job-b", round=0, payload={"epsilon": 0.3, "delta": 1e-5,
                                                                     "mechanism": "dp-fedavg"}),
    ]  # fmt: skip
    response = role_client.post("/api/v1/events:batch", json=spends, headers={"Authorization": f"Bearer {EVENT_TOKEN}"})
    assert response.status_code == 200, response.text

    def read(role: str, path: str) -> dict[str, Any]:
        body: dict[str, Any] = role_client.get(path, headers={"Authorization": f"Bearer {tokens[role]}"}).json()
        return body

    ledger = read("org_admin", "/api/v1/privacy/ledger")
    assert sorted((e["job_id"], e["site"] or "") for e in ledger["data"]) == [("job-a", ""), ("job-a", "hospital-a")]
    assert ledger["count"] == 2
    # Another org's site, asked for by name, stays hidden.
    assert read("org_admin", "/api/v1/privacy/ledger?site=hospital-b")["data"] == [
        e for e in ledger["data"] if e["site"] is None
    ]
    sites = read("org_admin", "/api/v1/privacy/sites")["data"]
    assert [(site["site"], site["epsilon_spent"]) for site in sites] == [("hospital-a", pytest.approx(0.7))]

    everything = read("compliance_officer", "/api/v1/privacy/sites")["data"]
    assert {site["site"]: site["epsilon_spent"] for site in everything} == pytest.approx(
        {"hospital-a": 0.7, "hospital-b": 0.9}
    )
    assert read("lead", "/api/v1/privacy/ledger")["count"] == 4


@pytest.mark.usefixtures("two_jobs")
def test_denied_request_audited(role_client: TestClient, tokens: dict[str, str]) -> None:
    response = role_client.post(
        "/api/v1/jobs", json=SUBMIT_BODY, headers={"Authorization": f"Bearer {tokens['member']}"}
    )
    assert response.status_code == 403
    assert "jobs:submit" in response.json()["detail"]
    assert "docs/roles.md" in response.json()["detail"]

    events = role_client.get(
        "/api/v1/audit/events", params={"action": "access.denied"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ).json()["data"]
    assert [(e["actor"], e["role"], e["target"]) for e in events] == [
        (USERS["member"], "member", "api:POST /api/v1/jobs")
    ]
    assert events[0]["details"]["scope"] == "jobs:submit"


def test_api_token_is_project_admin(role_client: TestClient) -> None:
    me = role_client.get("/api/v1/users/me", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    assert me["role"] == "project_admin"
    assert me["kind"] == "service"
    assert "jobs:submit" in me["scopes"]
