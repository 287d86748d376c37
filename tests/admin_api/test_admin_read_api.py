"""Tests for the read API: jobs, sites, audit verification, health probes and problem details."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from admin_test_support import EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient

from admin_api.app import create_app
from admin_api.settings import Settings

PROBLEM_JSON = "application/problem+json"


def at(minutes: int) -> str:
    return (datetime(2026, 12, 4, 19, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def three_jobs(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    payload = {"submitter_org": "hospital_a", "submitter_role": "lead"}
    events = [
        make_event("job.submitted", job_id="job-a", occurred_at=at(0),
                   payload={**payload, "name": "fedavg_breast", "submitter": "lead@a.org"}),
        make_event("job.submitted", job_id="job-b", occurred_at=at(1),
                   payload={**payload, "name": "fedprox_50%_mu", "submitter": "lead@b.org"}),
        make_event("job.submitted", job_id="job-c", occurred_at=at(2),
                   payload={**payload, "name": "FedAvg_digits", "submitter": "lead@a.org"}),
        make_event("job.finished", job_id="job-a", occurred_at=at(3)),
        make_event("job.started", job_id="job-b", occurred_at=at(4)),
    ]  # fmt: skip
    response = client.post("/api/v1/events:batch", json=events, headers=event_headers)
    assert response.status_code == 200, response.text


def job_ids(client: TestClient, headers: dict[str, str], **params: Any) -> list[str]:
    response = client.get("/api/v1/jobs", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [job["job_id"] for job in response.json()["data"]]


@pytest.mark.usefixtures("three_jobs")
def test_jobs_newest_first(client: TestClient, read_headers: dict[str, str]) -> None:
    assert job_ids(client, read_headers) == ["job-c", "job-b", "job-a"]


@pytest.mark.usefixtures("three_jobs")
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "SUBMITTED"}, ["job-c"]),
        ({"status": "RUNNING"}, ["job-b"]),
        ({"status": "FINISHED"}, ["job-a"]),
        ({"status": "FINISHED:COMPLETED"}, ["job-a"]),
        ({"submitter": "lead@a.org"}, ["job-c", "job-a"]),
        ({"name": "fedavg"}, ["job-c", "job-a"]),
        ({"name": "50%"}, ["job-b"]),
        ({"name": "_mu"}, ["job-b"]),
        ({"submitter": "lead@a.org", "status": "SUBMITTED"}, ["job-c"]),
    ],
)
def test_jobs_filtered(
    client: TestClient, read_headers: dict[str, str], params: dict[str, str], expected: list[str]
) -> None:
    assert job_ids(client, read_headers, **params) == expected


@pytest.mark.usefixtures("three_jobs")
def test_jobs_paginated(client: TestClient, read_headers: dict[str, str]) -> None:
    response = client.get("/api/v1/jobs", params={"limit": 2, "offset": 1}, headers=read_headers)
    body = response.json()
    assert [job["job_id"] for job in body["data"]] == ["job-b", "job-a"]
    assert body["count"] == 3
    assert body["limit"] == 2
    assert body["offset"] == 1


@pytest.mark.parametrize("params", [{"status": "DONE"}, {"limit": 0}, {"limit": 501}, {"offset": -1}])
def test_jobs_bad_query_422(client: TestClient, read_headers: dict[str, str], params: dict[str, Any]) -> None:
    response = client.get("/api/v1/jobs", params=params, headers=read_headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["errors"][0]["loc"][0] == "query"


def test_unknown_job_404(client: TestClient, read_headers: dict[str, str]) -> None:
    for path in ("/api/v1/jobs/missing", "/api/v1/jobs/missing/report"):
        response = client.get(path, headers=read_headers)
        assert response.status_code == 404
        assert response.headers["content-type"] == PROBLEM_JSON
        assert "job 'missing' not found" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/api/v1/jobs/job-1", "/api/v1/sites", "/api/v1/audit/verify"])
def test_reads_need_token(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON


def test_event_token_cannot_read(client: TestClient, event_headers: dict[str, str]) -> None:
    response = client.get("/api/v1/jobs", headers=event_headers)
    assert response.status_code == 403
    assert "'read' scope" in response.json()["detail"]


def test_reads_disabled_without_api_token(database_url: str) -> None:
    settings = Settings(database_url=database_url, event_token=EVENT_TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/v1/jobs", headers={"Authorization": "Bearer anything-at-all"})
    assert response.status_code == 401
    assert "CONSORTIA_API_TOKEN" in response.json()["detail"]


def test_verify_empty_chain(client: TestClient, read_headers: dict[str, str]) -> None:
    body = client.get("/api/v1/audit/verify", headers=read_headers).json()
    assert body["ok"] is True
    assert body["num_events"] == 0
    assert body["head_hash"] is None


def test_health_probes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_503_when_database_gone(client: TestClient) -> None:
    database = client.app.state.database  # type: ignore[attr-defined]
    original = database.ping

    def failing_ping() -> None:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    database.ping = failing_ping
    try:
        response = client.get("/readyz")
    finally:
        database.ping = original
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "database unreachable" in response.json()["detail"]


def test_request_id_echoed(client: TestClient) -> None:
    response = client.get("/api/v1/jobs", headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    assert response.json()["request_id"] == "trace-123"


def test_invalid_request_id_replaced(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert response.headers["x-request-id"] != "bad id with spaces"
    assert len(response.headers["x-request-id"]) == 32


def test_unknown_route_problem(client: TestClient) -> None:
    response = client.get("/api/v2/jobs")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "/api/v1" in response.json()["detail"]


def test_openapi_lists_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/v1/events", "/api/v1/events:batch", "/api/v1/jobs", "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/report", "/api/v1/sites", "/api/v1/audit/verify", "/healthz", "/readyz",
    } <= set(paths)  # fmt: skip
