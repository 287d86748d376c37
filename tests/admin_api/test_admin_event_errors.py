"""A rejected event's problem detail names the field that is wrong for the type it declares."""

import uuid
from datetime import UTC, datetime

import pytest


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


def round_started(round_number: int) -> dict:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "round.started",
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": "j1",
        "site": None,
        "round": round_number,
        "actor": None,
        "payload": {"num_rounds": 2, "sites": ["hospital-a"]},
    }


@pytest.mark.parametrize("round_number", [10**30, 2**31])
def test_huge_round_rejected(client, event_headers, round_number):
    response = client.post("/api/v1/events", json=round_started(round_number), headers=event_headers)
    assert response.status_code == 422
    assert "round" in response.json()["detail"]


def test_round_at_int32_limit_stored(client, event_headers):
    """The largest round an INTEGER column can store is accepted on both databases."""
    response = client.post("/api/v1/events", json=round_started(2**31 - 1), headers=event_headers)
    assert response.status_code in (200, 201, 202)


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
