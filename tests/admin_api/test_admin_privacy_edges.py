"""Edge cases of the privacy ledger, certificate and audit endpoints: overflowing sums, NUL bytes, event order.

Every test runs on SQLite and on PostgreSQL (the ``database_url`` fixture). The NUL byte cases matter on PostgreSQL,
whose text cannot hold NUL.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN
from fastapi.testclient import TestClient
from user_support import write_workspace

from admin_api.app import create_app
from admin_api.settings import Settings

START = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
EVENT_HEADERS = {"Authorization": f"Bearer {EVENT_TOKEN}"}
READ_HEADERS = {"Authorization": f"Bearer {API_TOKEN}"}
FLOAT_NEAR_MAX = 1e308
"""Finite epsilon that the event schema accepts. Two of them add up to more than the largest float."""


def event(event_type: str, *, minutes: float = 0, **fields: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": (START + timedelta(minutes=minutes)).isoformat(),
        "job_id": None,
        "site": None,
        "round": None,
        "actor": None,
        "payload": {},
    }
    envelope.update(fields)
    return envelope


def job_started(job_id: str, sites: list[str]) -> dict[str, Any]:
    return event("job.started", job_id=job_id, payload={"sites": sites})


def spent(job_id: str, epsilon: float, *, site: str | None = None, round_number: int = 0, mechanism: str,
          delta: float = 1e-5) -> dict[str, Any]:  # fmt: skip
    payload = {"epsilon": epsilon, "delta": delta, "mechanism": mechanism}
    return event("privacy.spent", minutes=round_number + 1, job_id=job_id, site=site, round=round_number,
                 payload=payload)  # fmt: skip


@pytest.fixture
def app_client(database_url: str) -> Iterator[TestClient]:
    """Test client that returns a server error as its 500 response instead of raising it in the test."""
    settings = Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN)  # type: ignore[arg-type]
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def post(client: TestClient, *events: dict[str, Any]) -> None:
    response = client.post("/api/v1/events:batch", json=list(events), headers=EVENT_HEADERS)
    assert response.status_code == 200, response.text


def site_totals(client: TestClient) -> dict[str, dict[str, Any]]:
    response = client.get("/api/v1/privacy/sites", headers=READ_HEADERS)
    assert response.status_code == 200, response.text
    return {site["site"]: site for site in response.json()["data"]}


def test_site_totals_float_overflow(app_client: TestClient) -> None:
    # Ingestion accepts each epsilon, so a sum past the float range is reported as the largest float, not a 500.
    post(
        app_client,
        job_started("job-1", ["hospital-a"]),
        job_started("job-2", ["hospital-a"]),
        spent("job-1", FLOAT_NEAR_MAX, site="hospital-a", mechanism="dp-sgd"),
        spent("job-2", FLOAT_NEAR_MAX, site="hospital-a", mechanism="dp-sgd"),
    )
    assert site_totals(app_client)["hospital-a"]["epsilon_spent"] == sys.float_info.max


def test_job_report_float_overflow(app_client: TestClient) -> None:
    # One job uses DP-SGD and DP-FedAvg at one site. The report adds the two kinds and overflows the same way.
    post(
        app_client,
        job_started("job-1", ["hospital-a"]),
        spent("job-1", FLOAT_NEAR_MAX, site="hospital-a", mechanism="dp-sgd"),
        spent("job-1", FLOAT_NEAR_MAX, mechanism="dp-fedavg"),
    )
    response = app_client.get("/api/v1/jobs/job-1/report", headers=READ_HEADERS)
    assert response.status_code == 200, response.text


def test_signed_report_float_overflow(database_url: str, tmp_path: Path) -> None:
    # A workspace gives the service a signing key, so the signed report gets past its 503 and overflows too.
    settings = Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN,  # type: ignore[arg-type]
                        workspace=write_workspace(tmp_path / "workspace"))  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        post(
            client,
            job_started("job-1", ["hospital-a"]),
            spent("job-1", FLOAT_NEAR_MAX, site="hospital-a", mechanism="dp-sgd"),
            spent("job-1", FLOAT_NEAR_MAX, mechanism="dp-fedavg"),
        )
        response = client.get("/api/v1/reports/jobs/job-1", headers=READ_HEADERS)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/privacy/ledger", {"site": "hospital\x00a"}),
        ("/api/v1/privacy/ledger", {"job_id": "job\x001"}),
        ("/api/v1/audit/events", {"actor": "admin\x00"}),
    ],
)
def test_filter_nul_byte(app_client: TestClient, path: str, params: dict[str, str]) -> None:
    # PostgreSQL text cannot contain NUL, so the service rejects it before any query on both databases.
    response = app_client.get(path, params=params, headers=READ_HEADERS)
    assert response.status_code == 422, response.text
    assert "NUL byte" in response.json()["detail"]


def test_unlisted_site_client_spend(app_client: TestClient) -> None:
    # hospital-c reports its own DP-SGD spend in job-1, but privacy.spent does not add it to the job's sites.
    # So the job's DP-FedAvg epsilon, which covers every participating site, is not charged to hospital-c.
    post(
        app_client,
        job_started("job-1", ["hospital-a"]),
        spent("job-1", 1.0, mechanism="dp-fedavg"),
        spent("job-1", 0.5, site="hospital-c", mechanism="dp-sgd"),
    )
    totals = site_totals(app_client)
    assert totals["hospital-a"]["epsilon_spent"] == pytest.approx(1.0)
    assert totals["hospital-c"]["epsilon_spent"] == pytest.approx(1.5)


def test_client_spend_with_site(app_client: TestClient) -> None:
    # A DP-FedAvg spend is the job's cumulative client-level epsilon. An event that names a site charges its
    # 5.0 to that site only, and the job's other site keeps the older 1.0.
    post(
        app_client,
        job_started("job-1", ["hospital-a", "hospital-b"]),
        spent("job-1", 1.0, mechanism="dp-fedavg", round_number=0),
        spent("job-1", 5.0, site="hospital-a", mechanism="dp-fedavg", round_number=4),
    )
    totals = site_totals(app_client)
    assert totals["hospital-a"]["epsilon_spent"] == pytest.approx(5.0)
    assert totals["hospital-b"]["epsilon_spent"] == pytest.approx(5.0)


def test_reemitted_round_larger_delta(app_client: TestClient) -> None:
    # A re-emitted round (new event_id) with the same epsilon and a larger delta is recorded as 'unchanged'.
    # So the ledger keeps the smaller delta, and the site's delta_spent is too low.
    post(
        app_client,
        job_started("job-1", ["hospital-a"]),
        spent("job-1", 1.0, site="hospital-a", mechanism="dp-sgd", delta=1e-5),
        spent("job-1", 1.0, site="hospital-a", mechanism="dp-sgd", delta=1e-3),
    )
    assert site_totals(app_client)["hospital-a"]["delta_spent"] == pytest.approx(1e-3)


def test_ledger_site_filter_quotes(app_client: TestClient) -> None:
    # The site filter goes into a LIKE pattern over the job's JSON site list, and quotes are not rejected.
    # So a value that names no site matches the client-level rows of a job listing hospital-a and hospital-b.
    post(app_client, job_started("job-1", ["hospital-a", "hospital-b"]), spent("job-1", 1.0, mechanism="dp-fedavg"))
    params = {"site": 'hospital-a", "hospital-b'}
    response = app_client.get("/api/v1/privacy/ledger", params=params, headers=READ_HEADERS)
    assert response.status_code in (200, 422), response.text

    if response.status_code == 200:
        assert response.json()["count"] == 0, response.text


def _kit(site: str, fingerprint: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    payload = {"participant": site, "role": "site", "certificate_fingerprint": fingerprint,
               "expires_at": (now + timedelta(days=100)).isoformat()}  # fmt: skip
    return event("kit.issued", site=site, actor="admin@consortium.org", payload=payload,
                 occurred_at=(now - timedelta(days=1)).isoformat())  # fmt: skip


def _rotation(site: str, fingerprint: str) -> dict[str, Any]:
    payload = {"revoked": True, "scope": "certificate", "certificate_fingerprint": fingerprint, "reason": "rotated"}
    return event("site.left", site=site, actor="it-operator", payload=payload,
                 occurred_at=(datetime.now(UTC) - timedelta(hours=12)).isoformat())  # fmt: skip


def test_rotation_padded_fingerprint_order(app_client: TestClient) -> None:
    # revoke_certificate strips a rotation's fingerprint, but _revocation_of (rotation first) compares it as sent.
    # So the same two events revoke the certificate or not, depending on the order they arrive in.
    post(app_client, _kit("hospital-a", "AA:01"), _rotation("hospital-a", " AA:01 "))
    post(app_client, _rotation("hospital-b", " BB:01 "), _kit("hospital-b", "BB:01"))
    response = app_client.get("/api/v1/sites/certificates", headers=READ_HEADERS)
    assert response.status_code == 200, response.text
    revoked = {c["participant"]: c["revoked_at"] is not None for c in response.json()["data"]}
    assert revoked["hospital-a"] is True
    assert revoked["hospital-b"] is True
