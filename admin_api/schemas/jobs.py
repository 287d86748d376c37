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

JOB_ID_EXAMPLE = "4f1c2a9e-8b3d-4e6f-9a7c-1d2e3f4a5b6c"
JOB_EXAMPLE: dict[str, Any] = {
    "job_id": JOB_ID_EXAMPLE,
    "name": "fedavg_clinical",
    "submitter": "lead@hospital-a.org",
    "submitter_org": "hospital_a",
    "submitter_role": "lead",
    "requested_by": None,
    "status": "RUNNING",
    "submitted_at": "2026-12-04T18:02:11.000000Z",
    "started_at": "2026-12-04T18:02:19.000000Z",
    "finished_at": None,
    "num_rounds": 5,
    "sites": ["hospital-a", "hospital-b"],
    "created_at": "2026-12-04T18:02:11.000000Z",
    "updated_at": "2026-12-04T18:02:31.000000Z",
}
_TRANSITION_EXAMPLE: dict[str, Any] = {
    "from_status": "DISPATCHED",
    "to_status": "RUNNING",
    "at": "2026-12-04T18:02:19.000000Z",
    "source": "event",
    "event_id": "0b7e9c1a-3f5d-4c2b-8e6a-9d1f2a3b4c5d",
}
_CONTRIBUTION_EXAMPLE: dict[str, Any] = {
    "round": 0,
    "site": "hospital-a",
    "accepted": True,
    "reason_code": None,
    "reason": None,
    "num_examples": 1500,
    "occurred_at": "2026-12-04T18:02:27.000000Z",
}
_ROUND_EXAMPLE: dict[str, Any] = {
    "round": 0,
    "global_metrics": {"loss": 0.48, "roc_auc": 0.71},
    "site_metrics": {"hospital-a": {"loss": 0.5, "roc_auc": 0.7}, "hospital-b": {"loss": 0.46, "roc_auc": 0.72}},
    "contributions": [_CONTRIBUTION_EXAMPLE, {**_CONTRIBUTION_EXAMPLE, "site": "hospital-b", "num_examples": 1320}],
}
JOB_DETAIL_EXAMPLE: dict[str, Any] = {
    **JOB_EXAMPLE,
    "status_history": [
        {**_TRANSITION_EXAMPLE, "from_status": None, "to_status": "SUBMITTED", "at": "2026-12-04T18:02:11.000000Z"},
        _TRANSITION_EXAMPLE,
    ],
    "rounds": [_ROUND_EXAMPLE],
}


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

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [JOB_EXAMPLE]})

    job_id: str = Field(description="FLARE job id.")
    name: str | None
    submitter: str | None
    submitter_org: str | None
    submitter_role: str | None
    requested_by: str | None = Field(
        default=None,
        description="User who submitted the job through the admin API; FLARE's submitter is then the service.",
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

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [JOB_EXAMPLE], "count": 1, "limit": 50, "offset": 0}]}
    )

    data: list[JobPublic]
    count: int
    limit: int
    offset: int


class StatusTransitionPublic(BaseModel):
    """One recorded status change."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_TRANSITION_EXAMPLE]})

    from_status: str | None
    to_status: str
    at: datetime
    source: str = Field(description="event or reconciler.")
    event_id: str | None


class ContributionPublic(BaseModel):
    """Whether the server accepted a site's update in a round."""

    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                _CONTRIBUTION_EXAMPLE,
                {
                    **_CONTRIBUTION_EXAMPLE,
                    "site": "hospital-b",
                    "accepted": False,
                    "reason_code": "norm_exceeded",
                    "reason": "L2 norm of the update (params - global_params) is 412.7; expected at most 100.",
                },
            ]
        },
    )

    round: int
    site: str
    accepted: bool
    reason_code: str | None
    reason: str | None
    num_examples: int | None
    occurred_at: datetime


class RoundPublic(BaseModel):
    """Metrics and contributions of one round (0-based)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ROUND_EXAMPLE]})

    round: int
    global_metrics: dict[str, Any] | None = Field(description="Metrics of the global model, or None if not reported.")
    site_metrics: dict[str, dict[str, Any]] = Field(description="Site name to that site's metrics.")
    contributions: list[ContributionPublic]


class JobDetailPublic(JobPublic):
    """A job with its status history and per-round results."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [JOB_DETAIL_EXAMPLE]})

    status_history: list[StatusTransitionPublic]
    rounds: list[RoundPublic]
