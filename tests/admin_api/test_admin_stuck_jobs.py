"""Detection of jobs FLARE keeps RUNNING after a server crash, with a fake FLARE system source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from admin_api.core.status import JobStatus, StatusSource
from admin_api.db import Database
from admin_api.models import AuditEvent
from admin_api.services.flare_jobs import FlareSystemSnapshot
from admin_api.services.jobs import apply_status, create_job, get_job
from admin_api.services.stuck_jobs import StuckJobDetector

T0 = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)


class FakeSystem:
    def __init__(self, server_started_at: datetime, running: set[str]) -> None:
        self.snapshot = FlareSystemSnapshot(server_started_at=server_started_at, running_job_ids=frozenset(running))

    def system_snapshot(self) -> FlareSystemSnapshot:
        return self.snapshot


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def add_running_job(database: Database, job_id: str, started_at: datetime) -> None:
    with database.write_session() as session:
        job, _ = create_job(session, job_id, status=JobStatus.SUBMITTED, at=started_at, source=StatusSource.RECONCILER)
        apply_status(session, job, JobStatus.RUNNING, at=started_at, source=StatusSource.RECONCILER)
        session.commit()


def check(database: Database, detector: StuckJobDetector) -> list[str]:
    with database.write_session() as session:
        return detector.check(session)


def status(database: Database, job_id: str) -> str:
    with database.session() as session:
        job = get_job(session, job_id)
        assert job is not None
        return job.status


def test_job_older_than_server_abandoned(database: Database) -> None:
    add_running_job(database, "crashed", T0)
    detector = StuckJobDetector(
        FakeSystem(T0 + timedelta(minutes=5), running=set()), now=Clock(T0 + timedelta(minutes=6))
    )

    assert check(database, detector) == ["crashed"]
    assert status(database, "crashed") == "FINISHED:ABANDONED"
    with database.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.abandoned")).one()
    assert event.target == "job:crashed"
    assert "before the FLARE server's current start" in event.details["reason"]
    assert check(database, detector) == []


def test_running_process_not_abandoned(database: Database) -> None:
    add_running_job(database, "alive", T0)
    detector = StuckJobDetector(
        FakeSystem(T0 - timedelta(hours=1), running={"alive"}), now=Clock(T0 + timedelta(hours=2))
    )
    assert check(database, detector) == []
    assert status(database, "alive") == "RUNNING"


def test_missing_process_after_grace(database: Database) -> None:
    add_running_job(database, "orphan", T0)
    clock = Clock(T0 + timedelta(seconds=10))
    detector = StuckJobDetector(
        FakeSystem(T0 - timedelta(hours=1), running=set()), grace=timedelta(seconds=60), now=clock
    )

    assert check(database, detector) == []
    clock.now += timedelta(seconds=30)
    assert check(database, detector) == []
    clock.now += timedelta(seconds=31)
    assert check(database, detector) == ["orphan"]
    assert status(database, "orphan") == "FINISHED:ABANDONED"


def test_grace_restarts_when_process_returns(database: Database) -> None:
    add_running_job(database, "flaky", T0)
    clock = Clock(T0 + timedelta(seconds=10))
    system = FakeSystem(T0 - timedelta(hours=1), running=set())
    detector = StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)

    check(database, detector)
    system.snapshot = FlareSystemSnapshot(
        server_started_at=system.snapshot.server_started_at, running_job_ids=frozenset({"flaky"})
    )
    clock.now += timedelta(seconds=50)
    check(database, detector)
    system.snapshot = FlareSystemSnapshot(
        server_started_at=system.snapshot.server_started_at, running_job_ids=frozenset()
    )
    clock.now += timedelta(seconds=50)

    assert check(database, detector) == []
    assert status(database, "flaky") == "RUNNING"


def test_reconciler_keeps_abandoned(database: Database) -> None:
    """FLARE still reports RUNNING afterwards, which must not reopen the job."""
    add_running_job(database, "crashed", T0)
    check(
        database,
        StuckJobDetector(FakeSystem(T0 + timedelta(minutes=5), running=set()), now=Clock(T0 + timedelta(minutes=6))),
    )
    with database.write_session() as session:
        job = get_job(session, "crashed")
        assert job is not None
        assert apply_status(session, job, JobStatus.RUNNING, at=T0, source=StatusSource.RECONCILER) is None


def missing_since(database: Database, job_id: str) -> datetime | None:
    with database.session() as session:
        job = get_job(session, job_id)
        assert job is not None
        return job.missing_since


def test_grace_survives_restart(database: Database) -> None:
    """A new detector on the same database (the service restarted) keeps the first detector's grace timer."""
    add_running_job(database, "orphan", T0)
    system = FakeSystem(T0 - timedelta(hours=1), running=set())
    clock = Clock(T0 + timedelta(seconds=10))

    assert check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)) == []
    assert missing_since(database, "orphan") == T0 + timedelta(seconds=10)

    clock.now += timedelta(seconds=50)
    assert check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)) == []
    clock.now += timedelta(seconds=11)
    assert check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)) == ["orphan"]

    assert status(database, "orphan") == "FINISHED:ABANDONED"
    assert missing_since(database, "orphan") is None
    with database.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "job.abandoned")).one()
    assert "since 2026-12-04T19:00:10.000000Z (60 s grace period)" in event.details["reason"]


def test_missing_since_cleared_when_seen_again(database: Database) -> None:
    add_running_job(database, "flaky", T0)
    add_running_job(database, "finished", T0)
    system = FakeSystem(T0 - timedelta(hours=1), running=set())
    clock = Clock(T0 + timedelta(seconds=10))
    check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock))
    assert missing_since(database, "flaky") == missing_since(database, "finished") == clock.now

    with database.write_session() as session:
        job = get_job(session, "finished")
        assert job is not None
        apply_status(session, job, JobStatus.FINISHED_COMPLETED, at=clock.now, source=StatusSource.RECONCILER)
        session.commit()
    system.snapshot = FlareSystemSnapshot(
        server_started_at=T0 - timedelta(hours=1), running_job_ids=frozenset({"flaky"})
    )
    clock.now += timedelta(seconds=30)
    assert check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)) == []
    assert missing_since(database, "flaky") is None
    assert missing_since(database, "finished") is None

    # Missing again after a restart: the grace period starts again from now, not from the first absence.
    system.snapshot = FlareSystemSnapshot(server_started_at=T0 - timedelta(hours=1), running_job_ids=frozenset())
    clock.now += timedelta(seconds=40)
    assert check(database, StuckJobDetector(system, grace=timedelta(seconds=60), now=clock)) == []
    assert missing_since(database, "flaky") == clock.now
