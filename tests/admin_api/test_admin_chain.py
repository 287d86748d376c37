"""Tests for the pure audit hash chain in admin_api.core.chain."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin_api.core.chain import (
    GENESIS_HASH,
    AuditRecord,
    canonical_json,
    compute_hash,
    format_timestamp,
    verify_records,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)
entries = st.fixed_dictionaries(
    {
        "occurred_at": st.datetimes(
            min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
        ),
        "actor": st.text(min_size=1, max_size=30),
        "role": st.none() | st.text(min_size=1, max_size=10),
        "action": st.text(min_size=1, max_size=20),
        "target": st.text(min_size=1, max_size=30),
        "details": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    }
)


def build_chain(items: list[dict[str, Any]]) -> list[AuditRecord]:
    records: list[AuditRecord] = []
    prev_hash = GENESIS_HASH
    for seq, item in enumerate(items, start=1):
        digest = compute_hash(seq=seq, prev_hash=prev_hash, **item)
        records.append(AuditRecord(seq=seq, prev_hash=prev_hash, hash=digest, **item))
        prev_hash = digest
    return records


def mutate(value: Any) -> Any:
    """Return a value of the same field that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, dict):
        return {**value, "__tampered__": True}
    if value is None:
        return "tampered"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return ("1" if value[0] == "0" else "0") + value[1:]
    return value + "x"


@settings(max_examples=40, deadline=None)
@given(st.lists(entries, min_size=0, max_size=8))
def test_any_chain_verifies(items: list[dict[str, Any]]) -> None:
    records = build_chain(items)
    result = verify_records(records)
    assert result.ok
    assert result.num_events == len(records)
    assert result.first_bad_seq is None
    if records:
        assert result.head_hash == records[-1].hash
        assert result.head_seq == len(records)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(entries, min_size=1, max_size=6),
    st.data(),
    st.sampled_from([f.name for f in dataclasses.fields(AuditRecord)]),
)
def test_any_single_mutation_detected(items: list[dict[str, Any]], data: st.DataObject, field_name: str) -> None:
    records = build_chain(items)
    index = data.draw(st.integers(min_value=0, max_value=len(records) - 1))
    original = records[index]
    records[index] = dataclasses.replace(original, **{field_name: mutate(getattr(original, field_name))})

    result = verify_records(records)

    assert not result.ok
    assert result.first_bad_seq == original.seq
    assert result.reason


def test_removed_middle_event_detected() -> None:
    records = build_chain([{"occurred_at": datetime(2026, 1, 1, tzinfo=UTC), "actor": "a", "role": None,
                            "action": "x", "target": "job:1", "details": {"n": n}} for n in range(5)])  # fmt: skip
    del records[2]
    result = verify_records(records)
    assert result.first_bad_seq == 3
    assert "expected seq 3 but found seq 4" in (result.reason or "")


def test_empty_chain_ok() -> None:
    result = verify_records([])
    assert result.ok
    assert result.num_events == 0
    assert result.head_hash is None


def test_hash_formula() -> None:
    occurred_at = datetime(2026, 12, 4, 19, 14, 21, tzinfo=UTC)
    fields = {
        "seq": 1,
        "occurred_at": "2026-12-04T19:14:21.000000Z",
        "actor": "lead@hospital-a.org",
        "role": "lead",
        "action": "job.submitted",
        "target": "job:j1",
        "details": {"b": 1, "a": "é"},
        "prev_hash": GENESIS_HASH,
    }
    expected_json = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    expected = hashlib.sha256(GENESIS_HASH.encode("ascii") + expected_json).hexdigest()
    actual = compute_hash(
        seq=1,
        occurred_at=occurred_at,
        actor="lead@hospital-a.org",
        role="lead",
        action="job.submitted",
        target="job:j1",
        details={"b": 1, "a": "é"},
        prev_hash=GENESIS_HASH,
    )
    assert actual == expected


def test_canonical_json_form() -> None:
    assert canonical_json({"b": [1, 2.5], "a": "é", "c": None}) == '{"a":"é","b":[1,2.5],"c":null}'.encode()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_canonical_json_rejects_non_finite(bad: Any) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        canonical_json(bad)


def test_timestamp_normalized_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 12, 4, 21, 0, tzinfo=plus_two)) == "2026-12-04T19:00:00.000000Z"


def test_timestamp_rejects_naive() -> None:
    with pytest.raises(ValueError, match="has no timezone"):
        format_timestamp(datetime(2026, 12, 4, 21, 0))
