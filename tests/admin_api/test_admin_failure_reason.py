"""A job stopped by the server workflow keeps the reason in its audit report."""

import uuid
from datetime import UTC, datetime


def test_failure_reason_in_report(client, event_headers, read_headers):
    event = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "round.completed",
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": "j1",
        "site": None,
        "round": 0,
        "actor": None,
        "payload": {
            "num_accepted": 0,
            "num_rejected": 1,
            "global_metrics": {"roc_auc": None},
            "site_metrics": {},
            "failure_reason": "min_sites=5 but only 3 sites are connected",
        },
    }
    response = client.post("/api/v1/events", json=event, headers=event_headers)
    assert response.status_code == 201, response.text
    report = client.get("/api/v1/jobs/j1/report", headers=read_headers)
    assert "min_sites=5 but only 3 sites are connected" in report.text
