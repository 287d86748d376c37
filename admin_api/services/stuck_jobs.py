"""Stuck jobs: record as FINISHED:ABANDONED a job FLARE shows RUNNING although no job process runs it.

After ``kill -9`` of the FLARE 2.9 server, the job that was running stays RUNNING in FLARE's job store forever:
the restarted server never restores it, cannot abort it and refuses to delete it. A job is abandoned when our
record says RUNNING, the server's ``get_system_info()`` lists no job process for it, and either

- the job started before the server's current start (a job process never outlives a server restart), or
- it has been missing from the server's job list for longer than the grace period (a job process that just
  started may not be listed yet).

Only our database changes: the job gets a FINISHED:ABANDONED transition and a ``job.abandoned`` audit event that
names the reason. FLARE's job store is left as it is; an operator can fix it there with the server stopped.

When a RUNNING job was first found missing is stored in ``jobs.missing_since``, so a restart of the admin service
keeps the grace period running instead of starting it again. The column is cleared when the job is seen with a job
process again, when it stops being RUNNING, and when it is recorded as abandoned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from admin_api.core.chain import format_timestamp
from admin_api.core.status import JobStatus, StatusSource
from admin_api.models import Job
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, job_target, lock_chain
from admin_api.services.flare_jobs import FlareSystemSnapshot
from admin_api.services.jobs import apply_status, utc_now

__all__ = ["DEFAULT_GRACE", "STUCK_JOB_ACTOR", "FlareSystemSource", "StuckJobDetector"]

logger = logging.getLogger(__name__)

STUCK_JOB_ACTOR = "consortia-stuck-job-detector"
DEFAULT_GRACE = timedelta(seconds=60)


class FlareSystemSource(Protocol):
    """Anything that reports the FLARE server's start time and running job processes."""

    def system_snapshot(self) -> FlareSystemSnapshot:
        """Return the server's current state.

        Raises:
            FlareSourceError: The server could not be asked.
        """
        ...


@dataclass
class StuckJobDetector:
    """Finds RUNNING jobs without a job process and records them as abandoned.

    The time each job was first seen missing is stored on the job (``jobs.missing_since``), so a new detector, for
    example after a restart of the admin service, continues the grace period where the previous one left it.

    Args:
        source: Where to read the server's state.
        grace: How long a RUNNING job may be missing from the server's job list.
        now: Clock, replaceable in tests.
    """

    source: FlareSystemSource
    grace: timedelta = DEFAULT_GRACE
    now: Callable[[], datetime] = utc_now

    def check(self, session: Session) -> list[str]:
        """Run one check and commit; return the ids of the jobs recorded as abandoned.

        Args:
            session: A write session (``Database.write_session()``).

        Raises:
            FlareSourceError: The server's state could not be read; nothing changed.
        """
        snapshot = self.source.system_snapshot()
        now = self.now()
        running = list(session.scalars(select(Job).where(Job.status == JobStatus.RUNNING.value)))
        candidates = {job.job_id: job for job in running if job.job_id not in snapshot.running_job_ids}
        self._store_missing_since(session, candidates, now)
        session.commit()  # keep the loaded jobs; each mark below takes the write lock itself

        abandoned = []
        for job_id, job in candidates.items():
            assert job.missing_since is not None  # set by _store_missing_since
            reason = self._reason(job, snapshot, job.missing_since, now)
            if reason is not None and self._mark(session, job_id, reason, snapshot, now):
                abandoned.append(job_id)
        return abandoned

    @staticmethod
    def _store_missing_since(session: Session, candidates: dict[str, Job], now: datetime) -> None:
        """Start the grace timer of newly missing jobs and clear it on every other job."""
        for job in candidates.values():
            if job.missing_since is None:
                job.missing_since = now
        session.execute(
            update(Job)
            .where(Job.missing_since.is_not(None), Job.job_id.not_in(sorted(candidates)))
            .values(missing_since=None)
            .execution_options(synchronize_session=False)
        )

    def _reason(self, job: Job, snapshot: FlareSystemSnapshot, missing_since: datetime, now: datetime) -> str | None:
        server_start = snapshot.server_started_at
        if server_start is not None and job.started_at is not None and job.started_at < server_start:
            return (
                f"the job started at {format_timestamp(job.started_at)}, before the FLARE server's current start at "
                f"{format_timestamp(server_start)}, and no job process runs it; FLARE does not restore running jobs "
                "after a server restart"
            )
        if now - missing_since >= self.grace:
            return (
                f"FLARE lists the job as RUNNING but the server has run no job process for it since "
                f"{format_timestamp(missing_since)} ({self.grace.total_seconds():.0f} s grace period)"
            )
        return None

    @staticmethod
    def _mark(session: Session, job_id: str, reason: str, snapshot: FlareSystemSnapshot, now: datetime) -> bool:
        lock_chain(session)
        job = session.scalar(select(Job).where(Job.job_id == job_id))
        if job is None:
            session.rollback()
            return False
        change = apply_status(session, job, JobStatus.FINISHED_ABANDONED, at=now, source=StatusSource.RECONCILER)
        if change is None:
            session.rollback()
            return False
        job.missing_since = None
        append_audit_event(
            session,
            occurred_at=now,
            actor=STUCK_JOB_ACTOR,
            role=SYSTEM_ROLE,
            action="job.abandoned",
            target=job_target(job_id),
            details={
                "reason": reason,
                "flare_status": JobStatus.RUNNING.value,
                "server_started_at": (
                    format_timestamp(snapshot.server_started_at) if snapshot.server_started_at else None
                ),
                "status_change": change.as_details(),
                "flare_job_store": "unchanged; FLARE still lists the job as RUNNING",
            },
        )
        session.commit()
        logger.warning("job %s recorded as FINISHED:ABANDONED: %s", job_id, reason, extra={"job_id": job_id})
        return True
