"""Reconciler: records jobs from FLARE's own job list, so jobs submitted outside our API are recorded too.

Jobs submitted from the stock admin console or ``nvflare job submit`` send no ``job.submitted`` event with a job id,
and a server crash can lose events. Each pass reads FLARE's detailed job list, creates unknown jobs with the
submitter from FLARE's job meta, and applies status changes as transitions with source ``reconciler``, each with an
audit event. Statuses never regress; FLARE may correct one final status to another (see
``admin_api.core.status.should_apply_status``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from admin_api.core.chain import format_timestamp
from admin_api.core.status import JobStatus, StatusSource, is_terminal
from admin_api.db import Database
from admin_api.errors import AuditChainError, FlareSourceError
from admin_api.models import Job
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, job_target, lock_chain
from admin_api.services.jobs import apply_status, create_job, get_job, merge_job_sites, utc_now

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
_DURATION = re.compile(r"^(?:(?P<days>\d+) days?, )?(?P<hours>\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2}(?:\.\d+)?)$")


class FlareJobSource(Protocol):
    """Anything that returns FLARE's detailed job list (one job meta dict per job)."""

    def list_jobs(self) -> list[dict[str, Any]]:
        """Return the meta of every job in FLARE's job store.

        Raises:
            FlareSourceError: The list could not be read.
        """
        ...


class FlareApiJobSource:
    """FLARE job source that uses the FLARE API (``nvflare.fuel.flare_api``) with an admin startup kit.

    The session is opened on first use and reopened after any failure, so a restarted server is picked up again.

    Args:
        admin_kit_dir: Admin startup kit folder, the one that contains ``startup/``.
        username: The admin user the kit was provisioned for.
        timeout_s: Seconds to wait for a connection.
    """

    def __init__(self, admin_kit_dir: str, username: str, *, timeout_s: float = 15.0) -> None:
        self.admin_kit_dir = admin_kit_dir
        self.username = username
        self.timeout_s = timeout_s
        self._session: Any = None

    def _connect(self) -> Any:
        # Imported here so the admin service starts, and its tests run, without loading FLARE unless configured.
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        return new_secure_session(self.username, self.admin_kit_dir, timeout=self.timeout_s)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Return FLARE's detailed job list.

        Raises:
            FlareSourceError: Connecting or listing failed; the next call reconnects.
        """
        try:
            if self._session is None:
                self._session = self._connect()
                logger.info("connected to FLARE as %s using kit %s", self.username, self.admin_kit_dir)
            jobs = self._session.list_jobs(detailed=True)
        except Exception as exc:  # FLARE raises many unrelated types (NoConnection, ConfigError, AssertionError, ...)
            self.close()
            raise FlareSourceError(
                f"listing FLARE jobs as {self.username} with kit {self.admin_kit_dir} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return list(jobs or [])

    def close(self) -> None:
        """Close the FLARE session, if one is open."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.close()
        except Exception as exc:  # closing a broken session may fail in any way; it is discarded either way
            logger.warning("closing the FLARE session failed: %s: %s", type(exc).__name__, exc)


def _parse_time(value: Any) -> datetime | None:
    """Parse a FLARE timestamp; FLARE writes local time with an offset, and naive values are taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        # NOTE: FLARE 2.9 writes offsets; a naive value would come from an older server, and its zone is a guess.
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_duration(value: Any) -> timedelta | None:
    """Parse ``str(timedelta)`` as FLARE stores ``duration`` (for example ``0:00:21.868592``)."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    return timedelta(
        days=int(match["days"] or 0),
        hours=int(match["hours"]),
        minutes=int(match["minutes"]),
        seconds=float(match["seconds"]),
    )


class FlareJobMeta(BaseModel):
    """The fields of FLARE's job meta that the reconciler uses; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    name: Annotated[str, Field(max_length=255)] | None = None
    status: JobStatus
    submitter_name: Annotated[str, Field(max_length=255)] | None = None
    submitter_org: Annotated[str, Field(max_length=128)] | None = None
    submitter_role: Annotated[str, Field(max_length=64)] | None = None
    submit_time_iso: str | None = None
    start_time: str | None = None
    duration: str | None = None
    deploy_map: dict[str, list[Any]] | None = None

    @field_validator("job_id")
    @classmethod
    def _check_job_id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", value):
            raise ValueError(f"job_id {value!r} is not a FLARE job id")
        return value

    def sites(self) -> list[str]:
        """Return the sites in ``deploy_map``, without ``server`` and the ``@ALL`` wildcard."""
        names: set[str] = set()
        for targets in (self.deploy_map or {}).values():
            for target in targets:
                # deploy_map entries are site names; resource-spec style entries are dicts with a "name".
                name = target.get("name") if isinstance(target, dict) else target
                if isinstance(name, str) and name not in ("server", "@ALL"):
                    names.add(name)
        return sorted(names)

    def submitted_at(self) -> datetime | None:
        """Return the submission time in UTC, when FLARE recorded one."""
        return _parse_time(self.submit_time_iso)

    def started_at(self) -> datetime | None:
        """Return the start time in UTC, when the job has started."""
        return _parse_time(self.start_time)

    def finished_at(self) -> datetime | None:
        """Return start time plus duration for a finished job, when both are known."""
        started = self.started_at()
        duration = _parse_duration(self.duration)
        if started is None or duration is None or not is_terminal(self.status):
            return None
        return started + duration


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


def _fill_metadata(job: Job, meta: FlareJobMeta) -> dict[str, Any]:
    """Fill fields the job lacks from FLARE's meta; never overwrite what an event recorded."""
    filled: dict[str, Any] = {}
    candidates = {
        "name": meta.name,
        "submitter": meta.submitter_name,
        "submitter_org": meta.submitter_org,
        "submitter_role": meta.submitter_role,
        "submitted_at": meta.submitted_at(),
        "started_at": meta.started_at(),
    }
    for field, value in candidates.items():
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
    metas = source.list_jobs()
    num_created = num_updated = num_invalid = num_failed = 0
    for raw in metas:
        try:
            meta = FlareJobMeta.model_validate(raw)
        except ValidationError as exc:
            num_invalid += 1
            job_id = raw.get("job_id") if isinstance(raw, dict) else None
            logger.warning("skipped FLARE job meta of job %s: %s", job_id, exc.errors(include_url=False))
            continue
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
        num_seen=len(metas),
        num_created=num_created,
        num_updated=num_updated,
        num_invalid=num_invalid,
        num_failed=num_failed,
    )


def _backoff_delay(interval_s: float, num_failures: int) -> float:
    """Return the wait after ``num_failures`` failed passes in a row: doubling, capped at 60 s or the interval."""
    growth = 2 ** min(num_failures, _MAX_BACKOFF_EXPONENT)
    return min(interval_s * growth, max(_MAX_BACKOFF_S, interval_s))


class ReconcilerLoop:
    """Background thread that runs ``reconcile_once`` every ``interval_s`` seconds until stopped.

    A failed pass is logged and retried with exponential backoff up to 60 s; the loop never ends on an error.

    Args:
        database: Database to write to.
        source: FLARE job source; closed on stop when it has a ``close()`` method.
        interval_s: Seconds between passes.
        on_pass: Called with the result of each successful pass (used by tests).
    """

    def __init__(
        self,
        database: Database,
        source: FlareJobSource,
        *,
        interval_s: float,
        on_pass: Callable[[ReconcileResult], None] | None = None,
    ) -> None:
        self.database = database
        self.source = source
        self.interval_s = interval_s
        self.on_pass = on_pass
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
            return reconcile_once(session, self.source)

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
