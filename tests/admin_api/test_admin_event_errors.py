"""A rejected event's problem detail names the field that is wrong for the type it declares."""

import uuid
from datetime import UTC, datetime


def test_error_names_payload_field(client, event_headers):
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "site.joined",
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": None,
        "site": "hospital-a",
        "round": None,
        "actor": None,
        "payload": {"org": "x" * 300},
    }
    response = client.post("/api/v1/events", json=event, headers=event_headers)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "org" in detail
    assert "job.submitted" not in detail


def test_huge_round_rejected(client, event_headers):
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "round.started",
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": "j1",
        "site": None,
        "round": 10**30,
        "actor": None,
        "payload": {"num_rounds": 2, "sites": ["hospital-a"]},
    }
    response = client.post("/api/v1/events", json=event, headers=event_headers)
    assert response.status_code == 422
    assert "round" in response.json()["detail"]


def test_occurred_at_outside_utc_range_rejected(client, event_headers):
    """Year 1 at +01:00 is before 0001-01-01T00:00Z, which Python cannot represent: a 422, not a 500."""
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "site.left",
        "occurred_at": "0001-01-01T00:00:00+01:00",
        "job_id": None,
        "site": "hospital-a",
        "round": None,
        "actor": None,
        "payload": {},
    }
    response = client.post("/api/v1/events", json=event, headers=event_headers)
    assert response.status_code == 422
    assert "outside the range" in response.json()["detail"]
