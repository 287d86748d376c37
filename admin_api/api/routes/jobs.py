"""Job routes: list, detail, the audit report, and submission and abort on FLARE for a user."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, Response, status
from sqlalchemy.orm import Session

from admin_api.api.auth import Principal, authorize_abort, can_read_job, client_address, visible_org
from admin_api.api.deps import (
    AbortJobsDep,
    FlareActionsDep,
    ReaderDep,
    ReportReaderDep,
    SessionDep,
    SubmitJobsDep,
    WriteSessionDep,
)
from admin_api.errors import JobNotFoundError, PermissionDeniedError
from admin_api.models import Job
from admin_api.schemas.audit import JobReportPublic
from admin_api.schemas.job_requests import JobAbortPublic, JobSubmitCreate
from admin_api.schemas.jobs import JobDetailPublic, JobPublic, JobsPublic, JobStatusFilter
from admin_api.services.flare_actions import Requester, abort_job, record_denied_abort, submit_job
from admin_api.services.jobs import get_job_detail, list_jobs, require_job
from admin_api.services.reports import build_job_report, render_report_csv, render_report_json

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

MAX_OFFSET = 2**63 - 1
"""Largest offset a 64-bit database integer holds; a larger one would fail in the database driver."""


def _require_visible_job(session: Session, principal: Principal, job_id: str) -> Job:
    """Load a job, raising not-found for a job outside the caller's org, so its existence does not leak."""
    job = require_job(session, job_id)
    if not can_read_job(
        principal, submitter_org=job.submitter_org, requested_by_org=job.requested_by_org, sites=job.sites or []
    ):
        raise JobNotFoundError(job_id)
    return job


def _requester(principal: Principal, request: Request) -> Requester:
    return Requester(
        name=principal.name,
        role=principal.role.value if principal.role is not None else None,
        org=principal.org,
        token_id=principal.token_id,
        source_address=client_address(request),
    )


@router.get("")
def read_jobs(
    session: SessionDep,
    principal: ReaderDep,
    status: Annotated[JobStatusFilter | None, Query(description="Exact status, or FINISHED for any final one.")] = None,
    submitter: Annotated[str | None, Query(max_length=255)] = None,
    name: Annotated[str | None, Query(max_length=255, description="Case-insensitive substring.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobsPublic:
    """List jobs, newest submission first; an org admin sees only the jobs of its org and its sites."""
    jobs, count = list_jobs(
        session,
        status=None if status is None else status.value,
        submitter=submitter,
        name=name,
        org=visible_org(principal),
        org_sites=principal.org_sites,
        limit=limit,
        offset=offset,
    )
    return JobsPublic(data=[JobPublic.model_validate(job) for job in jobs], count=count, limit=limit, offset=offset)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_job_submission(
    body: Annotated[JobSubmitCreate, Body()],
    request: Request,
    session: WriteSessionDep,
    principal: SubmitJobsDep,
    actions: FlareActionsDep,
) -> JobPublic:
    """Submit a job folder from ``jobs/`` with parameters to FLARE, as the service identity, for the caller."""
    job = submit_job(session, actions, body, _requester(principal, request))
    return JobPublic.model_validate(job)


@router.get("/{job_id}")
def read_job(job_id: str, session: SessionDep, principal: ReaderDep) -> JobDetailPublic:
    """Return a job with its status history, per-round metrics and contributions."""
    _require_visible_job(session, principal, job_id)
    return get_job_detail(session, job_id)


@router.post("/{job_id}/abort", status_code=status.HTTP_202_ACCEPTED)
def create_job_abort(
    job_id: str,
    request: Request,
    session: WriteSessionDep,
    principal: AbortJobsDep,
    actions: FlareActionsDep,
) -> JobAbortPublic:
    """Ask FLARE to abort a job; the status becomes FINISHED:ABORTED once FLARE reports it."""
    job = _require_visible_job(session, principal, job_id)
    requester = _requester(principal, request)
    try:
        authorize_abort(
            principal,
            job_id=job.job_id,
            submitter=job.submitter,
            submitter_org=job.submitter_org,
            requested_by=job.requested_by,
            requested_by_org=job.requested_by_org,
        )
    except PermissionDeniedError as exc:
        session.rollback()
        record_denied_abort(session, job, requester, str(exc))
        raise
    message = abort_job(session, actions, job, requester)
    return JobAbortPublic(job=JobPublic.model_validate(job), flare_message=message)


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
    principal: ReportReaderDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
) -> Response:
    """Return the audit report of a job: job, sites, rounds, contributions, audit events and chain head."""
    _require_visible_job(session, principal, job_id)
    report = build_job_report(session, job_id)
    if format == "csv":
        return Response(
            render_report_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="job-{job_id}-report.csv"'},
        )
    return Response(render_report_json(report), media_type="application/json")
