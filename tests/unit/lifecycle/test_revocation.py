"""Revocation list signing, revoking and rotating a site, and certificate expiry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from app_custom.flare.revocation_guard import (
    ALL_SITES,
    REVOCATION_FILE,
    RevocationListError,
    load_revocation_list,
    revoked_site_names,
)
from provisioning.onboarding import existing_fingerprints, kit_fingerprint
from provisioning.revocation import RevocationError, list_certificates, revoke_site, rotate_site
from provisioning.site_check import REVOCATION_FILE as SITE_REVOCATION_FILE
from provisioning.site_check import check_revocation, load_site_kit


def server_root(workspace):
    state = workspace.load()
    return workspace.kit_dir(state, state.server_name)


def test_revoke_writes_signed_list(workspace):
    disconnected = []
    entry = revoke_site(workspace, "hospital-b", reason="left the study", actor="tester", disconnect=disconnected.append)
    revocations = load_revocation_list(server_root(workspace))
    assert revocations is not None
    assert revocations.revoked == [entry]
    assert entry.scope == "site"
    assert entry.reason == "left the study"
    assert entry.sha256 == kit_fingerprint(workspace.kit_dir(workspace.load(), "hospital-b"))
    assert revoked_site_names(server_root(workspace)) == {"hospital-b"}
    assert disconnected == ["hospital-b"]
    assert "hospital-b" not in workspace.load().sites


def test_revoke_audited_in_spool(workspace):
    revoke_site(workspace, "hospital-b", reason="left the study", actor="tester")
    spool = workspace.runtime_dir / "server" / "event-spool"
    events = [json.loads(p.read_text()) for p in spool.glob("*.json")]
    left = [e for e in events if e["type"] == "site.left"]
    assert len(left) == 1
    assert left[0]["site"] == "hospital-b"
    assert left[0]["payload"]["reason"] == "left the study"
    assert left[0]["actor"] == "tester"


def test_edited_list_fails_closed(workspace):
    revoke_site(workspace, "hospital-b", reason="left", actor="tester")
    path = server_root(workspace) / REVOCATION_FILE
    data = json.loads(path.read_text())
    data["revoked"][0]["participant"] = "hospital-z"
    path.write_text(json.dumps(data))
    with pytest.raises(RevocationListError, match="signature does not verify"):
        load_revocation_list(server_root(workspace))
    assert revoked_site_names(server_root(workspace)) == {ALL_SITES}


def test_unreadable_list_fails_closed(workspace):
    (server_root(workspace) / REVOCATION_FILE).write_text("{not json")
    with pytest.raises(RevocationListError, match="is unreadable"):
        load_revocation_list(server_root(workspace))
    assert revoked_site_names(server_root(workspace)) == {ALL_SITES}


def test_no_list_revokes_nothing(workspace):
    assert load_revocation_list(server_root(workspace)) is None
    assert revoked_site_names(server_root(workspace)) == set()


@pytest.mark.parametrize(
    ("site", "reason", "message"),
    [
        ("hospital-z", "gone", "unknown site 'hospital-z'"),
        ("hospital-a", "  ", "the revocation reason is empty"),
    ],
)
def test_revoke_bad_input(workspace, site, reason, message):
    with pytest.raises(RevocationError, match=message):
        revoke_site(workspace, site, reason=reason, actor="tester")


def test_revoke_twice(workspace):
    revoke_site(workspace, "hospital-b", reason="left", actor="tester")
    with pytest.raises(RevocationError, match="site 'hospital-b' is already revoked"):
        revoke_site(workspace, "hospital-b", reason="left", actor="tester")


def test_site_export_read_by_site_check(workspace):
    revoke_site(workspace, "hospital-b", reason="key lost", actor="tester")
    state = workspace.load()
    kit = workspace.kit_dir(state, "hospital-b")
    (kit / SITE_REVOCATION_FILE).write_bytes((workspace.root / "revocations" / "revoked.json").read_bytes())
    reason = check_revocation(load_site_kit(kit))
    assert reason is not None
    assert "key lost" in reason


def test_rotate_issues_new_certificate(workspace):
    state = workspace.load()
    before = existing_fingerprints(workspace, state)
    rotated = rotate_site(workspace, "hospital-a", actor="tester")
    state = workspace.load()
    after = existing_fingerprints(workspace, state)
    assert rotated.old_sha256 == before["hospital-a"]
    assert rotated.new_sha256 == after["hospital-a"]
    assert rotated.new_sha256 != rotated.old_sha256
    assert {k: v for k, v in after.items() if k != "hospital-a"} == {
        k: v for k, v in before.items() if k != "hospital-a"
    }
    assert workspace.kit_dir(state, "hospital-a") == rotated.kit_dir


def test_rotate_records_old_certificate(workspace):
    rotated = rotate_site(workspace, "hospital-a", actor="tester")
    revocations = load_revocation_list(server_root(workspace))
    assert revocations is not None
    assert [(e.participant, e.scope, e.sha256) for e in revocations.revoked] == [
        ("hospital-a", "certificate", rotated.old_sha256)
    ]
    assert revoked_site_names(server_root(workspace)) == set()


def test_rotate_unknown_site(workspace):
    with pytest.raises(RevocationError, match="unknown site 'hospital-z'"):
        rotate_site(workspace, "hospital-z", actor="tester")


def test_list_certificates(workspace):
    statuses = list_certificates(workspace)
    names = {s.participant for s in statuses}
    assert {"localhost", "hospital-a", "hospital-b", "service@consortium.org"} <= names
    assert all(300 < s.days_left <= 360 for s in statuses)
    assert not any(s.expiring for s in statuses)
    roles = {s.participant: s.role for s in statuses}
    assert roles["localhost"] == "server"
    assert roles["hospital-a"] == "site"


def test_list_certificates_warns(workspace):
    later = datetime.now(UTC) + timedelta(days=340)
    statuses = list_certificates(workspace, warn_days=30, now=later)
    assert all(s.expiring for s in statuses)


def test_list_certificates_marks_revoked(workspace):
    revoke_site(workspace, "hospital-b", reason="left", actor="tester")
    statuses = {s.participant: s for s in list_certificates(workspace)}
    assert statuses["hospital-b"].revoked
    assert not statuses["hospital-a"].revoked


def test_rotate_audited_in_spool(workspace):
    rotated = rotate_site(workspace, "hospital-a", actor="tester")
    spool = workspace.runtime_dir / "server" / "event-spool"
    events = [json.loads(p.read_text()) for p in spool.glob("*.json")]
    (left,) = [e for e in events if e["type"] == "site.left"]
    assert left["site"] == "hospital-a"
    assert left["payload"]["scope"] == "certificate"
    assert left["payload"]["revoked"] is True
    assert left["payload"]["certificate_fingerprint"] == rotated.old_sha256
    assert left["payload"]["new_certificate_fingerprint"] == rotated.new_sha256
