"""Tests for the audit chain service on SQLite and PostgreSQL: append, verify, tampering, concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from admin_test_support import EventFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from admin_api.core.chain import GENESIS_HASH
from admin_api.db import Database
from admin_api.errors import AuditChainError
from admin_api.models import AuditEvent, IngestedEvent
from admin_api.schemas.events import EventCreate
from admin_api.services.audit import append_audit_event, get_chain_head, verify_chain
from admin_api.services.ingest import ingest_events

NOW = datetime(2026, 12, 4, 19, 14, 21, 123456, tzinfo=UTC)
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(EventCreate)


def append(database: Database, number: int = 0, **overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "occurred_at": NOW,
        "actor": "lead@hospital-a.org",
        "role": "lead",
        "action": "job.submitted",
        "target": "job:j1",
        "details": {"n": number, "loss": 0.1 * number, "note": "ünïcode"},
    }
    fields.update(overrides)
    with database.write_session() as session:
        event = append_audit_event(session, **fields)
        session.commit()
        return event


def verify(database: Database) -> Any:
    with database.session() as session:
        return verify_chain(session)


def test_append_links_chain(database: Database) -> None:
    first = append(database, 1)
    second = append(database, 2)
    assert first.seq == 1
    assert first.prev_hash == GENESIS_HASH
    assert second.seq == 2
    assert second.prev_hash == first.hash
    result = verify(database)
    assert result.ok
    assert result.num_events == 2
    assert result.head_hash == second.hash


def test_stored_fields_read_back(database: Database) -> None:
    stored = append(database, 3)
    with database.session() as session:
        event = session.get(AuditEvent, stored.seq)
        assert event is not None
        assert event.occurred_at == NOW
        assert event.details == {"n": 3, "loss": 0.30000000000000004, "note": "ünïcode"}


def _disable_protection(database: Database) -> None:
    with database.write_engine.begin() as connection:
        if database.dialect_name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_reject_update"))


@pytest.mark.parametrize(
    ("column", "value"),
    [("actor", "'mallory'"), ("details", "'{\"n\": 99}'"), ("hash", "'" + "f" * 64 + "'")],
)
def test_tampered_row_named(database: Database, column: str, value: str) -> None:
    for number in range(1, 6):
        append(database, number)
    assert verify(database).ok
    _disable_protection(database)

    with database.write_engine.begin() as connection:
        connection.execute(text(f"UPDATE audit_events SET {column} = {value} WHERE seq = 3"))

    result = verify(database)
    assert not result.ok
    assert result.first_bad_seq == 3
    assert result.num_events == 3


def test_database_rejects_update(database: Database) -> None:
    append(database, 1)
    with pytest.raises(DatabaseError, match="append-only"), database.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    assert verify(database).ok


def test_database_rejects_delete(database: Database) -> None:
    append(database, 1)
    with pytest.raises(DatabaseError, match="append-only"), database.write_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events"))
    assert verify(database).num_events == 1


@pytest.mark.postgres
def test_postgresql_rejects_truncate(database: Database) -> None:
    if database.dialect_name != "postgresql":
        pytest.skip("TRUNCATE exists only on PostgreSQL")
    append(database, 1)
    with pytest.raises(DatabaseError, match="append-only"), database.write_engine.begin() as connection:
        connection.execute(text("TRUNCATE audit_events"))


def test_sqlite_read_session_rejected(database: Database) -> None:
    if database.dialect_name != "sqlite":
        pytest.skip("only SQLite distinguishes read and write sessions")
    with database.session() as session, pytest.raises(AuditChainError, match="Database.write_session"):
        append_audit_event(session, occurred_at=NOW, actor="a", role=None, action="x", target="job:1", details={})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"actor": ""}, "actor has 0 characters"),
        ({"action": "a" * 65}, "action has 65 characters"),
        ({"occurred_at": datetime(2026, 1, 1)}, "has no timezone"),
        ({"details": {"loss": float("nan")}}, "not storable JSON"),
        ({"target": "job:\x00"}, "NUL character"),
    ],
)
def test_invalid_append_rejected(database: Database, overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(AuditChainError, match=fragment):
        append(database, **overrides)
    with database.session() as session:
        assert get_chain_head(session) is None


def test_concurrent_writers_keep_chain(database: Database, make_event: EventFactory) -> None:
    num_writers = 50
    events = [
        EVENT_ADAPTER.validate_python(
            make_event("contribution.accepted", job_id="job-concurrent", site=f"site-{index % 5}", round=index // 5)
        )
        for index in range(num_writers)
    ]
    barrier = threading.Barrier(num_writers)
    errors: list[BaseException] = []

    def write(event: Any) -> None:
        try:
            barrier.wait(timeout=30)
            with database.write_session() as session:
                ingest_events(session, [event])
        except BaseException as exc:  # noqa: BLE001  # reported below, so one failure does not hang the others
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    result = verify(database)
    assert result.ok
    assert result.num_events == num_writers
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(IngestedEvent)) == num_writers
        seqs = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    assert seqs == list(range(1, num_writers + 1))


# Text that both databases store: no NUL (PostgreSQL rejects it) and no lone surrogates (not valid UTF-8).
storable_text = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(storable_text, inner, max_size=3),
    max_leaves=5,
)
json_documents = st.dictionaries(storable_text, json_values, max_size=4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    details=json_documents,
    occurred_at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
)
def test_stored_chain_verifies(database: Database, details: dict[str, Any], occurred_at: datetime) -> None:
    append(database, details=details, occurred_at=occurred_at)
    assert verify(database).ok
