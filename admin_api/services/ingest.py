"""Event ingestion: idempotent by event_id, one transaction per request, one audit event per new event.

For each event, in order:

1. take the chain lock, so concurrent requests apply one at a time and each reads what the previous one committed;
2. look up the event_id: a replay with identical content returns the first receipt and writes nothing, and a reuse
   with different content raises ``EventConflictError``;
3. resolve the job, creating it when first seen, with the status the event shows;
4. apply the type's handler (jobs, sites, metrics, contributions);
5. append one audit event and the idempotency record.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.core.chain import canonical_json, format_timestamp
from admin_api.core.status import StatusSource
from admin_api.errors import EventConflictError
from admin_api.models import IngestedEvent, Job
from admin_api.schemas.events import EventBase, EventBatchReceiptPublic, EventReceiptPublic, JobSubmittedEvent
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, job_target, lock_chain, site_target
from admin_api.services.event_handlers import HANDLERS, implied_status
from admin_api.services.jobs import StatusChange, apply_status, create_job, get_job, utc_now
from admin_api.services.metrics import record_ingest
from admin_api.services.sites import touch_site

__all__ = ["FORWARDER_ACTOR", "ingest_event", "ingest_events"]

logger = logging.getLogger(__name__)

FORWARDER_ACTOR = "flare-server"
"""Audit actor of an event that names no actor: the FLARE server component that forwarded it."""


def _content_sha256(event: EventBase) -> str:
    return hashlib.sha256(canonical_json(event.model_dump(mode="json"))).hexdigest()


def _actor_and_role(event: EventBase) -> tuple[str, str | None]:
    if event.actor is None:
        return FORWARDER_ACTOR, SYSTEM_ROLE
    if isinstance(event, JobSubmittedEvent) and event.actor == event.payload.submitter:
        return event.actor, event.payload.submitter_role
    return event.actor, None


def _resolve_job(session: Session, event: EventBase) -> tuple[Job | None, StatusChange | None, str | None]:
    """Find or create the event's job and apply the status it shows.

    Returns:
        The job, the applied status change, and the ignored status when the event would have regressed the job.
    """
    if event.job_id is None:
        return None, None, None
    status = implied_status(event)
    event_id = str(event.event_id)
    job = get_job(session, event.job_id)
    if job is None:
        if status is None:
            # A site or kit event may name a job_id, but it shows no job status, so it creates no job.
            return None, None, None
        job, first_change = create_job(
            session, event.job_id, status=status, at=event.occurred_at, source=StatusSource.EVENT, event_id=event_id
        )
        return job, first_change, None
    if status is None:
        return job, None, None
    change: StatusChange | None = apply_status(
        session, job, status, at=event.occurred_at, source=StatusSource.EVENT, event_id=event_id
    )
    ignored = status.value if change is None and status.value != job.status else None
    return job, change, ignored


def _apply(session: Session, event: EventBase) -> dict[str, Any]:
    job, change, ignored_status = _resolve_job(session, event)
    if event.site is not None:
        touch_site(session, event.site, at=event.occurred_at)
    effects = HANDLERS[event.type](session, event, job)  # type: ignore[attr-defined]
    effects["status_change"] = None if change is None else change.as_details()
    if ignored_status is not None:
        effects["status_ignored"] = ignored_status
        logger.info(
            "ignored status %s from event %s: job %s is already %s",
            ignored_status,
            event.event_id,
            event.job_id,
            job.status if job is not None else None,
            extra={"job_id": event.job_id, "event_id": str(event.event_id)},
        )
    return effects


def ingest_event(session: Session, event: EventBase) -> EventReceiptPublic:
    """Apply one event inside the caller's write transaction; the caller commits.

    Args:
        session: A write session (``Database.write_session()``).
        event: A validated event.

    Returns:
        The receipt; ``duplicate`` is True when the event_id was already ingested.

    Raises:
        EventConflictError: The event_id was already ingested with different content.
    """
    lock_chain(session)
    event_id = str(event.event_id)
    content_sha256 = _content_sha256(event)
    existing = session.scalar(select(IngestedEvent).where(IngestedEvent.event_id == event_id))
    if existing is not None:
        if existing.content_sha256 != content_sha256:
            raise EventConflictError(event_id)
        return EventReceiptPublic(event_id=event.event_id, duplicate=True, audit_seq=existing.audit_seq)

    received_at = utc_now()
    effects = _apply(session, event)
    actor, role = _actor_and_role(event)
    if event.job_id is not None:
        target = job_target(event.job_id)
    elif event.type == "kit.issued":  # type: ignore[attr-defined]
        target = f"kit:{event.payload.participant}"  # type: ignore[attr-defined]
    else:
        target = site_target(event.site or "")
    audit_event = append_audit_event(
        session,
        occurred_at=event.occurred_at,
        actor=actor,
        role=role,
        action=event.type,  # type: ignore[attr-defined]
        target=target,
        details={
            "event_id": event_id,
            "schema_version": event.schema_version,
            "job_id": event.job_id,
            "site": event.site,
            "round": event.round,
            "payload": event.payload.model_dump(mode="json"),  # type: ignore[attr-defined]
            "received_at": format_timestamp(received_at),
            "effects": effects,
        },
    )
    session.add(
        IngestedEvent(
            event_id=event_id,
            type=event.type,  # type: ignore[attr-defined]
            occurred_at=event.occurred_at,
            received_at=received_at,
            job_id=event.job_id,
            site=event.site,
            content_sha256=content_sha256,
            audit_seq=audit_event.seq,
        )
    )
    session.flush()
    return EventReceiptPublic(event_id=event.event_id, duplicate=False, audit_seq=audit_event.seq)


def ingest_events(session: Session, events: Sequence[EventBase]) -> EventBatchReceiptPublic:
    """Apply events in order in one transaction and commit; any failure rolls back the whole batch.

    An event_id repeated inside the batch counts as a duplicate from its second occurrence on.

    Args:
        session: A write session (``Database.write_session()``).
        events: Validated events.

    Returns:
        One receipt per event, in order.

    Raises:
        EventConflictError: An event_id was already ingested with different content; nothing was written.
    """
    try:
        receipts = [ingest_event(session, event) for event in events]
        session.commit()
    except Exception:
        session.rollback()
        raise
    num_duplicates = sum(receipt.duplicate for receipt in receipts)
    record_ingest(num_created=len(receipts) - num_duplicates, num_duplicates=num_duplicates)
    for event, receipt in zip(events, receipts, strict=True):
        logger.info(
            "ingested event %s (%s)%s",
            receipt.event_id,
            event.type,  # type: ignore[attr-defined]
            " as a duplicate" if receipt.duplicate else "",
            extra={"job_id": event.job_id, "site": event.site, "round": event.round},
        )
    return EventBatchReceiptPublic(
        results=receipts, num_created=len(receipts) - num_duplicates, num_duplicates=num_duplicates
    )
