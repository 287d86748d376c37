"""Job read routes: list, detail and the audit report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from admin_api.api.deps import ReaderDep, SessionDep
from admin_api.schemas.audit import JobReportPublic
from admin_api.schemas.jobs import JobDetailPublic, JobPublic, JobsPublic, JobStatusFilter
from admin_api.services.jobs import get_job_detail, list_jobs
from admin_api.services.reports import build_job_report, render_report_csv, render_report_json

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

MAX_OFFSET = 2**63 - 1
"""Largest offset a 64-bit database integer holds; a larger one would fail in the database driver."""


@router.get("")
def read_jobs(
    session: SessionDep,
    _principal: ReaderDep,
    status: Annotated[JobStatusFilter | None, Query(description="Exact status, or FINISHED for any final one.")] = None,
    submitter: Annotated[str | None, Query(max_length=255)] = None,
    name: Annotated[str | None, Query(max_length=255, description="Case-insensitive substring.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobsPublic:
    """List jobs, newest submission first."""
    jobs, count = list_jobs(
        session,
        status=None if status is None else status.value,
        submitter=submitter,
        name=name,
        limit=limit,
        offset=offset,
    )
    return JobsPublic(data=[JobPublic.model_validate(job) for job in jobs], count=count, limit=limit, offset=offset)


@router.get("/{job_id}")
def read_job(job_id: str, session: SessionDep, _principal: ReaderDep) -> JobDetailPublic:
    """Return a job with its status history, per-round metrics and contributions."""
    return get_job_detail(session, job_id)


@router.get(
    "/{job_id}/report",
    response_class=Response,
    responses={
        200: {
            "description": "The report as JSON (JobReportPublic) or as long-form CSV.",
            "content": {"application/json": {"schema": JobReportPublic.model_json_schema()}, "text/csv": {}},
        }
    },
)
def read_job_report(
    job_id: str,
    session: SessionDep,
    _principal: ReaderDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
) -> Response:
    """Return the audit report of a job: job, sites, rounds, contributions, audit events and chain head."""
    report = build_job_report(session, job_id)
    if format == "csv":
        return Response(
            render_report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-report.csv"'},
        )
    return Response(render_report_json(report), media_type="application/json")
