"""Verified audit chain checkpoints: written by full verifications, used by reports, and what each path catches."""

from __future__ import annotations

from typing import Any

import pytest
from admin_test_support import EventFactory
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError
from typer.testing import CliRunner

from admin_api.db import Database
from admin_api.models import AuditCheckpoint
from admin_api.services.checkpoints import newest_checkpoint, verify_from_checkpoint
from consortia.cli_audit import audit_app


def post_events(client: TestClient, headers: dict[str, str], events: list[dict[str, Any]]) -> None:
    response = client.post("/api/v1/events:batch", json=events, headers=headers)
    assert response.status_code == 200, response.text


def job_events(make_event: EventFactory, job_id: str, num_rounds: int = 2) -> list[dict[str, Any]]:
    events = [make_event("job.submitted", job_id=job_id), make_event("job.started", job_id=job_id)]
    for round_number in range(num_rounds):
        events.append(make_event("contribution.accepted", job_id=job_id, site="hospital-a", round=round_number))
        events.append(make_event("round.completed", job_id=job_id, round=round_number))
    return events


def checkpoints(database: Database) -> list[tuple[int, str, int | None]]:
    with database.session() as session:
        rows = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))
        return [(row.seq, row.hash, row.verified_from_seq) for row in rows]


def verify(client: TestClient, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/audit/verify", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def report_chain(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}/report", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["chain"]  # type: ignore[no-any-return]


def unprotect(database: Database) -> None:
    """Let the test change audit rows, as the chain tests do; the fixtures restore the protection."""
    with database.write_engine.begin() as connection:
        if database.dialect_name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_reject_update"))
            connection.execute(text("DROP TRIGGER audit_events_reject_delete"))


def tamper(database: Database, statement: str) -> None:
    unprotect(database)
    with database.write_engine.begin() as connection:
        connection.execute(text(statement))


@pytest.fixture
def recorded(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> dict[str, Any]:
    """Six events of job-1, a full verification (checkpoint at seq 6), then six events of job-2 (seq 7 to 12)."""
    post_events(client, event_headers, job_events(make_event, "job-1"))
    full = verify(client, read_headers)
    post_events(client, event_headers, job_events(make_event, "job-2"))
    return full


def test_full_verify_writes_checkpoint(recorded: dict[str, Any], database: Database) -> None:
    assert (recorded["ok"], recorded["num_events"], recorded["verified_from_seq"]) == (True, 6, None)
    assert checkpoints(database) == [(6, recorded["head_hash"], None)]


def test_full_verify_at_same_head_adds_nothing(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    first = verify(client, read_headers)
    again = verify(client, read_headers)
    assert first == again
    assert [seq for seq, _, _ in checkpoints(database)] == [6, 12]


def test_report_walks_from_checkpoint_and_records_head(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    chain = report_chain(client, read_headers, "job-2")
    assert (chain["ok"], chain["head_seq"], chain["verified_from_seq"]) == (True, 12, 6)
    assert chain["num_events"] == 7  # the checkpoint event 6 and the events 7 to 12
    assert checkpoints(database)[-1] == (12, chain["head_hash"], 6)

    # The next report starts at the new checkpoint.
    again = report_chain(client, read_headers, "job-1")
    assert (again["ok"], again["verified_from_seq"], again["num_events"]) == (True, 12, 1)
    assert len(checkpoints(database)) == 2


def test_fast_path_on_request(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    fast = verify(client, read_headers, from_checkpoint="true")
    assert (fast["ok"], fast["verified_from_seq"], fast["num_events"], fast["head_seq"]) == (True, 6, 7, 12)
    full = verify(client, read_headers)
    assert (full["ok"], full["verified_from_seq"], full["num_events"]) == (True, None, 12)


def test_report_without_checkpoint_walks_everything(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post_events(client, event_headers, job_events(make_event, "job-1"))
    chain = report_chain(client, read_headers, "job-1")
    assert (chain["ok"], chain["num_events"], chain["verified_from_seq"]) == (True, 6, None)


def test_tampering_before_checkpoint_caught_by_full_verify(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    report_chain(client, read_headers, "job-2")  # checkpoint at seq 12
    tamper(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")

    full = verify(client, read_headers)
    assert (full["ok"], full["first_bad_seq"]) == (False, 3)
    assert "altered" in full["reason"]
    # The fast path starts at seq 12 and never reads seq 3: only the full walk, the default, proves the whole chain.
    fast = verify(client, read_headers, from_checkpoint="true")
    assert (fast["ok"], fast["verified_from_seq"]) == (True, 12)
    # A broken chain writes no checkpoint.
    assert [seq for seq, _, _ in checkpoints(database)] == [6, 12]


def test_tampering_after_checkpoint_caught_by_report(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    tamper(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 9")

    chain = report_chain(client, read_headers, "job-1")
    assert (chain["ok"], chain["first_bad_seq"], chain["verified_from_seq"]) == (False, 9, 6)
    assert "altered" in chain["reason"]
    assert checkpoints(database) == [(6, recorded["head_hash"], None)]


@pytest.mark.parametrize(
    ("statement", "fragment"),
    [
        ("UPDATE audit_events SET actor = 'mallory' WHERE seq = 6", "altered"),
        ("UPDATE audit_events SET hash = '" + "e" * 64 + "' WHERE seq = 6", "checkpoint verified"),
    ],
)
def test_checkpoint_event_rechecked(
    client: TestClient,
    read_headers: dict[str, str],
    recorded: dict[str, Any],
    database: Database,
    statement: str,
    fragment: str,
) -> None:
    tamper(database, statement)
    chain = report_chain(client, read_headers, "job-2")
    assert (chain["ok"], chain["first_bad_seq"]) == (False, 6)
    assert fragment in chain["reason"]


def test_truncation_through_checkpoint_caught(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database: Database
) -> None:
    report_chain(client, read_headers, "job-2")  # checkpoint at seq 12
    tamper(database, "DELETE FROM audit_events WHERE seq >= 10")

    with database.session() as session:
        result = verify_from_checkpoint(session)
    assert (result.ok, result.first_bad_seq) == (False, 12)
    assert "removed from the end" in (result.reason or "")
    # A full walk alone sees a valid, shorter chain; pinned heads and checkpoints show the truncation.
    assert verify(client, read_headers)["ok"] is True


def test_checkpoints_are_append_only(recorded: dict[str, Any], database: Database) -> None:
    for statement in ("UPDATE audit_checkpoints SET seq = 12", "DELETE FROM audit_checkpoints"):
        with pytest.raises(DatabaseError, match="append-only"), database.write_engine.begin() as connection:
            connection.execute(text(statement))
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == 1
        checkpoint = newest_checkpoint(session)
        assert checkpoint is not None
        assert checkpoint.seq == 6


def test_cli_verify_records_and_uses_checkpoint(
    client: TestClient, event_headers: dict[str, str], make_event: EventFactory, database_url: str, database: Database
) -> None:
    post_events(client, event_headers, job_events(make_event, "job-1"))
    runner = CliRunner()

    skipped = runner.invoke(audit_app, ["verify", "--database", database_url, "--no-record-checkpoint"])
    assert skipped.exit_code == 0, skipped.output
    assert checkpoints(database) == []

    full = runner.invoke(audit_app, ["verify", "--database", database_url])
    assert full.exit_code == 0, full.output
    assert "audit chain valid: 6 events" in full.output
    assert [seq for seq, _, _ in checkpoints(database)] == [6]

    post_events(client, event_headers, job_events(make_event, "job-2"))
    fast = runner.invoke(audit_app, ["verify", "--database", database_url, "--from-checkpoint"])
    assert fast.exit_code == 0, fast.output
    assert "audit chain valid: 7 events, head seq 12" in fast.output
    assert "walked from the verified checkpoint at seq 6" in fast.output


def test_cli_full_verify_catches_tampering_before_checkpoint(
    client: TestClient, read_headers: dict[str, str], recorded: dict[str, Any], database_url: str, database: Database
) -> None:
    report_chain(client, read_headers, "job-2")  # checkpoint at seq 12
    tamper(database, "UPDATE audit_events SET details = '{\"n\": 1}' WHERE seq = 2")
    result = CliRunner().invoke(audit_app, ["verify", "--database", database_url])
    assert result.exit_code == 1
    assert "audit chain broken at seq 2" in result.output
