"""Audit hash chain: canonical encoding, row hashes and verification.

Each audit event stores ``hash = SHA-256(prev_hash || canonical_json(fields))`` as lowercase hex, where ``fields`` are
``seq, occurred_at, actor, role, action, target, details, prev_hash`` (every column except ``hash``) and ``||`` joins
the ASCII bytes of ``prev_hash`` with the canonical JSON bytes. Canonical JSON has sorted keys, no spaces, UTF-8
without escapes, and timestamps as ISO 8601 UTC with microseconds (``2026-12-04T19:14:21.000000Z``). The first event
has ``seq`` 1 and ``prev_hash`` ``GENESIS_HASH``.

A chain proves order and content, not completeness at the tail: removing the newest events leaves a valid shorter
chain. Reports therefore carry the head hash, so a later head that does not extend it shows truncation.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "GENESIS_HASH",
    "AuditRecord",
    "ChainVerification",
    "canonical_json",
    "compute_hash",
    "format_timestamp",
    "verify_records",
]

GENESIS_HASH = "0" * 64
"""prev_hash of the first audit event."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event as stored: the hashed fields plus ``hash``."""

    seq: int
    occurred_at: datetime
    actor: str
    role: str | None
    action: str
    target: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """Result of walking an audit chain.

    Attributes:
        ok: True when every event links to its predecessor and matches its hash.
        num_events: Events checked, up to and including the first bad one.
        head_seq: seq of the last event checked, or None for an empty chain.
        head_hash: hash stored on the last event checked, or None for an empty chain.
        first_bad_seq: seq expected at the first bad position, or None when the chain is valid.
        reason: What was wrong at ``first_bad_seq``, or None when the chain is valid.
        verified_from_seq: seq of the verified checkpoint the walk started at, or None for a walk from seq 1.
    """

    ok: bool
    num_events: int
    head_seq: int | None = None
    head_hash: str | None = None
    first_bad_seq: int | None = None
    reason: str | None = field(default=None)
    verified_from_seq: int | None = None


def format_timestamp(value: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with microseconds, for example ``2026-12-04T19:14:21.000000Z``.

    Raises:
        ValueError: ``value`` has no timezone, so its instant is unknown.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"timestamp {value.isoformat()} has no timezone; pass an aware datetime in UTC")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reject_non_finite(value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"audit details contain the non-finite number {value!r}; JSON has no NaN or Infinity")
    if isinstance(value, dict):
        for item in value.values():
            _reject_non_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_non_finite(item)


def canonical_json(value: Any) -> bytes:
    """Encode a JSON value canonically: sorted keys, no spaces, UTF-8 without escapes.

    Raises:
        ValueError: The value contains NaN or Infinity, a lone surrogate, or something JSON cannot encode.
    """
    _reject_non_finite(value)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except (TypeError, UnicodeEncodeError) as exc:
        raise ValueError(f"audit details cannot be encoded as canonical JSON: {exc}") from exc


def compute_hash(
    *,
    seq: int,
    occurred_at: datetime,
    actor: str,
    role: str | None,
    action: str,
    target: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """Compute an audit event's hash from its fields and its predecessor's hash.

    Returns:
        The SHA-256 digest as 64 lowercase hex characters.
    """
    fields = {
        "seq": seq,
        "occurred_at": format_timestamp(occurred_at),
        "actor": actor,
        "role": role,
        "action": action,
        "target": target,
        "details": dict(details),
        "prev_hash": prev_hash,
    }
    digest = hashlib.sha256()
    digest.update(prev_hash.encode("ascii"))
    digest.update(canonical_json(fields))
    return digest.hexdigest()


def _check_record(record: AuditRecord, expected_seq: int, expected_prev: str) -> str | None:
    """Return why ``record`` breaks the chain, or None when it is valid."""
    if record.seq != expected_seq:
        return f"expected seq {expected_seq} but found seq {record.seq}: an event is missing or out of order"
    if record.prev_hash != expected_prev:
        return f"prev_hash {record.prev_hash!r} does not match the previous event's hash {expected_prev!r}"
    try:
        recomputed = compute_hash(
            seq=record.seq,
            occurred_at=record.occurred_at,
            actor=record.actor,
            role=record.role,
            action=record.action,
            target=record.target,
            details=record.details,
            prev_hash=record.prev_hash,
        )
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        return f"fields cannot be hashed: {exc}"
    if recomputed != record.hash:
        return f"stored hash {record.hash!r} does not match the recomputed hash {recomputed!r}: the event was altered"
    return None


def verify_records(
    records: Iterable[AuditRecord], *, start_seq: int = 1, start_prev_hash: str = GENESIS_HASH
) -> ChainVerification:
    """Walk audit events in seq order and report the first one that breaks the chain.

    Args:
        records: Audit events ordered by seq, starting at ``start_seq``.
        start_seq: seq of the first record; 1 for the whole chain.
        start_prev_hash: ``prev_hash`` the first record must have; ``GENESIS_HASH`` for the whole chain, else the
            hash of the event before ``start_seq``, known from an earlier verification.

    Returns:
        The verification result. ``first_bad_seq`` is the seq expected at the first bad position.
    """
    expected_seq = start_seq
    expected_prev = start_prev_hash
    num_events = 0
    head: AuditRecord | None = None

    for record in records:
        num_events += 1
        reason = _check_record(record, expected_seq, expected_prev)
        if reason is not None:
            return ChainVerification(
                ok=False,
                num_events=num_events,
                head_seq=record.seq,
                head_hash=record.hash,
                first_bad_seq=expected_seq,
                reason=reason,
            )
        head = record
        expected_seq += 1
        expected_prev = record.hash

    if head is None:
        return ChainVerification(ok=True, num_events=0)
    return ChainVerification(ok=True, num_events=num_events, head_seq=head.seq, head_hash=head.hash)
