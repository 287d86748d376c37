"""Tests for event ingestion through POST /api/v1/events and /api/v1/events:batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EventFactory
from fastapi.testclient import TestClient

PROBLEM_JSON = "application/problem+json"


def at(minutes: int) -> str:
    return (datetime(2026, 12, 4, 19, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def post(client: TestClient, headers: dict[str, str], event: dict[str, Any]) -> Any:
    return client.post("/api/v1/events", json=event, headers=headers)


def job(client: TestClient, read_headers: dict[str, str], job_id: str = "job-1") -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=read_headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def verify(client: TestClient, read_headers: dict[str, str]) -> dict[str, Any]:
    return client.get("/api/v1/audit/verify", headers=read_headers).json()  # type: ignore[no-any-return]


def test_submitted_creates_job(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    response = post(client, event_headers, make_event("job.submitted", occurred_at=at(0)))
    assert response.status_code == 201
    assert response.json()["duplicate"] is False
    assert response.json()["audit_seq"] == 1

    recorded = job(client, read_headers)
    assert recorded["status"] == "SUBMITTED"
    assert recorded["name"] == "fedavg"
    assert recorded["submitter"] == "lead@hospital-a.org"
    assert recorded["submitter_org"] == "hospital_a"
    assert recorded["submitter_role"] == "lead"
    assert recorded["submitted_at"] == "2026-12-04T19:00:00Z"
    assert [t["to_status"] for t in recorded["status_history"]] == ["SUBMITTED"]


def test_replay_writes_nothing(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    event = make_event("job.submitted")
    first = post(client, event_headers, event)
    replay = post(client, event_headers, event)

    assert replay.status_code == 200
    assert replay.json() == {**first.json(), "duplicate": True}
    assert verify(client, read_headers)["num_events"] == 1
    assert len(job(client, read_headers)["status_history"]) == 1


def test_reused_event_id_conflict(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    event = make_event("job.submitted")
    post(client, event_headers, event)
    changed = {**event, "payload": {**event["payload"], "name": "other"}}
    response = post(client, event_headers, changed)
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_JSON
    assert event["event_id"] in response.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-wrong-token-wrong-token-00", "Basic dXNlcjpwYXNz", f"Bearer {API_TOKEN}x"],
)
def test_bad_token_401(client: TestClient, make_event: EventFactory, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = post(client, headers, make_event("job.submitted"))
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"] == "Bearer"
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"] == "urn:consortia:problem:unauthorized"
    assert "bearer token" in problem["detail"]


def test_read_token_cannot_post(client: TestClient, read_headers: dict[str, str], make_event: EventFactory) -> None:
    response = post(client, read_headers, make_event("job.submitted"))
    assert response.status_code == 403
    assert "events:write" in response.json()["detail"]


def test_unknown_schema_version_422(
    client: TestClient, event_headers: dict[str, str], make_event: EventFactory
) -> None:
    response = post(client, event_headers, make_event("job.submitted", schema_version=2))
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert "unsupported schema_version 2" in response.json()["detail"]


def test_unknown_type_422(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    event = make_event("job.submitted", type="job.exploded")
    response = post(client, event_headers, event)
    assert response.status_code == 422
    assert "'job.exploded'" in response.json()["detail"]


@pytest.mark.parametrize(
    ("event_type", "overrides", "fragment"),
    [
        ("job.submitted", {"job_id": None}, "need job_id"),
        ("contribution.accepted", {"site": None}, "need site"),
        ("round.completed", {"round": None}, "need round"),
        ("job.submitted", {"occurred_at": "2026-12-04T19:00:00"}, "timezone"),
        ("job.submitted", {"event_id": "not-a-uuid"}, "event_id"),
        ("job.submitted", {"unexpected": 1}, "unexpected"),
        ("job.finished", {"payload": {"status": "RUNNING"}}, "needs a FINISHED:* status"),
        ("contribution.accepted", {"payload": {"num_examples": -1, "metrics": {}}}, "num_examples"),
        ("job.submitted", {"job_id": "../etc"}, "job_id"),
    ],
)
def test_invalid_event_422(
    client: TestClient,
    event_headers: dict[str, str],
    make_event: EventFactory,
    event_type: str,
    overrides: dict[str, Any],
    fragment: str,
) -> None:
    response = post(client, event_headers, make_event(event_type, **overrides))
    assert response.status_code == 422
    problem = response.json()
    assert fragment in problem["detail"] + str(problem["errors"])


def test_nan_metric_422(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    body = make_event("round.completed")
    raw = client.build_request("POST", "/api/v1/events", json=body).content.decode()
    raw = raw.replace('"loss":0.35', '"loss":NaN').replace('"loss": 0.35', '"loss": NaN')
    assert "NaN" in raw
    response = client.post("/api/v1/events", content=raw, headers={**event_headers, "Content-Type": "application/json"})
    assert response.status_code == 422
    assert "use null for an undefined number" in response.json()["detail"]


def test_status_never_regresses(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post(client, event_headers, make_event("job.finished", occurred_at=at(10)))
    post(client, event_headers, make_event("round.started", occurred_at=at(5)))
    post(client, event_headers, make_event("job.started", occurred_at=at(2)))
    post(client, event_headers, make_event("job.submitted", occurred_at=at(0)))

    recorded = job(client, read_headers)
    assert recorded["status"] == "FINISHED:COMPLETED"
    assert [t["to_status"] for t in recorded["status_history"]] == ["FINISHED:COMPLETED"]
    assert recorded["finished_at"] == "2026-12-04T19:10:00Z"
    assert recorded["submitter"] == "lead@hospital-a.org"
    assert recorded["submitted_at"] == "2026-12-04T19:00:00Z"
    assert recorded["started_at"] == "2026-12-04T19:02:00Z"


def test_ignored_status_audited(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post(client, event_headers, make_event("job.finished"))
    post(client, event_headers, make_event("round.started"))
    report = client.get("/api/v1/jobs/job-1/report", headers=read_headers).json()
    effects = report["audit_events"][-1]["details"]["effects"]
    assert effects["status_change"] is None
    assert effects["status_ignored"] == "RUNNING"


def test_later_final_status_kept_by_events(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post(client, event_headers, make_event("job.finished", payload={"status": "FINISHED:ABORTED"}))
    post(client, event_headers, make_event("job.finished", payload={"status": "FINISHED:COMPLETED"}))
    assert job(client, read_headers)["status"] == "FINISHED:ABORTED"


def test_full_job_lifecycle(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    events = [
        make_event("site.joined", site="hospital-a", occurred_at=at(0)),
        make_event("job.submitted", occurred_at=at(1), actor="lead@hospital-a.org"),
        make_event("job.started", occurred_at=at(2)),
        make_event("round.started", occurred_at=at(3)),
        make_event(
            "contribution.accepted",
            site="hospital-a",
            occurred_at=at(4),
            payload={"num_examples": 152, "upload_bytes": 1024, "metrics": {"loss": 0.41, "dp": True, "val/acc": 0.8}},
        ),
        make_event("contribution.rejected", site="hospital-b", occurred_at=at(4)),
        make_event(
            "round.completed",
            occurred_at=at(5),
            payload={
                "num_accepted": 1,
                "num_rejected": 1,
                "global_metrics": {"loss": 0.35, "roc_auc": None, "accuracy": 0.9},
                "site_metrics": {"hospital-a": {"val_loss": 0.4}},
            },
        ),
        make_event("privacy.spent", occurred_at=at(6), payload={"epsilon": 1.2, "delta": 1e-5, "accountant": "rdp"}),
        make_event("job.finished", occurred_at=at(7)),
        make_event("site.left", site="hospital-a", occurred_at=at(8)),
    ]
    response = client.post("/api/v1/events:batch", json=events, headers=event_headers)
    assert response.status_code == 200, response.text
    assert response.json()["num_created"] == len(events)

    recorded = job(client, read_headers)
    assert recorded["status"] == "FINISHED:COMPLETED"
    assert recorded["num_rounds"] == 3
    assert recorded["sites"] == ["hospital-a", "hospital-b"]
    assert [t["to_status"] for t in recorded["status_history"]] == ["SUBMITTED", "RUNNING", "FINISHED:COMPLETED"]
    assert all(t["source"] == "event" for t in recorded["status_history"])

    (round_0,) = recorded["rounds"]
    assert round_0["global_metrics"] == {
        "loss": 0.35, "roc_auc": None, "accuracy": 0.9, "num_accepted": 1, "num_rejected": 1,
    }  # fmt: skip
    assert round_0["site_metrics"]["hospital-a"] == {"loss": 0.41, "dp": True, "val/acc": 0.8, "num_examples": 152,
                                                     "upload_bytes": 1024, "val_loss": 0.4}  # fmt: skip
    contributions = {c["site"]: c for c in round_0["contributions"]}
    assert contributions["hospital-a"]["accepted"] is True
    assert contributions["hospital-a"]["num_examples"] == 152
    assert contributions["hospital-b"]["accepted"] is False
    assert contributions["hospital-b"]["reason_code"] == "non_finite"

    sites = {s["name"]: s for s in client.get("/api/v1/sites", headers=read_headers).json()["data"]}
    assert sites["hospital-a"]["org"] == "hospital_a"
    assert sites["hospital-a"]["status"] == "offline"
    assert sites["hospital-b"]["status"] == "unknown"
    assert verify(client, read_headers) | {"head_hash": None} == {
        "ok": True, "num_events": len(events), "head_seq": len(events), "head_hash": None,
        "first_bad_seq": None, "reason": None, "verified_from_seq": None,
    }  # fmt: skip


def test_forwarder_job_started_fills_submitter(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    flare_started = {
        "name": "bc_fedavg",
        "sites": ["hospital-a"],
        "submitter": "consortia-service@hq.org",
        "submitter_org": "hq",
        "submitter_role": "project_admin",
    }
    post(client, event_headers, make_event("job.started", job_id="job-console", payload=flare_started))
    post(client, event_headers, make_event("job.submitted"))
    post(client, event_headers, make_event("job.started", payload=flare_started))

    from_console = job(client, read_headers, "job-console")
    assert from_console["submitter"] == "consortia-service@hq.org"
    assert from_console["submitter_role"] == "project_admin"
    assert from_console["name"] == "bc_fedavg"
    from_api = job(client, read_headers)
    assert from_api["submitter"] == "lead@hospital-a.org"
    assert from_api["name"] == "fedavg"


def test_round_numeric_extras_kept(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    payload = {
        "num_accepted": 2,
        "num_rejected": 0,
        "bytes_uploaded": 4096,
        "evaluation_only": True,
        "global_metrics": {"loss": 0.3},
        "site_metrics": {},
    }
    post(client, event_headers, make_event("round.completed", round=3, payload=payload))
    (round_3,) = job(client, read_headers)["rounds"]
    assert round_3["round"] == 3
    assert round_3["global_metrics"] == {"loss": 0.3, "bytes_uploaded": 4096, "num_accepted": 2, "num_rejected": 0}


def test_late_site_left_ignored(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post(client, event_headers, make_event("site.joined", occurred_at=at(5)))
    post(client, event_headers, make_event("site.left", occurred_at=at(1)))
    (site,) = client.get("/api/v1/sites", headers=read_headers).json()["data"]
    assert site["status"] == "online"
    assert site["first_seen"] == "2026-12-04T19:01:00Z"
    assert site["last_seen"] == "2026-12-04T19:05:00Z"


def test_batch_is_atomic(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    first = make_event("job.submitted")
    post(client, event_headers, first)
    conflicting = {**first, "payload": {**first["payload"], "name": "changed"}}
    batch = [make_event("job.submitted", job_id="job-2"), conflicting]

    response = client.post("/api/v1/events:batch", json=batch, headers=event_headers)

    assert response.status_code == 409
    assert client.get("/api/v1/jobs/job-2", headers=read_headers).status_code == 404
    assert verify(client, read_headers)["num_events"] == 1


def test_batch_duplicate_inside(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    event = make_event("job.submitted")
    response = client.post("/api/v1/events:batch", json=[event, event], headers=event_headers)
    body = response.json()
    assert [r["duplicate"] for r in body["results"]] == [False, True]
    assert body["num_duplicates"] == 1


def test_batch_limits(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> None:
    empty = client.post("/api/v1/events:batch", json=[], headers=event_headers)
    assert empty.status_code == 422
    event = make_event("site.left")
    too_many = [{**event, "event_id": str(uuid.uuid4())} for _ in range(501)]
    response = client.post("/api/v1/events:batch", json=too_many, headers=event_headers)
    assert response.status_code == 422
    assert "500" in response.json()["detail"]


def test_body_too_large_413(client: TestClient, event_headers: dict[str, str]) -> None:
    response = client.post(
        "/api/v1/events",
        content=b"[" + b" " * (9 * 1024 * 1024) + b"]",
        headers={**event_headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON


def test_audit_actor_and_role(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post(client, event_headers, make_event("job.submitted", actor="lead@hospital-a.org"))
    post(client, event_headers, make_event("job.started"))
    events = client.get("/api/v1/jobs/job-1/report", headers=read_headers).json()["audit_events"]
    assert (events[0]["actor"], events[0]["role"]) == ("lead@hospital-a.org", "lead")
    assert (events[1]["actor"], events[1]["role"]) == ("flare-server", "system")
    assert events[0]["target"] == "job:job-1"
    assert events[0]["details"]["payload"]["name"] == "fedavg"
