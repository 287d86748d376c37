"""Per-type handlers that apply events to the job, site and metrics tables.

Each handler runs inside the ingestion transaction after the job (if any) is resolved, and returns the effects it
had as JSON for the audit event. Handlers never write audit events themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from admin_api.core.status import JobStatus
from admin_api.models import Job, SiteStatus
from admin_api.schemas.events import (
    ContributionAcceptedEvent,
    ContributionRejectedEvent,
    EventBase,
    JobFinishedEvent,
    JobStartedEvent,
    JobSubmittedEvent,
    KitIssuedEvent,
    PrivacySpentEvent,
    RoundCompletedEvent,
    RoundStartedEvent,
    SiteJoinedEvent,
    SiteLeftEvent,
)
from admin_api.services.certificates import (
    CERTIFICATE_SCOPE,
    record_certificate,
    revoke_certificate,
    revoke_site_certificates,
)
from admin_api.services.jobs import IngestRows, merge_job_sites, utc_now
from admin_api.services.privacy import record_privacy_spend
from admin_api.services.rounds import record_contribution, record_round_metrics
from admin_api.services.sites import set_site_status, touch_site

__all__ = ["HANDLERS", "Handler", "implied_status"]

Handler = Callable[[Session, Any, Job | None, IngestRows | None], dict[str, Any]]

_IMPLIED_STATUS = {
    "job.submitted": JobStatus.SUBMITTED,
    "job.started": JobStatus.RUNNING,
    "round.started": JobStatus.RUNNING,
    "contribution.accepted": JobStatus.RUNNING,
    "contribution.rejected": JobStatus.RUNNING,
    "round.completed": JobStatus.RUNNING,
    "privacy.spent": JobStatus.RUNNING,
}


def implied_status(event: EventBase) -> JobStatus | None:
    """Return the job status an event shows, or None for an event about a site only.

    Round, contribution and privacy events show that the job is running. So they create a job seen for the first
    time as RUNNING, and they move an earlier status forward.
    """
    if isinstance(event, JobFinishedEvent):
        return event.payload.status
    return _IMPLIED_STATUS.get(event.type)  # type: ignore[attr-defined]


def _numeric_extras(payload: BaseModel) -> dict[str, int | float]:
    """Return the payload's unknown fields that are numbers, such as upload_bytes; they describe the round too."""
    return {
        key: value
        for key, value in (payload.model_extra or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _require(job: Job | None) -> Job:
    # The ingestion service resolves the job for every type with requires_job, so None is a programming error.
    if job is None:
        raise RuntimeError("event handler called without its job")
    return job


def _add_sites(session: Session, job: Job, sites: list[str], event: EventBase, rows: IngestRows | None) -> list[str]:
    for site in sites:
        touch_site(session, site, at=event.occurred_at, rows=rows)
    return merge_job_sites(job, sites)


def _on_job_submitted(
    session: Session, event: JobSubmittedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    payload = event.payload
    job.name = payload.name
    job.submitter = payload.submitter
    job.submitter_org = payload.submitter_org
    job.submitter_role = payload.submitter_role
    if job.submitted_at is None or event.occurred_at < job.submitted_at:
        job.submitted_at = event.occurred_at
    job.updated_at = utc_now()
    return {}


def _on_job_started(
    session: Session, event: JobStartedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    payload = event.payload
    # Fill only: a job.submitted event from the Consortia API names the real requester, while FLARE's meta names
    # the service identity that submitted on the requester's behalf.
    for field in ("name", "submitter", "submitter_org", "submitter_role"):
        value = getattr(payload, field)
        if value is not None and getattr(job, field) is None:
            setattr(job, field, value)
    if payload.num_rounds is not None:
        job.num_rounds = payload.num_rounds
    # A round event delivered before job.started may have set started_at to a later time.
    if job.started_at is None or event.occurred_at < job.started_at:
        job.started_at = event.occurred_at
    return {"sites_added": _add_sites(session, job, payload.sites, event, rows)}


def _on_round_started(
    session: Session, event: RoundStartedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    job.num_rounds = event.payload.num_rounds
    return {"sites_added": _add_sites(session, job, event.payload.sites, event, rows)}


def _on_contribution_accepted(
    session: Session, event: ContributionAcceptedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    assert event.site is not None and event.round is not None  # enforced by the event schema
    payload = event.payload
    record_contribution(
        session,
        job,
        round_number=event.round,
        site=event.site,
        accepted=True,
        num_examples=payload.num_examples,
        at=event.occurred_at,
        rows=rows,
    )
    metrics = {**_numeric_extras(payload), **payload.metrics, "num_examples": payload.num_examples}
    record_round_metrics(
        session, job, round_number=event.round, site=event.site, metrics=metrics, at=event.occurred_at, rows=rows
    )
    return {"sites_added": merge_job_sites(job, [event.site])}


def _on_contribution_rejected(
    session: Session, event: ContributionRejectedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    assert event.site is not None and event.round is not None  # enforced by the event schema
    record_contribution(
        session,
        job,
        round_number=event.round,
        site=event.site,
        accepted=False,
        reason_code=event.payload.reason_code,
        reason=event.payload.reason,
        at=event.occurred_at,
        rows=rows,
    )
    return {"sites_added": merge_job_sites(job, [event.site])}


def _on_round_completed(
    session: Session, event: RoundCompletedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    assert event.round is not None  # enforced by the event schema
    payload = event.payload
    global_metrics = {
        **_numeric_extras(payload),
        **payload.global_metrics,
        "num_accepted": payload.num_accepted,
        "num_rejected": payload.num_rejected,
    }
    record_round_metrics(
        session, job, round_number=event.round, site=None, metrics=global_metrics, at=event.occurred_at, rows=rows
    )
    for site, metrics in payload.site_metrics.items():
        touch_site(session, site, at=event.occurred_at, rows=rows)
        record_round_metrics(
            session, job, round_number=event.round, site=site, metrics=metrics, at=event.occurred_at, rows=rows
        )
    return {"sites_added": merge_job_sites(job, payload.site_metrics)}


def _on_job_finished(
    session: Session, event: JobFinishedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    # The status change itself is applied by the ingestion service through implied_status.
    _require(job)
    return {}


def _on_site_joined(
    session: Session, event: SiteJoinedEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    assert event.site is not None  # enforced by the event schema
    site = touch_site(session, event.site, at=event.occurred_at, org=event.payload.org, rows=rows)
    applied = set_site_status(site, SiteStatus.ONLINE, at=event.occurred_at)
    return {"site_status": SiteStatus.ONLINE.value if applied else None}


def _on_site_left(session: Session, event: SiteLeftEvent, job: Job | None, rows: IngestRows | None) -> dict[str, Any]:
    assert event.site is not None  # enforced by the event schema
    extras = event.payload.model_extra or {}
    if extras.get("revoked") is True and extras.get("scope") == CERTIFICATE_SCOPE:
        # 'consortia site rotate' retires one certificate; the site stays a member and restarts with its new kit.
        fingerprint = extras.get("certificate_fingerprint")
        reason = extras.get("reason")
        return {
            "certificates_revoked": revoke_certificate(
                session,
                event.site,
                fingerprint if isinstance(fingerprint, str) else "",
                at=event.occurred_at,
                reason=reason if isinstance(reason, str) else None,
            )
        }
    site = touch_site(session, event.site, at=event.occurred_at, rows=rows)
    applied = set_site_status(site, SiteStatus.OFFLINE, at=event.occurred_at)
    effects: dict[str, Any] = {"site_status": SiteStatus.OFFLINE.value if applied else None}
    # 'consortia site revoke' reports a revocation as site.left with revoked: true (provisioning/revocation.py).
    if extras.get("revoked") is True:
        reason = extras.get("reason")
        effects["certificates_revoked"] = revoke_site_certificates(
            session, event.site, at=event.occurred_at, reason=reason if isinstance(reason, str) else None
        )
    return effects


def _on_privacy_spent(
    session: Session, event: PrivacySpentEvent, job: Job | None, rows: IngestRows | None
) -> dict[str, Any]:
    job = _require(job)
    # A site that reports a spend took part in the job, so the job's client-level spends are charged to it too.
    added = merge_job_sites(job, [event.site]) if event.site is not None else []
    return {"privacy_ledger": record_privacy_spend(session, event, job, rows=rows), "sites_added": added}


def _on_kit_issued(session: Session, event: KitIssuedEvent, job: Job | None, rows: IngestRows | None) -> dict[str, Any]:
    return {"certificate": record_certificate(session, event)}


HANDLERS: dict[str, Handler] = {
    "job.submitted": _on_job_submitted,
    "job.started": _on_job_started,
    "round.started": _on_round_started,
    "contribution.accepted": _on_contribution_accepted,
    "contribution.rejected": _on_contribution_rejected,
    "round.completed": _on_round_completed,
    "job.finished": _on_job_finished,
    "site.joined": _on_site_joined,
    "site.left": _on_site_left,
    "privacy.spent": _on_privacy_spent,
    "kit.issued": _on_kit_issued,
}
"""Event type to the function that applies it."""
