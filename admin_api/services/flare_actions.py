"""Job submissions and aborts that the admin API makes on FLARE for a user.

The admin service acts on FLARE through the FLARE API with its own identity (``CONSORTIA_FLARE_ADMIN_USER``, a
project_admin kit), so FLARE records that identity as the submitter. The real requester is recorded here: in the job
row's ``requested_by`` and in a ``job.submit_requested`` or ``job.abort_requested`` audit event with the requester's
name, role, token id and source address, whether FLARE accepted the action or not.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from admin_api.core.status import JobStatus, StatusSource, is_terminal
from admin_api.errors import FlareActionError, InvalidJobRequestError, JobStateConflictError
from admin_api.models import Job
from admin_api.schemas.job_requests import JobSubmitCreate
from admin_api.services.audit import append_audit_event, job_target, lock_chain
from admin_api.services.flare_jobs import flare_output_to_log
from admin_api.services.jobs import create_job, get_job, utc_now
from consortia.jobs import JobDefinitionError, available_jobs, prepare_job

__all__ = ["FlareActions", "FlareApiActions", "Requester", "abort_job", "record_denied_abort", "submit_job"]

logger = logging.getLogger(__name__)


class FlareActions(Protocol):
    """Anything that submits and aborts FLARE jobs."""

    def submit_job(self, job_folder: Path) -> str:
        """Submit a job folder and return FLARE's job id.

        Raises:
            FlareActionError: FLARE rejected the job or could not be reached.
        """
        ...

    def abort_job(self, job_id: str) -> str:
        """Ask FLARE to abort a job and return FLARE's message.

        Raises:
            FlareActionError: FLARE rejected the abort or could not be reached.
        """
        ...


class FlareApiActions:
    """FLARE actions through the FLARE API with the service's admin kit; one session, one call at a time.

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
        self._lock = threading.Lock()

    def _call(self, what: str, method: str, *args: Any) -> Any:
        with self._lock:
            try:
                with flare_output_to_log():
                    if self._session is None:
                        from nvflare.fuel.flare_api.flare_api import new_secure_session

                        self._session = new_secure_session(self.username, self.admin_kit_dir, timeout=self.timeout_s)
                    return getattr(self._session, method)(*args)
            except Exception as exc:  # FLARE raises many unrelated types (NoConnection, JobNotFound, ...)
                self._close_locked()
                raise FlareActionError(f"FLARE failed to {what}: {type(exc).__name__}: {exc}") from exc

    def submit_job(self, job_folder: Path) -> str:
        """Submit a job folder as the service identity and return FLARE's job id."""
        return str(self._call(f"submit job folder {job_folder.name}", "submit_job", str(job_folder)))

    def abort_job(self, job_id: str) -> str:
        """Abort a job as the service identity and return FLARE's message."""
        return str(self._call(f"abort job {job_id}", "abort_job", job_id))

    def _close_locked(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.close()
        except Exception as exc:  # noqa: BLE001  # a broken session may fail to close in any way; it is dropped
            logger.warning("closing the FLARE action session failed: %s: %s", type(exc).__name__, exc)

    def close(self) -> None:
        """Close the FLARE session, if one is open."""
        with self._lock:
            self._close_locked()


@dataclass(frozen=True, slots=True)
class Requester:
    """The user who requested an action from the admin API, as the audit trail records it."""

    name: str
    role: str | None
    org: str | None
    token_id: str | None
    source_address: str | None

    def as_details(self) -> dict[str, Any]:
        """Return the requester's facts for an audit event."""
        return {"token_id": self.token_id, "source_address": self.source_address, "org": self.org}


def _require_actions(actions: FlareActions | None) -> FlareActions:
    if actions is None:
        raise FlareActionError(
            "the admin service has no FLARE connection; start it with CONSORTIA_FLARE_ADMIN_KIT and "
            "CONSORTIA_FLARE_ADMIN_USER set (consortia up does this)"
        )
    return actions


def _prepare(request: JobSubmitCreate, scratch: Path) -> Path:
    if request.job not in available_jobs():
        raise InvalidJobRequestError(
            f"unknown job {request.job!r}; submit one of: {', '.join(available_jobs()) or 'none'}"
        )
    parameters = request.parameters.model_dump(exclude_none=True)
    try:
        return prepare_job(request.job, scratch, job_name=request.job_name, **parameters)
    except JobDefinitionError as exc:
        raise InvalidJobRequestError(f"job {request.job!r} cannot take these parameters: {exc}") from exc


def _record_submitted(session: Session, job_id: str, request: JobSubmitCreate, requester: Requester) -> Job:
    job = get_job(session, job_id)
    if job is None:
        # The reconciler may have recorded the job already; otherwise record it now, as FLARE just accepted it.
        job, _ = create_job(session, job_id, status=JobStatus.SUBMITTED, at=utc_now(), source=StatusSource.API)
    if job.name is None:
        job.name = request.job_name or request.job
    job.requested_by = requester.name
    job.requested_by_org = requester.org
    job.updated_at = utc_now()
    return job


def _append_request_event(
    session: Session, requester: Requester, action: str, target: str, details: dict[str, Any]
) -> None:
    """Append one audit event for a user's request and commit; the caller holds the chain lock."""
    append_audit_event(
        session,
        occurred_at=utc_now(),
        actor=requester.name,
        role=requester.role,
        action=action,
        target=target,
        details=details,
    )
    session.commit()


def submit_job(session: Session, actions: FlareActions | None, request: JobSubmitCreate, requester: Requester) -> Job:
    """Submit a job folder from ``jobs/`` to FLARE for a user, and record the job and the request.

    The request is audited as ``job.submit_requested`` whether FLARE accepts it or not.

    Args:
        session: A write session, committed here.
        actions: The FLARE connection of the service, or None when none is configured.
        request: The validated submission.
        requester: Who asked for it.

    Returns:
        The recorded job.

    Raises:
        InvalidJobRequestError: The job folder is unknown or rejects a parameter.
        FlareActionError: FLARE is not configured, unreachable, or rejected the job.
    """
    details: dict[str, Any] = {
        "job": request.job,
        "job_name": request.job_name,
        "parameters": request.parameters.model_dump(exclude_none=True),
        **requester.as_details(),
    }
    job_id: str | None = None
    error: FlareActionError | None = None
    with tempfile.TemporaryDirectory(prefix="consortia-submit-") as scratch:
        folder = _prepare(request, Path(scratch))
        flare = _require_actions(actions)
        try:
            job_id = flare.submit_job(folder)
        except FlareActionError as exc:
            error = exc

    lock_chain(session)
    job = None if job_id is None else _record_submitted(session, job_id, request, requester)
    _append_request_event(
        session,
        requester,
        "job.submit_requested",
        job_target(job_id) if job_id is not None else f"job-definition:{request.job}",
        {**details, "outcome": "submitted" if error is None else "failed", "error": str(error) if error else None},
    )
    if error is not None or job is None:
        logger.warning("submission of %s for %s failed: %s", request.job, requester.name, error)
        raise error or FlareActionError("FLARE returned no job id")
    logger.info("submitted job %s (%s) for %s", job_id, request.job, requester.name, extra={"job_id": job_id})
    return job


def record_denied_abort(session: Session, job: Job, requester: Requester, reason: str) -> None:
    """Append an ``access.denied`` audit event for an abort the row rules rejected, and commit it."""
    lock_chain(session)
    _append_request_event(
        session,
        requester,
        "access.denied",
        job_target(job.job_id),
        {"request": "abort", "reason": reason, **requester.as_details()},
    )


def abort_job(session: Session, actions: FlareActions | None, job: Job, requester: Requester) -> str:
    """Ask FLARE to abort a job for a user who may abort it, and audit the request as ``job.abort_requested``.

    The job's status changes when FLARE reports FINISHED:ABORTED, through events or the reconciler.

    Returns:
        FLARE's message, for example "Abort signal has been sent to the server app."

    Raises:
        JobStateConflictError: The job has already finished.
        FlareActionError: FLARE is not configured, unreachable, or rejected the abort.
    """
    if is_terminal(job.status):
        raise JobStateConflictError(
            f"job {job.job_id!r} already finished with status {job.status}; only unfinished jobs can be aborted"
        )
    flare = _require_actions(actions)
    job_id, status_before = job.job_id, job.status
    # End the read transaction, so no database lock is held while FLARE responds.
    session.commit()
    message: str | None = None
    error: FlareActionError | None = None
    try:
        message = flare.abort_job(job_id)
    except FlareActionError as exc:
        error = exc
    lock_chain(session)
    _append_request_event(
        session,
        requester,
        "job.abort_requested",
        job_target(job_id),
        {
            "status_before": status_before,
            "outcome": "sent" if error is None else "failed",
            "flare_message": message,
            "error": str(error) if error else None,
            **requester.as_details(),
        },
    )
    if error is not None:
        raise error
    logger.info("abort of job %s sent for %s", job_id, requester.name, extra={"job_id": job_id})
    return message or ""
