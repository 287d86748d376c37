"""FLARE job statuses and the rule that keeps a recorded status from moving backwards.

The strings match ``nvflare.apis.job_def.RunStatus`` in NVIDIA FLARE 2.9 exactly, so a status read from FLARE's
job meta is stored as is.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobStatus", "StatusSource", "is_terminal", "should_apply_status"]


class JobStatus(StrEnum):
    """A job status as FLARE's ``RunStatus`` spells it."""

    SUBMITTED = "SUBMITTED"
    APPROVED = "APPROVED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
    FINISHED_CAN_NOT_SCHEDULE = "FINISHED:CAN_NOT_SCHEDULE"
    FINISHED_FAILED_TO_RUN = "FINISHED:FAILED_TO_RUN"
    FINISHED_ABANDONED = "FINISHED:ABANDONED"


class StatusSource(StrEnum):
    """Origin of a status change."""

    EVENT = "event"
    RECONCILER = "reconciler"
    API = "api"


_RANK = {
    JobStatus.SUBMITTED: 0,
    JobStatus.APPROVED: 1,
    JobStatus.DISPATCHED: 2,
    JobStatus.RUNNING: 3,
}
_TERMINAL_RANK = 4


def is_terminal(status: str) -> bool:
    """Return whether a status is final: FLARE treats every status starting with ``FINISHED`` as final."""
    return status.startswith("FINISHED")


def _rank(status: JobStatus) -> int:
    return _TERMINAL_RANK if is_terminal(status) else _RANK[status]


def should_apply_status(current: JobStatus | None, new: JobStatus, source: StatusSource) -> bool:
    """Decide whether a reported status replaces the recorded one.

    Statuses only move forward (SUBMITTED, APPROVED, DISPATCHED, RUNNING, then a FINISHED status), so an event that
    arrives late cannot regress a job. A final status never changes back to a non-final one. One final status may
    replace another only when the reconciler reports it, because FLARE's job store is the authority on how a job
    ended (an abort, for example, can be followed by a completion event).

    Args:
        current: The recorded status, or None for a job seen for the first time.
        new: The reported status.
        source: Who reported it.

    Returns:
        True when ``new`` should be recorded as a transition.
    """
    if current is None:
        return True
    if new == current:
        return False
    if is_terminal(current):
        return is_terminal(new) and source == StatusSource.RECONCILER
    return _rank(new) > _rank(current)
