"""Verified checkpoints of the audit chain, so reports need not walk the whole chain every time.

``verify_full`` walks every event from seq 1 (``verify_chain``) and, when the chain is valid, records its head as a
checkpoint. ``verify_from_checkpoint`` is the fast path that reports use:

1. take the newest checkpoint (highest seq; the newest row among equal seqs);
2. check that the event at that seq still exists and still has the checkpoint's hash;
3. walk from that event (its hash is recomputed too) to the head, so each later event must link to it; and
4. record the new head as a checkpoint when the chain is valid.

Without a checkpoint it is a full verification. The fast path cannot see a change to an event before the
checkpoint that leaves the checkpoint event's hash as it was, for example an edited field whose hash was not
recomputed. The full walk (``GET /api/v1/audit/verify``, ``consortia audit verify``) always checks every event and
never relies on checkpoints. The fast path does see events removed at the end of the chain, when the checkpoint
event is gone, which a full walk alone cannot.

Checkpoints are written in their own short write transaction, because verification runs in read sessions. Failing
to write one (a read-only database user, for example) is logged and changes no result. The table is append-only
in the database, like audit events.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from admin_api.core.chain import ChainVerification, format_timestamp, verify_records
from admin_api.db import SQLITE_BEGIN_OPTION
from admin_api.models import AuditCheckpoint, AuditEvent
from admin_api.services.audit import iter_audit_records, verify_chain
from admin_api.services.jobs import utc_now
from admin_api.services.metrics import record_chain_check

__all__ = ["newest_checkpoint", "record_checkpoint", "verify_from_checkpoint", "verify_full"]

logger = logging.getLogger(__name__)


def newest_checkpoint(session: Session) -> AuditCheckpoint | None:
    """Return the checkpoint with the highest seq (the newest row among equal seqs), or None."""
    statement = select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc()).limit(1)
    return session.scalars(statement).first()


def _write_engine(session: Session) -> Engine:
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    if engine.dialect.name == "sqlite":
        # A read session's deferred transaction must not write; a separate BEGIN IMMEDIATE one queues for the lock.
        engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    return engine


def record_checkpoint(session: Session, result: ChainVerification) -> AuditCheckpoint | None:
    """Record the head of a valid verification as a checkpoint, in a transaction of its own.

    Nothing is written when the result is not ok, the chain is empty, or the newest checkpoint already has this
    head or a later one.

    Args:
        session: The session the verification read with; its database is written through a new connection.
        result: The verification to record.

    Returns:
        The new checkpoint, or None when none was written.
    """
    if not result.ok or result.head_seq is None or result.head_hash is None:
        return None
    try:
        with Session(_write_engine(session), expire_on_commit=False) as writer:
            newest = newest_checkpoint(writer)
            if newest is not None and (
                newest.seq > result.head_seq or (newest.seq, newest.hash) == (result.head_seq, result.head_hash)
            ):
                return None
            checkpoint = AuditCheckpoint(
                seq=result.head_seq,
                hash=result.head_hash,
                verified_at=utc_now(),
                verified_from_seq=result.verified_from_seq,
            )
            writer.add(checkpoint)
            writer.commit()
            return checkpoint
    except SQLAlchemyError as exc:
        logger.warning("audit chain checkpoint at seq %s not recorded: %s", result.head_seq, exc)
        return None


def verify_full(session: Session, *, checkpoint: bool = True) -> ChainVerification:
    """Walk the whole chain from seq 1 and, when it is valid and ``checkpoint`` is True, record its head."""
    result = verify_chain(session)
    if checkpoint:
        record_checkpoint(session, result)
    return result


def _checkpoint_mismatch(checkpoint: AuditCheckpoint, event: AuditEvent | None) -> ChainVerification | None:
    verified = format_timestamp(checkpoint.verified_at)
    if event is None:
        reason = (
            f"the checkpoint at seq {checkpoint.seq} (verified {verified}) is no longer in the chain: events were "
            "removed from the end of the chain"
        )
        return ChainVerification(
            ok=False, num_events=0, first_bad_seq=checkpoint.seq, reason=reason, verified_from_seq=checkpoint.seq
        )
    if event.hash != checkpoint.hash:
        reason = (
            f"the event at seq {checkpoint.seq} has hash {event.hash!r}, but the checkpoint verified {verified} "
            f"recorded {checkpoint.hash!r}: the event was altered or replaced; run a full verification"
        )
        return ChainVerification(
            ok=False,
            num_events=1,
            head_seq=event.seq,
            head_hash=event.hash,
            first_bad_seq=checkpoint.seq,
            reason=reason,
            verified_from_seq=checkpoint.seq,
        )
    return None


def verify_from_checkpoint(session: Session, *, checkpoint: bool = True) -> ChainVerification:
    """Verify the chain from the newest checkpoint to the head, and record the head as a new checkpoint.

    Without a checkpoint this is ``verify_full``. ``num_events`` counts the events walked, the checkpoint event
    included, and ``verified_from_seq`` names the checkpoint's seq.

    Args:
        session: A read session.
        checkpoint: Record the head as a checkpoint when the chain is valid.
    """
    start = newest_checkpoint(session)
    if start is None:
        return verify_full(session, checkpoint=checkpoint)
    event = session.get(AuditEvent, start.seq)
    result = _checkpoint_mismatch(start, event)
    if result is None:
        assert event is not None  # _checkpoint_mismatch reports a missing event
        walked = verify_records(iter_audit_records(session, from_seq=start.seq), start_seq=start.seq,
                                start_prev_hash=event.prev_hash)  # fmt: skip
        result = dataclasses.replace(walked, verified_from_seq=start.seq)
    record_chain_check(result)
    if not result.ok:
        logger.error(
            "audit chain verification from the checkpoint at seq %s failed at seq %s: %s",
            start.seq,
            result.first_bad_seq,
            result.reason,
            extra={"first_bad_seq": result.first_bad_seq},
        )
    elif checkpoint:
        record_checkpoint(session, result)
    return result
