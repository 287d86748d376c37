"""Event ingestion: idempotent by event_id, one transaction per request, one audit event per new event.

A request takes the chain lock once, before anything else, so concurrent requests apply one at a time and each reads
what the previous one committed. Then it reads the chain head and which of its event_ids were already ingested, in
one query each. For each event, in order:

1. check the event_id: a replay with identical content returns the first receipt and writes nothing, and a reuse
   with different content raises ``EventConflictError``;
2. resolve the job, creating it when first seen, with the status the event shows;
3. apply the type's handler (jobs, sites, metrics, contributions);
4. append one audit event and the idempotency record.

Jobs, sites and their rows are read at most once per request (``IngestRows``), and the new rows are written by the
flushes that queries and the commit trigger, several events' rows at a time, rather than one flush per event.
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
from admin_api.services.audit import SYSTEM_ROLE, ChainWriter, job_target, site_target
from admin_api.services.event_handlers import HANDLERS, implied_status
from admin_api.services.jobs import IngestRows, StatusChange, apply_status, create_job, utc_now
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


_PREFETCH_CHUNK = 500
"""event_ids per query when reading which events of a request were already ingested."""


class _Batch:
    """State of one ingestion transaction: the chain writer, the rows read so far and the ingested event_ids."""

    def __init__(self, session: Session, events: Sequence[EventBase]) -> None:
        # The chain lock comes first, so the queries below see every earlier commit.
        self.chain = ChainWriter(session)
        self.rows = IngestRows()
        self.ingested: dict[str, tuple[str, int]] = {}
        """event_id to the content_sha256 and audit_seq it was ingested with, here or by an earlier request."""
        event_ids = sorted({str(event.event_id) for event in events})
        for offset in range(0, len(event_ids), _PREFETCH_CHUNK):
            statement = select(IngestedEvent.event_id, IngestedEvent.content_sha256, IngestedEvent.audit_seq).where(
                IngestedEvent.event_id.in_(event_ids[offset : offset + _PREFETCH_CHUNK])
            )
            for event_id, content_sha256, audit_seq in session.execute(statement).tuples():
                self.ingested[event_id] = (content_sha256, audit_seq)


def _resolve_job(
    session: Session, event: EventBase, rows: IngestRows
) -> tuple[Job | None, StatusChange | None, str | None]:
    """Find or create the event's job and apply the status it shows.

    Returns:
        The job, the applied status change, and the ignored status when the event would have regressed the job.
    """
    if event.job_id is None:
        return None, None, None
    status = implied_status(event)
    event_id = str(event.event_id)
    job = rows.job(session, event.job_id)
    if job is None:
        if status is None:
            # A site or kit event may name a job_id, but it shows no job status, so it creates no job.
            return None, None, None
        job, first_change = create_job(
            session, event.job_id, status=status, at=event.occurred_at, source=StatusSource.EVENT, event_id=event_id
        )
        rows.add_job(job)
        return job, first_change, None
    if status is None:
        return job, None, None
    change: StatusChange | None = apply_status(
        session, job, status, at=event.occurred_at, source=StatusSource.EVENT, event_id=event_id
    )
    ignored = status.value if change is None and status.value != job.status else None
    return job, change, ignored


def _apply(session: Session, event: EventBase, rows: IngestRows) -> dict[str, Any]:
    job, change, ignored_status = _resolve_job(session, event, rows)
    if event.site is not None:
        touch_site(session, event.site, at=event.occurred_at, rows=rows)
    effects = HANDLERS[event.type](session, event, job, rows)  # type: ignore[attr-defined]
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


def _ingest(session: Session, batch: _Batch, event: EventBase) -> EventReceiptPublic:
    """Apply one event of ``batch``. Its rows stay pending until the next flush."""
    event_id = str(event.event_id)
    content_sha256 = _content_sha256(event)
    existing = batch.ingested.get(event_id)
    if existing is not None:
        if existing[0] != content_sha256:
            raise EventConflictError(event_id)
        return EventReceiptPublic(event_id=event.event_id, duplicate=True, audit_seq=existing[1])

    received_at = utc_now()
    batch.rows.audit_seq = batch.chain.next_seq
    try:
        effects = _apply(session, event, batch.rows)
    finally:
        batch.rows.audit_seq = None
    actor, role = _actor_and_role(event)
    if event.job_id is not None:
        target = job_target(event.job_id)
    elif event.type == "kit.issued":  # type: ignore[attr-defined]
        target = f"kit:{event.payload.participant}"  # type: ignore[attr-defined]
    else:
        target = site_target(event.site or "")
    audit_event = batch.chain.append(
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
    batch.ingested[event_id] = (content_sha256, audit_event.seq)
    return EventReceiptPublic(event_id=event.event_id, duplicate=False, audit_seq=audit_event.seq)


def ingest_event(session: Session, event: EventBase) -> EventReceiptPublic:
    """Apply one event inside the caller's write transaction; the caller commits.

    To apply several events in one transaction, pass them all to ``ingest_events``, which takes the chain lock and
    reads the chain head once for all of them.

    Args:
        session: A write session (``Database.write_session()``).
        event: A validated event.

    Returns:
        The receipt; ``duplicate`` is True when the event_id was already ingested.

    Raises:
        EventConflictError: The event_id was already ingested with different content.
    """
    receipt = _ingest(session, _Batch(session, [event]), event)
    session.flush()
    return receipt


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
        batch = _Batch(session, events)
        receipts = [_ingest(session, batch, event) for event in events]
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
