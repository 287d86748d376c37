"""Participant certificates from kit.issued events: expiry listing, warnings, revocation and the metric."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN
from fastapi.testclient import TestClient
from test_metrics import scrape
from user_support import USERS, issue_tokens, write_workspace

from admin_api.app import create_app
from admin_api.settings import Settings

NOW = datetime.now(UTC)


def kit_event(participant: str, role: str, fingerprint: str, *, expires_in_days: float, issued_days_ago: float = 1,
              actor: str = "admin@consortium.org", **payload: Any) -> dict[str, Any]:  # fmt: skip
    """A kit.issued event as provisioning/kit_issuance.kit_issued_event builds it."""
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "kit.issued",
        "occurred_at": (NOW - timedelta(days=issued_days_ago)).isoformat(),
        "job_id": None,
        "site": participant if role == "site" else None,
        "round": None,
        "actor": actor,
        "payload": {
            "participant": participant,
            "role": role,
            "certificate_fingerprint": fingerprint,
            "expires_at": (NOW + timedelta(days=expires_in_days)).isoformat(),
            **payload,
        },
    }


def revoke_event(site: str, fingerprint: str, *, days_ago: float = 0) -> dict[str, Any]:
    """A revocation as provisioning/revocation.revoke_site reports it: site.left with revoked: true."""
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": "site.left",
        "occurred_at": (NOW - timedelta(days=days_ago)).isoformat(),
        "job_id": None,
        "site": site,
        "round": None,
        "actor": "it-operator",
        "payload": {"reason": "left the consortium", "revoked": True, "certificate_fingerprint": fingerprint},
    }


def post(client: TestClient, *events: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {EVENT_TOKEN}"}
    response = client.post("/api/v1/events:batch", json=list(events), headers=headers)
    assert response.status_code == 200, response.text


def certificates(client: TestClient, token: str = API_TOKEN) -> dict[str, Any]:
    response = client.get("/api/v1/sites/certificates", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return write_workspace(tmp_path / "workspace")


@pytest.fixture
def tokens(database_url: str, workspace: Path) -> dict[str, str]:
    return issue_tokens(database_url, workspace)


def make_client(database_url: str, workspace: Path, **settings: Any) -> TestClient:
    resolved = Settings(database_url=database_url, event_token=EVENT_TOKEN, api_token=API_TOKEN,  # type: ignore[arg-type]
                        workspace=workspace, **settings)  # fmt: skip
    return TestClient(create_app(resolved))


@pytest.fixture
def cert_client(database_url: str, workspace: Path, tokens: dict[str, str]) -> Iterator[TestClient]:
    with make_client(database_url, workspace) as client:
        yield client


def test_current_certificate_with_expiry_and_warning(cert_client: TestClient) -> None:
    post(
        cert_client,
        kit_event("hospital-a", "site", "AA:01", expires_in_days=20, issued_days_ago=300),
        kit_event("hospital-b", "site", "BB:01", expires_in_days=200),
        kit_event("server1", "server", "CC:01", expires_in_days=-2.5),
        kit_event(USERS["lead"], "lead", "DD:01", expires_in_days=45.5),
        # hospital-a's kit was rebuilt with a new certificate: the newer issuance is its current certificate.
        kit_event("hospital-a", "site", "AA:02", expires_in_days=365, issued_days_ago=0.5),
    )
    body = certificates(cert_client)
    listed = {c["participant"]: c for c in body["data"]}
    assert [c["participant"] for c in body["data"]] == ["server1", USERS["lead"], "hospital-b", "hospital-a"]
    assert (body["count"], body["warn_days"], body["num_warning"]) == (4, 30, 1)
    assert listed["hospital-a"]["fingerprint"] == "AA:02"
    assert (listed["hospital-a"]["days_to_expiry"], listed["hospital-a"]["warning"]) == (364, False)
    # Whole days, rounded down as 'consortia kit list' counts them: expired 2.5 days ago is -3.
    assert (listed["server1"]["kind"], listed["server1"]["days_to_expiry"], listed["server1"]["warning"]) == (
        "server", -3, True,
    )  # fmt: skip
    lead = listed[USERS["lead"]]
    assert (lead["kind"], lead["role"], lead["org"], lead["days_to_expiry"]) == ("user", "lead", "hospital_a", 45)
    assert lead["issued_by"] == "admin@consortium.org"
    assert listed["hospital-b"]["issued_at"].startswith((NOW - timedelta(days=1)).isoformat()[:19])


def test_warn_days_setting(database_url: str, workspace: Path, tokens: dict[str, str]) -> None:
    with make_client(database_url, workspace, cert_warn_days=60) as client:
        post(client, kit_event("hospital-b", "site", "BB:01", expires_in_days=45.5))
        body = certificates(client)
        assert (body["warn_days"], body["num_warning"], body["data"][0]["warning"]) == (60, 1, True)


def test_warn_days_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSORTIA_EVENT_TOKEN", EVENT_TOKEN)
    monkeypatch.setenv("CONSORTIA_CERT_WARN_DAYS", "14")
    assert Settings().cert_warn_days == 14  # type: ignore[call-arg]
    monkeypatch.delenv("CONSORTIA_CERT_WARN_DAYS")
    assert Settings().cert_warn_days == 30  # type: ignore[call-arg]


def test_revocation_marks_site_certificates(cert_client: TestClient) -> None:
    post(
        cert_client,
        kit_event("hospital-a", "site", "AA:01", expires_in_days=10),
        kit_event("hospital-b", "site", "BB:01", expires_in_days=10),
        revoke_event("hospital-a", "AA:01"),
    )
    listed = {c["participant"]: c for c in certificates(cert_client)["data"]}
    assert listed["hospital-a"]["revoked_at"] is not None
    assert listed["hospital-a"]["revocation_reason"] == "left the consortium"
    # A revoked certificate needs no renewal, so it gets no warning.
    assert (listed["hospital-a"]["warning"], listed["hospital-b"]["warning"]) == (False, True)
    events = cert_client.get(
        "/api/v1/audit/events", params={"action": "site.left"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ).json()["data"]
    assert events[0]["details"]["effects"]["certificates_revoked"] == ["AA:01"]


def test_revocation_before_issuance_event(cert_client: TestClient) -> None:
    """The spooled kit.issued may arrive after the revocation that was posted directly."""
    post(cert_client, revoke_event("hospital-a", "AA:01"))
    post(cert_client, kit_event("hospital-a", "site", "AA:01", expires_in_days=10, issued_days_ago=3))
    (certificate,) = certificates(cert_client)["data"]
    assert certificate["revoked_at"] is not None
    assert certificate["warning"] is False
    # A kit issued after the revocation (the site added again) is not revoked.
    post(cert_client, kit_event("hospital-a", "site", "AA:02", expires_in_days=10, issued_days_ago=-0.01))
    (certificate,) = certificates(cert_client)["data"]
    assert (certificate["fingerprint"], certificate["revoked_at"]) == ("AA:02", None)


def test_plain_site_left_revokes_nothing(cert_client: TestClient) -> None:
    post(cert_client, kit_event("hospital-a", "site", "AA:01", expires_in_days=10))
    post(cert_client, {**revoke_event("hospital-a", "AA:01"), "payload": {}})
    assert certificates(cert_client)["data"][0]["revoked_at"] is None


def test_replayed_issuance_idempotent(cert_client: TestClient) -> None:
    event = kit_event("hospital-a", "site", "AA:01", expires_in_days=10)
    post(cert_client, event)
    post(cert_client, event)
    post(cert_client, {**event, "event_id": str(uuid.uuid4())})
    assert certificates(cert_client)["count"] == 1


def test_org_admin_sees_own_org(cert_client: TestClient, tokens: dict[str, str]) -> None:
    post(
        cert_client,
        kit_event("hospital-a", "site", "AA:01", expires_in_days=10),
        kit_event("hospital-b", "site", "BB:01", expires_in_days=10),
        kit_event(USERS["lead"], "lead", "DD:01", expires_in_days=10),
        kit_event(USERS["member"], "member", "EE:01", expires_in_days=10),
        kit_event("server1", "server", "CC:01", expires_in_days=10),
    )
    org_admin = certificates(cert_client, tokens["org_admin"])
    assert sorted(c["participant"] for c in org_admin["data"]) == ["hospital-a", USERS["lead"]]
    assert len(certificates(cert_client, tokens["compliance_officer"])["data"]) == 5


def test_expiring_certificates_metric(cert_client: TestClient) -> None:
    post(
        cert_client,
        kit_event("hospital-a", "site", "AA:01", expires_in_days=5),
        kit_event("hospital-b", "site", "BB:01", expires_in_days=-1),
        kit_event("hospital-c", "site", "CC:01", expires_in_days=90),
        kit_event("hospital-d", "site", "DD:01", expires_in_days=5),
        revoke_event("hospital-d", "DD:01"),
    )
    samples = scrape(cert_client, {"Authorization": f"Bearer {API_TOKEN}"})
    assert samples[("consortia_certificates_expiring", ())] == 2


@pytest.mark.parametrize("expires_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_expiry_outside_utc_range_rejected(cert_client: TestClient, expires_at: str) -> None:
    event = kit_event("hospital-a", "site", "AA:01", expires_in_days=1)
    event["payload"]["expires_at"] = expires_at
    response = cert_client.post("/api/v1/events", json=event, headers={"Authorization": f"Bearer {EVENT_TOKEN}"})
    assert response.status_code == 422
    assert "outside the range" in response.json()["detail"]


def rotate_event(site: str, old: str, new: str) -> dict[str, Any]:
    """A key rotation as provisioning/revocation.rotate_site reports it: one certificate retired."""
    event = revoke_event(site, old)
    event["payload"] = {
        "reason": "key rotated",
        "revoked": True,
        "scope": "certificate",
        "certificate_fingerprint": old,
        "new_certificate_fingerprint": new,
    }
    return event


def test_rotation_revokes_only_old_certificate(cert_client: TestClient) -> None:
    post(cert_client, kit_event("hospital-a", "site", "AA:01", expires_in_days=10, issued_days_ago=3))
    post(cert_client, rotate_event("hospital-a", "AA:01", "AA:02"))
    # The new kit's issuance may carry an earlier time than the rotation event; it must stay valid anyway.
    post(cert_client, kit_event("hospital-a", "site", "AA:02", expires_in_days=365, issued_days_ago=1))
    (certificate,) = certificates(cert_client)["data"]
    assert (certificate["fingerprint"], certificate["revoked_at"]) == ("AA:02", None)
    events = cert_client.get(
        "/api/v1/audit/events", params={"action": "site.left"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ).json()["data"]
    assert events[0]["details"]["effects"]["certificates_revoked"] == ["AA:01"]
    # A rotation retires a certificate, not the site: no status change is recorded.
    assert "site_status" not in events[0]["details"]["effects"]


def test_rotation_before_old_issuance_event(cert_client: TestClient) -> None:
    post(cert_client, rotate_event("hospital-a", "AA:01", "AA:02"))
    post(cert_client, kit_event("hospital-a", "site", "AA:01", expires_in_days=10, issued_days_ago=3))
    (certificate,) = certificates(cert_client)["data"]
    assert certificate["fingerprint"] == "AA:01"
    assert certificate["revoked_at"] is not None
    assert certificate["revocation_reason"] == "key rotated"
