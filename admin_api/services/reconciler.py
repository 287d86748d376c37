"""Reconciler: records jobs from FLARE's own job list, so jobs submitted outside our API are recorded too.

Jobs submitted from the stock admin console or ``nvflare job submit`` send no ``job.submitted`` event with a job id,
and a server crash can lose events. Each pass reads FLARE's detailed job list, creates unknown jobs with the
submitter from FLARE's job meta, and applies status changes as transitions with source ``reconciler``, each with an
audit event. Statuses never regress; FLARE may correct one final status to another (see
``admin_api.core.status.should_apply_status``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from admin_api.core.chain import format_timestamp
from admin_api.core.status import JobStatus, StatusSource, is_terminal, should_apply_status
from admin_api.db import Database
from admin_api.errors import AuditChainError, FlareSourceError
from admin_api.models import Job
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, job_target, lock_chain
from admin_api.services.flare_jobs import FlareApiJobSource, FlareJobMeta, FlareJobSource
from admin_api.services.jobs import StatusChange, apply_status, create_job, get_job, merge_job_sites, utc_now

__all__ = [
    "RECONCILER_ACTOR",
    "FlareApiJobSource",
    "FlareJobMeta",
    "FlareJobSource",
    "ReconcileResult",
    "ReconcilerLoop",
    "reconcile_once",
]

logger = logging.getLogger(__name__)

RECONCILER_ACTOR = "consortia-reconciler"
"""Audit actor of changes the reconciler makes."""

_MAX_BACKOFF_S = 60.0
_MAX_BACKOFF_EXPONENT = 16
# Job ids per SELECT ... IN (...), well below SQLite's limit on bound parameters.
_LOOKUP_BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """Counts from one reconciler pass."""

    num_seen: int = 0
    num_created: int = 0
    num_updated: int = 0
    num_invalid: int = 0
    num_failed: int = 0


def _status_time(meta: FlareJobMeta, now: datetime) -> datetime:
    if meta.status == JobStatus.RUNNING:
        return meta.started_at() or now
    if is_terminal(meta.status):
        return meta.finished_at() or now
    return meta.submitted_at() or now


def _metadata_candidates(meta: FlareJobMeta) -> dict[str, Any]:
    """Return the job fields FLARE's meta can supply, by job column name."""
    return {
        "name": meta.name,
        "submitter": meta.submitter_name,
        "submitter_org": meta.submitter_org,
        "submitter_role": meta.submitter_role,
        "submitted_at": meta.submitted_at(),
        "started_at": meta.started_at(),
    }


def _needs_write(job: Job | None, meta: FlareJobMeta) -> bool:
    """Return whether reconciling ``meta`` would change the recorded job."""
    if job is None:
        return True
    if should_apply_status(JobStatus(job.status), meta.status, StatusSource.RECONCILER):
        return True
    if not set(meta.sites()) <= set(job.sites or []):
        return True
    return any(value is not None and getattr(job, field) is None for field, value in _metadata_candidates(meta).items())


def _fill_metadata(job: Job, meta: FlareJobMeta) -> dict[str, Any]:
    """Fill fields the job lacks from FLARE's meta; never overwrite what an event recorded."""
    filled: dict[str, Any] = {}
    for field, value in _metadata_candidates(meta).items():
        if value is not None and getattr(job, field) is None:
            setattr(job, field, value)
            filled[field] = format_timestamp(value) if isinstance(value, datetime) else value
    sites_added = merge_job_sites(job, meta.sites())
    if sites_added:
        filled["sites_added"] = sites_added
    if filled:
        job.updated_at = utc_now()
    return filled


def _reconcile_job(session: Session, meta: FlareJobMeta) -> tuple[bool, bool]:
    """Apply one FLARE job meta in the caller's transaction.

    Returns:
        Whether the job was created, and whether an existing job changed.
    """
    lock_chain(session)
    now = utc_now()
    at = _status_time(meta, now)
    job = get_job(session, meta.job_id)
    created = job is None
    change: StatusChange | None
    if job is None:
        job, change = create_job(session, meta.job_id, status=meta.status, at=at, source=StatusSource.RECONCILER)
        action = "job.discovered"
    else:
        change = apply_status(session, job, meta.status, at=at, source=StatusSource.RECONCILER)
        action = "job.status_changed"
    filled = _fill_metadata(job, meta)
    if change is None and not filled:
        return False, False

    append_audit_event(
        session,
        occurred_at=change.at if change is not None else now,
        actor=RECONCILER_ACTOR,
        role=SYSTEM_ROLE,
        action=action if change is not None else "job.metadata_filled",
        target=job_target(meta.job_id),
        details={
            "source": "flare_job_meta",
            "status_change": None if change is None else change.as_details(),
            "filled": filled,
        },
    )
    return created, not created


def _validate_metas(raw_metas: list[Any]) -> list[FlareJobMeta]:
    metas = []
    for raw in raw_metas:
        try:
            metas.append(FlareJobMeta.model_validate(raw))
        except ValidationError as exc:
            job_id = raw.get("job_id") if isinstance(raw, dict) else None
            logger.warning("skipped FLARE job meta of job %s: %s", job_id, exc.errors(include_url=False))
    return metas


def _select_pending(session: Session, metas: list[FlareJobMeta]) -> list[FlareJobMeta]:
    """Return the metas that would change a recorded job, reading the jobs in batches in one short transaction.

    Most passes change nothing, so this keeps them from taking the write lock once per job.
    """
    pending: list[FlareJobMeta] = []
    try:
        for start in range(0, len(metas), _LOOKUP_BATCH_SIZE):
            batch = metas[start : start + _LOOKUP_BATCH_SIZE]
            statement = select(Job).where(Job.job_id.in_([meta.job_id for meta in batch]))
            known = {job.job_id: job for job in session.scalars(statement)}
            pending.extend(meta for meta in batch if _needs_write(known.get(meta.job_id), meta))
    finally:
        session.rollback()
    return pending


def reconcile_once(session: Session, source: FlareJobSource) -> ReconcileResult:
    """Run one reconciler pass: read FLARE's job list and record what changed, one transaction per job.

    Args:
        session: A write session (``Database.write_session()``); committed after each job.
        source: Where to read FLARE's job list.

    Returns:
        Counts of jobs seen, created, updated, skipped as invalid, and failed to store.

    Raises:
        FlareSourceError: The job list could not be read; nothing was changed.
    """
    raw_metas = source.list_jobs()
    metas = _validate_metas(raw_metas)
    pending = _select_pending(session, metas)
    num_created = num_updated = num_failed = 0
    for meta in pending:
        try:
            created, updated = _reconcile_job(session, meta)
            session.commit()
        except (SQLAlchemyError, AuditChainError):
            session.rollback()
            num_failed += 1
            logger.exception("storing FLARE job %s failed", meta.job_id, extra={"job_id": meta.job_id})
            continue
        num_created += created
        num_updated += updated
        if created or updated:
            logger.info(
                "reconciled job %s: status %s%s",
                meta.job_id,
                meta.status.value,
                " (new job)" if created else "",
                extra={"job_id": meta.job_id},
            )
    return ReconcileResult(
        num_seen=len(raw_metas),
        num_created=num_created,
        num_updated=num_updated,
        num_invalid=len(raw_metas) - len(metas),
        num_failed=num_failed,
    )


def _backoff_delay(interval_s: float, num_failures: int) -> float:
    """Return the wait after ``num_failures`` failed passes in a row: doubling, capped at 60 s or the interval."""
    growth = 2.0 ** min(num_failures, _MAX_BACKOFF_EXPONENT)
    return min(interval_s * growth, max(_MAX_BACKOFF_S, interval_s))


class ReconcilerLoop:
    """Background thread that runs ``reconcile_once`` every ``interval_s`` seconds until stopped.

    A failed pass is logged and retried with exponential backoff up to 60 s; the loop never ends on an error.

    Args:
        database: Database to write to.
        source: FLARE job source; closed on stop when it has a ``close()`` method.
        interval_s: Seconds between passes.
        on_pass: Called with the result of each successful pass (used by tests).
        steps: Run after each successful pass, each with its own write session, in order (console audit
            ingestion, stuck-job detection). A failing step is logged and does not fail the pass.
    """

    def __init__(
        self,
        database: Database,
        source: FlareJobSource,
        *,
        interval_s: float,
        on_pass: Callable[[ReconcileResult], None] | None = None,
        steps: Sequence[tuple[str, Callable[[Session], object]]] = (),
    ) -> None:
        self.database = database
        self.source = source
        self.interval_s = interval_s
        self.on_pass = on_pass
        self.steps = tuple(steps)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consortia-reconciler", daemon=True)

    def start(self) -> None:
        """Start the background thread."""
        logger.info("reconciler started, polling FLARE every %.1f s", self.interval_s)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the thread to stop, wait up to ``timeout_s`` for it, and close the source."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("reconciler thread still running %.0f s after stop was requested", timeout_s)
        close = getattr(self.source, "close", None)
        if callable(close):
            close()
        logger.info("reconciler stopped")

    def _run_pass(self) -> ReconcileResult:
        with self.database.write_session() as session:
            result = reconcile_once(session, self.source)
        for name, step in self.steps:
            try:
                with self.database.write_session() as session:
                    step(session)
            except (FlareSourceError, SQLAlchemyError, AuditChainError, OSError) as exc:
                logger.error("reconciler step %s failed, retrying next pass: %s", name, exc)
            except Exception:
                # A bug in one step must not stop the job records from being kept up to date.
                logger.exception("reconciler step %s failed unexpectedly, retrying next pass", name)
        return result

    def _run(self) -> None:
        delay = self.interval_s
        num_failures = 0
        while not self._stop.is_set():
            try:
                result = self._run_pass()
            except (FlareSourceError, SQLAlchemyError) as exc:
                num_failures += 1
                delay = _backoff_delay(self.interval_s, num_failures)
                logger.error("reconciler pass %d failed, retrying in %.1f s: %s", num_failures, delay, exc)
            except Exception:
                # Any other error is a bug, but the loop must keep the records up to date; log it with a traceback.
                num_failures += 1
                delay = _backoff_delay(self.interval_s, num_failures)
                logger.exception("reconciler pass failed unexpectedly, retrying in %.1f s", delay)
            else:
                if num_failures:
                    logger.info("reconciler recovered after %d failed passes", num_failures)
                num_failures = 0
                delay = self.interval_s
                if self.on_pass is not None:
                    self.on_pass(result)
            self._stop.wait(delay)
