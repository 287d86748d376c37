"""Ingestion of the FLARE server's audit.log into console.command audit events."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from admin_api.core.status import JobStatus, StatusSource
from admin_api.db import Database
from admin_api.models import AuditEvent
from admin_api.services.audit import verify_chain
from admin_api.services.console_audit import ConsoleAuditIngester, ConsoleIngestResult, parse_line
from admin_api.services.jobs import create_job

JOB_ID = "73029aa3-4c5e-4f6a-8b9c-0d1e2f3a4b5c"
NOW = datetime(2026, 12, 4, 19, 20, tzinfo=UTC)


def line(user: str, command: str, at: datetime = NOW - timedelta(minutes=3), event_id: str = "e1") -> str:
    local = at.astimezone().replace(tzinfo=None)
    return f"[E:{event_id}][T:{local.isoformat(' ')}][U:{user}][A:{command}]\n"


def ingest(database: Database, path: Path, now: datetime = NOW) -> ConsoleIngestResult:
    ingester = ConsoleAuditIngester(path, service_user="service@consortium.org", now=lambda: now)
    with database.write_session() as session:
        return ingester.ingest(session)


def console_events(database: Database) -> list[tuple[str, str, dict[str, Any]]]:
    with database.session() as session:
        statement = select(AuditEvent).where(AuditEvent.action == "console.command").order_by(AuditEvent.seq)
        return [(event.actor, event.target, event.details) for event in session.scalars(statement)]


def test_parse_line() -> None:
    parsed = parse_line(f"[E:abc][T:2026-12-04 19:17:21.116597][U:it@hospital-a.org][A:abort_job {JOB_ID}]\n")
    assert parsed is not None
    assert parsed.user == "it@hospital-a.org"
    assert parsed.command == "abort_job"
    assert parsed.job_id() == JOB_ID
    assert parse_line("Traceback (most recent call last):") is None
    assert parse_line("[E:x][R:ref][T:2026-12-04 19:17:21][U:u@a.org][A:list_jobs]").command == "list_jobs"  # type: ignore[union-attr]


def test_incremental_ingest(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(line("it@hospital-a.org", f"abort_job {JOB_ID}") + line("service@consortium.org", "list_jobs"))

    first = ingest(database, path)
    with path.open("a") as handle:
        handle.write(line("lead@hospital-a.org", "list_jobs", event_id="e2") + "[E:partial][T:2026")
    second = ingest(database, path)
    third = ingest(database, path)

    assert (first.num_ingested, first.num_skipped) == (1, 1)
    assert second.num_ingested == 1
    assert third.num_ingested == 0
    events = console_events(database)
    assert [(actor, target) for actor, target, _ in events] == [
        ("it@hospital-a.org", f"job:{JOB_ID}"),
        ("lead@hospital-a.org", "flare:server"),
    ]
    assert events[0][2]["command"] == "abort_job"
    with database.session() as session:
        assert verify_chain(session).ok


def test_truncated_log_reread(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(line("a@a.org", "list_jobs") + line("a@a.org", "check_status server", event_id="e2"))
    ingest(database, path)
    path.write_text(line("b@b.org", "list_jobs", event_id="e3"))

    result = ingest(database, path)

    assert result.restarted is not None
    assert "truncated" in result.restarted
    assert [actor for actor, _, _ in console_events(database)] == ["a@a.org", "a@a.org", "b@b.org"]


def test_rotated_log_reread(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(line("a@a.org", "list_jobs"))
    ingest(database, path)
    os.rename(path, tmp_path / "audit.log.1")
    path.write_text(line("b@b.org", "list_jobs", event_id="e2") + line("c@c.org", "list_jobs", event_id="e3"))

    result = ingest(database, path)

    assert result.restarted is not None
    assert [actor for actor, _, _ in console_events(database)] == ["a@a.org", "b@b.org", "c@c.org"]


def add_job(database: Database, job_id: str, submitter: str, submitted_at: datetime) -> None:
    with database.write_session() as session:
        job, _ = create_job(
            session, job_id, status=JobStatus.SUBMITTED, at=submitted_at, source=StatusSource.RECONCILER
        )
        job.submitter = submitter
        job.submitted_at = submitted_at
        session.commit()


def test_submit_matched_to_job(database: Database, tmp_path: Path) -> None:
    submitted = NOW - timedelta(minutes=3)
    path = tmp_path / "audit.log"
    path.write_text(line("lead@hospital-a.org", "submit_job /tmp/jobs/fedavg", at=submitted))

    waiting = ingest(database, path, now=submitted + timedelta(seconds=1))
    add_job(database, "other-user-job", "admin@consortium.org", submitted + timedelta(seconds=1))
    add_job(database, JOB_ID, "lead@hospital-a.org", submitted + timedelta(seconds=1))
    matched = ingest(database, path, now=submitted + timedelta(seconds=6))

    assert waiting.num_ingested == 0
    assert matched.num_ingested == 1
    _, target, details = console_events(database)[0]
    assert target == f"job:{JOB_ID}"
    assert details["job_correlation"] == "submitter_and_time"


def test_submit_unmatched_after_window(database: Database, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(line("lead@hospital-a.org", "submit_job /tmp/jobs/fedavg"))

    result = ingest(database, path)

    assert result.num_ingested == 1
    assert console_events(database)[0][2]["job_correlation"] == "none_within_window"


def test_missing_log_is_noop(database: Database, tmp_path: Path) -> None:
    assert ingest(database, tmp_path / "absent.log") == ConsoleIngestResult()


@pytest.mark.parametrize("text", ["garbage line\n", "[E:x][T:not a time][U:u][A:list_jobs]\n"])
def test_invalid_line_skipped(database: Database, tmp_path: Path, text: str) -> None:
    path = tmp_path / "audit.log"
    path.write_text(text + line("a@a.org", "list_jobs"))
    result = ingest(database, path)
    assert (result.num_invalid, result.num_ingested) == (1, 1)
