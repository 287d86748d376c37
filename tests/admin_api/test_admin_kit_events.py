"""Kit issuance events from ``consortia kit build`` land in the audit chain with their own target."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient


def kit_event(**payload: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "kit.issued",
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": None,
        "site": "hospital-a",
        "round": None,
        "actor": "it-operator",
        "payload": {
            "participant": "hospital-a",
            "role": "site",
            "certificate_fingerprint": "AB:CD",
            "expires_at": "2027-11-29T20:05:57+00:00",
            **payload,
        },
    }


def test_kit_issued_audited(client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str]) -> None:
    response = client.post("/api/v1/events", json=kit_event(), headers=event_headers)
    assert response.status_code == 201, response.text
    verify = client.get("/api/v1/audit/verify", headers=read_headers).json()
    assert verify["ok"] is True
    assert verify["num_events"] == 1


def test_kit_issued_needs_expiry(client: TestClient, event_headers: dict[str, str]) -> None:
    event = kit_event()
    del event["payload"]["expires_at"]
    response = client.post("/api/v1/events", json=event, headers=event_headers)
    assert response.status_code == 422
    assert "expires_at" in response.text
