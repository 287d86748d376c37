"""The audit chain service: the only code that writes audit events, and the verifier.

Appends serialize so the chain never forks: on PostgreSQL each writing transaction takes a transaction-scoped
advisory lock, and on SQLite the write session's ``BEGIN IMMEDIATE`` holds the database write lock. A unique
``prev_hash`` column backs this up inside the database. Hashing rules are in ``admin_api.core.chain``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from admin_api.core.chain import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerification,
    canonical_json,
    compute_hash,
    verify_records,
)
from admin_api.db import SQLITE_BEGIN_OPTION
from admin_api.errors import AuditChainError
from admin_api.models import AuditEvent
from admin_api.services.metrics import record_chain_check

__all__ = [
    "SYSTEM_ROLE",
    "ChainWriter",
    "append_audit_event",
    "get_chain_head",
    "iter_audit_records",
    "job_target",
    "list_audit_events",
    "lock_chain",
    "next_audit_seq",
    "query_audit_events",
    "site_target",
    "verify_chain",
]

logger = logging.getLogger(__name__)

SYSTEM_ROLE = "system"
"""Role recorded for actions of the service itself, such as the reconciler."""

_CHAIN_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.audit_events'))"
_MAX_LENGTHS = {"actor": 255, "role": 64, "action": 64, "target": 255}
_VERIFY_BATCH_SIZE = 1000


def job_target(job_id: str) -> str:
    """Return the audit target of a job, ``job:<FLARE job id>``."""
    return f"job:{job_id}"


def site_target(site: str) -> str:
    """Return the audit target of a site, ``site:<name>``."""
    return f"site:{site}"


def lock_chain(session: Session) -> None:
    """Make this transaction the only one writing the chain until it ends.

    Call it first in a transaction that reads state and then appends, so the reads see every earlier commit.

    Raises:
        AuditChainError: On SQLite, the session was not opened with ``Database.write_session()``.
    """
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        session.execute(text(_CHAIN_LOCK_SQL))
    elif dialect == "sqlite" and connection.get_execution_options().get(SQLITE_BEGIN_OPTION) != "IMMEDIATE":
        raise AuditChainError(
            "audit events on SQLite must be written in a session from Database.write_session(), whose "
            "BEGIN IMMEDIATE serializes writers; this session began a deferred transaction"
        )


def _check_field(name: str, value: str | None, *, required: bool = True) -> None:
    if value is None:
        if required:
            raise AuditChainError(f"audit event field {name} is missing; pass a non-empty string")
        return
    if not value or len(value) > _MAX_LENGTHS[name]:
        raise AuditChainError(
            f"audit event field {name} has {len(value)} characters; it needs 1 to {_MAX_LENGTHS[name]}"
        )
    if "\x00" in value:
        raise AuditChainError(f"audit event field {name} contains a NUL character; remove it")


def _normalize_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """Return details exactly as they will read back from the database's JSON column."""
    try:
        return json.loads(canonical_json(dict(details)))  # type: ignore[no-any-return]
    except ValueError as exc:
        raise AuditChainError(f"audit event details are not storable JSON: {exc}") from exc


def _checked_details(
    *,
    occurred_at: datetime,
    actor: str,
    role: str | None,
    action: str,
    target: str,
    details: Mapping[str, Any],
) -> dict[str, Any]:
    """Check an audit event's fields and return its details as they will be stored.

    Raises:
        AuditChainError: A field is missing, too long or not storable.
    """
    for name, value in (("actor", actor), ("action", action), ("target", target)):
        _check_field(name, value)
    _check_field("role", role, required=False)
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise AuditChainError(f"audit event occurred_at {occurred_at.isoformat()} has no timezone; pass UTC")
    return _normalize_details(details)


class ChainWriter:
    """Appends audit events within one transaction, reading the chain head only once.

    Creating a writer takes the chain lock (see ``lock_chain``) and reads the head. Each ``append`` then hashes over
    the event appended just before it and adds the new event to the session without flushing, so the next flush or
    the commit inserts the pending events together. While a writer is in use, append to the chain of its transaction
    only through it, because it does not read the head again.

    Args:
        session: A write session; see ``lock_chain``.

    Raises:
        AuditChainError: On SQLite, the session was not opened with ``Database.write_session()``.
    """

    def __init__(self, session: Session) -> None:
        lock_chain(session)
        head = get_chain_head(session)
        self._session = session
        self._seq, self._hash = (0, GENESIS_HASH) if head is None else head

    @property
    def next_seq(self) -> int:
        """The seq that the next appended event gets."""
        return self._seq + 1

    def append(
        self,
        *,
        occurred_at: datetime,
        actor: str,
        role: str | None,
        action: str,
        target: str,
        details: Mapping[str, Any],
    ) -> AuditEvent:
        """Add one audit event to the chain without flushing it. The arguments are those of ``append_audit_event``.

        Returns:
            The new audit event, with ``seq`` and ``hash`` set.

        Raises:
            AuditChainError: A field is missing, too long or not storable. The chain is unchanged.
        """
        stored_details = _checked_details(
            occurred_at=occurred_at, actor=actor, role=role, action=action, target=target, details=details
        )
        seq = self._seq + 1
        prev_hash = self._hash
        digest = compute_hash(
            seq=seq,
            occurred_at=occurred_at,
            actor=actor,
            role=role,
            action=action,
            target=target,
            details=stored_details,
            prev_hash=prev_hash,
        )
        event = AuditEvent(
            seq=seq,
            occurred_at=occurred_at,
            actor=actor,
            role=role,
            action=action,
            target=target,
            details=stored_details,
            prev_hash=prev_hash,
            hash=digest,
        )
        self._session.add(event)
        self._seq, self._hash = seq, digest
        return event


def append_audit_event(
    session: Session,
    *,
    occurred_at: datetime,
    actor: str,
    role: str | None,
    action: str,
    target: str,
    details: Mapping[str, Any],
) -> AuditEvent:
    """Append one audit event to the chain inside the caller's transaction; the caller commits.

    To append many events in one transaction, a ``ChainWriter`` takes the lock and reads the head only once.

    Args:
        session: A write session; see ``lock_chain``.
        occurred_at: When the audited action happened; must be timezone-aware.
        actor: Who acted, for example a FLARE user name or ``consortia-reconciler``.
        role: The actor's role, or None when unknown.
        action: What happened, for example ``job.submitted``.
        target: What it happened to, from ``job_target`` or ``site_target``.
        details: JSON object with the facts of the action.

    Returns:
        The new audit event, flushed so ``seq`` and ``hash`` are set.

    Raises:
        AuditChainError: A field is missing, too long or not storable.
    """
    event = ChainWriter(session).append(
        occurred_at=occurred_at, actor=actor, role=role, action=action, target=target, details=details
    )
    session.flush()
    return event


def get_chain_head(session: Session) -> tuple[int, str] | None:
    """Return ``(seq, hash)`` of the newest audit event, or None while the chain is empty."""
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return None if row is None else (row.seq, row.hash)


def next_audit_seq(session: Session) -> int:
    """Return the seq the next audit event appended in this transaction gets.

    Only meaningful after ``lock_chain``: event handlers use it to record the seq of the audit event that ingestion
    appends right after them.
    """
    head = get_chain_head(session)
    return 1 if head is None else head[0] + 1


def query_audit_events(
    session: Session,
    *,
    action: str | None = None,
    actor: str | None = None,
    target: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Return one page of audit events in seq order, filtered by exact action, actor and target, and the total."""
    statement = select(AuditEvent)
    if action is not None:
        statement = statement.where(AuditEvent.action == action)
    if actor is not None:
        statement = statement.where(AuditEvent.actor == actor)
    if target is not None:
        statement = statement.where(AuditEvent.target == target)
    count = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    events = list(session.scalars(statement.order_by(AuditEvent.seq).limit(limit).offset(offset)))
    return events, count


def list_audit_events(session: Session, *, target: str) -> list[AuditEvent]:
    """Return the audit events of one target in seq order."""
    return list(session.scalars(select(AuditEvent).where(AuditEvent.target == target).order_by(AuditEvent.seq)))


def _to_record(event: AuditEvent) -> AuditRecord:
    return AuditRecord(
        seq=event.seq,
        occurred_at=event.occurred_at,
        actor=event.actor,
        role=event.role,
        action=event.action,
        target=event.target,
        details=event.details,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


def iter_audit_records(session: Session, *, from_seq: int = 1) -> Iterator[AuditRecord]:
    """Yield the audit events from ``from_seq`` on as chain records, in seq order, in batches."""
    statement = (
        select(AuditEvent)
        .where(AuditEvent.seq >= from_seq)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=_VERIFY_BATCH_SIZE)
    )
    for event in session.scalars(statement):
        yield _to_record(event)


def verify_chain(session: Session) -> ChainVerification:
    """Walk the whole audit chain in seq order and report the first event that breaks it.

    Returns:
        The result; ``first_bad_seq`` names the first bad position when ``ok`` is False.
    """
    result = verify_records(iter_audit_records(session))
    record_chain_check(result)
    if not result.ok:
        logger.error(
            "audit chain verification failed at seq %s: %s",
            result.first_bad_seq,
            result.reason,
            extra={"first_bad_seq": result.first_bad_seq},
        )
    return result
