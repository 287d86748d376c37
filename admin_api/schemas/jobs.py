"""Read schemas of jobs, their status history, rounds and contributions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ContributionPublic",
    "JobDetailPublic",
    "JobPublic",
    "JobStatusFilter",
    "JobsPublic",
    "RoundPublic",
    "StatusTransitionPublic",
]


class JobStatusFilter(StrEnum):
    """Status filter of the job list: an exact FLARE status, or FINISHED for every final status."""

    SUBMITTED = "SUBMITTED"
    APPROVED = "APPROVED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"
    FINISHED_CAN_NOT_SCHEDULE = "FINISHED:CAN_NOT_SCHEDULE"
    FINISHED_FAILED_TO_RUN = "FINISHED:FAILED_TO_RUN"
    FINISHED_ABANDONED = "FINISHED:ABANDONED"


class JobPublic(BaseModel):
    """A recorded FLARE job."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str = Field(description="FLARE job id.")
    name: str | None
    submitter: str | None
    submitter_org: str | None
    submitter_role: str | None
    requested_by: str | None = Field(
        default=None, description="User who submitted the job through the admin API; FLARE's submitter is then the service."
    )
    status: str = Field(description="FLARE RunStatus string, for example RUNNING or FINISHED:COMPLETED.")
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    num_rounds: int | None
    sites: list[str]
    created_at: datetime
    updated_at: datetime


class JobsPublic(BaseModel):
    """One page of jobs; ``count`` is the number of jobs matching the filters on all pages."""

    data: list[JobPublic]
    count: int
    limit: int
    offset: int


class StatusTransitionPublic(BaseModel):
    """One recorded status change."""

    model_config = ConfigDict(from_attributes=True)

    from_status: str | None
    to_status: str
    at: datetime
    source: str = Field(description="event or reconciler.")
    event_id: str | None


class ContributionPublic(BaseModel):
    """Whether the server accepted a site's update in a round."""

    model_config = ConfigDict(from_attributes=True)

    round: int
    site: str
    accepted: bool
    reason_code: str | None
    reason: str | None
    num_examples: int | None
    occurred_at: datetime


class RoundPublic(BaseModel):
    """Metrics and contributions of one round (0-based)."""

    round: int
    global_metrics: dict[str, Any] | None = Field(description="Metrics of the global model, or None if not reported.")
    site_metrics: dict[str, dict[str, Any]] = Field(description="Site name to that site's metrics.")
    contributions: list[ContributionPublic]


class JobDetailPublic(JobPublic):
    """A job with its status history and per-round results."""

    status_history: list[StatusTransitionPublic]
    rounds: list[RoundPublic]
