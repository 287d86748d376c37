"""Batch ingestion takes the chain lock once and reads each row once, with the same results as one event at a time."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from admin_test_support import EventFactory
from pydantic import TypeAdapter
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select, text

from admin_api.db import Database, upgrade
from admin_api.errors import EventConflictError
from admin_api.models import AuditEvent, Base, IngestedEvent
from admin_api.schemas.events import EventCreate
from admin_api.services import event_handlers, jobs
from admin_api.services import ingest as ingest_service
from admin_api.services.audit import get_chain_head, verify_chain
from admin_api.services.ingest import ingest_events

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[EventCreate])
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SITES = ("hospital-a", "hospital-b", "hospital-c")

# Statements per event of a 10-round, 3-site job ingested as one batch of 53 events, measured: 0.42 on PostgreSQL
# and 2.7 on SQLite. SQLAlchemy inserts a flush's new rows of one table in one statement on PostgreSQL, but one row
# per statement on SQLite. One event per transaction costs 11.2 on both (12.2 on PostgreSQL before this change).
MAX_STATEMENTS_PER_BATCHED_EVENT = {"sqlite": 3.0, "postgresql": 0.6}
# The last 41 events of such a job in a second batch, measured: 0.78 on PostgreSQL and 3.1 on SQLite. Each round's
# rows are read in one query. One query per site and row gave 5.2 on PostgreSQL.
MAX_STATEMENTS_PER_CONTINUED_EVENT = {"sqlite": 3.5, "postgresql": 1.2}


def at(seconds: int) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


def job_events(make_event: EventFactory, job_id: str, num_rounds: int = 10) -> list[dict[str, Any]]:
    """Return the events of one job with three sites, as the FLARE server's forwarder sends them."""
    events = [
        make_event("job.submitted", job_id=job_id, occurred_at=at(0)),
        make_event(
            "job.started", job_id=job_id, occurred_at=at(1), payload={"sites": list(SITES), "num_rounds": num_rounds}
        ),
    ]
    for number in range(num_rounds):
        second = 2 + number * 5
        sites = {"num_rounds": num_rounds, "sites": list(SITES)}
        events.append(make_event("round.started", job_id=job_id, round=number, occurred_at=at(second), payload=sites))
        for site in SITES:
            events.append(
                make_event("contribution.accepted", job_id=job_id, site=site, round=number, occurred_at=at(second + 1))
            )
        events.append(make_event("round.completed", job_id=job_id, round=number, occurred_at=at(second + 2)))
    events.append(make_event("job.finished", job_id=job_id, occurred_at=at(2 + num_rounds * 5)))
    return events


def mixed_events(make_event: EventFactory) -> list[dict[str, Any]]:
    """Return events of every kind that touch the same rows more than once, with replays and a late status."""
    contribution = make_event("contribution.accepted", job_id="job-1", site="hospital-a", round=0, occurred_at=at(4))
    privacy = make_event(
        "privacy.spent",
        job_id="job-1",
        site="hospital-b",
        round=0,
        occurred_at=at(6),
        payload={"epsilon": 0.5, "delta": 1e-5, "mechanism": "dp-sgd"},
    )
    return [
        make_event("site.joined", site="hospital-a", occurred_at=at(0), payload={"org": "hospital_a"}),
        make_event("round.started", job_id="job-1", round=0, occurred_at=at(2)),
        make_event("job.submitted", job_id="job-1", occurred_at=at(1)),
        make_event("job.started", job_id="job-1", occurred_at=at(3)),
        contribution,
        contribution,
        make_event("contribution.rejected", job_id="job-1", site="hospital-b", round=0, occurred_at=at(5)),
        make_event("contribution.accepted", job_id="job-1", site="hospital-b", round=0, occurred_at=at(4)),
        privacy,
        {**privacy, "event_id": str(uuid.uuid4()), "payload": {**privacy["payload"], "epsilon": 0.75}},
        make_event(
            "privacy.spent",
            job_id="job-1",
            site=None,
            round=0,
            occurred_at=at(7),
            payload={"epsilon": 1.0, "delta": 1e-6, "mechanism": "dp-fedavg"},
        ),
        make_event(
            "round.completed",
            job_id="job-1",
            round=0,
            occurred_at=at(8),
            payload={
                "num_accepted": 1,
                "num_rejected": 1,
                "global_metrics": {"loss": 0.3},
                "site_metrics": {"hospital-a": {"loss": 0.2}, "hospital-d": {"loss": 0.4}},
            },
        ),
        make_event("site.joined", job_id="job-2", site="hospital-d", occurred_at=at(9), payload={"org": "hospital_d"}),
        make_event("round.started", job_id="job-2", round=0, occurred_at=at(10)),
        make_event("job.finished", job_id="job-1", occurred_at=at(11)),
        make_event("job.started", job_id="job-1", occurred_at=at(12)),
        make_event("site.left", site="hospital-a", occurred_at=at(13)),
        make_event("site.joined", site="hospital-a", occurred_at=at(1)),
        make_event(
            "site.joined",
            type="kit.issued",
            job_id=None,
            site="hospital-c",
            round=None,
            actor="it-operator",
            occurred_at=at(14),
            payload={
                "participant": "hospital-c",
                "role": "site",
                "certificate_fingerprint": "AB:CD",
                "expires_at": "2027-11-29T20:05:57+00:00",
            },
        ),
        contribution,
    ]


@pytest.fixture(params=DATABASES)
def two_databases(
    request: pytest.FixtureRequest, tmp_path: Any, postgres_schemas: Any
) -> Iterator[tuple[Database, Database]]:
    """Two empty, migrated databases of the same kind."""
    if request.param == "sqlite":
        urls = [f"sqlite:///{tmp_path}/{name}.sqlite" for name in ("first", "second")]
    else:
        if postgres_schemas.unavailable_reason is not None:
            pytest.skip(postgres_schemas.unavailable_reason)
        urls = [postgres_schemas.create(), postgres_schemas.create()]
    for url in urls:
        upgrade(url)
    databases = (Database(urls[0]), Database(urls[1]))
    yield databases
    for database in databases:
        database.dispose()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fix the service's clock, so the same events give the same rows and hashes in two databases."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    for module in (ingest_service, jobs, event_handlers):
        monkeypatch.setattr(module, "utc_now", lambda: now)


def table_rows(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    with database.session() as session:
        return {
            table.name: [tuple(row) for row in session.execute(table.select().order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }


@contextmanager
def count_statements(database: Database) -> Iterator[list[str]]:
    statements: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(database.engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        sqlalchemy_event.remove(database.engine, "before_cursor_execute", before)


def ingest(database: Database, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with database.write_session() as session:
        receipt = ingest_events(session, EVENTS.validate_python(events))
    return [result.model_dump(mode="json") for result in receipt.results]


@pytest.mark.usefixtures("frozen_clock")
def test_batch_matches_one_by_one(two_databases: tuple[Database, Database], make_event: EventFactory) -> None:
    batched, single = two_databases
    events = mixed_events(make_event)

    batch_receipts = ingest(batched, events)
    single_receipts = [receipt for event in events for receipt in ingest(single, [event])]

    assert batch_receipts == single_receipts
    assert [receipt["duplicate"] for receipt in batch_receipts].count(True) == 2
    batch_rows, single_rows = table_rows(batched), table_rows(single)
    assert len(batch_rows["audit_events"]) == len(events) - 2
    assert batch_rows["audit_events"] == single_rows["audit_events"]
    assert batch_rows == single_rows
    for database in two_databases:
        with database.session() as session:
            assert verify_chain(session).ok


def test_batch_after_batch_matches_one_batch(
    two_databases: tuple[Database, Database], make_event: EventFactory, frozen_clock: None
) -> None:
    """A job whose events span batches reads its earlier rows from the database and merges into them."""
    whole, split = two_databases
    events = job_events(make_event, "job-span", num_rounds=3) + mixed_events(make_event)
    ingest(whole, events)
    for offset in range(0, len(events), 7):
        ingest(split, events[offset : offset + 7])
    assert table_rows(whole) == table_rows(split)


def test_batch_statements_bounded(database: Database, make_event: EventFactory) -> None:
    events = job_events(make_event, "job-count")
    with count_statements(database) as statements:
        ingest(database, events)

    assert len(statements) / len(events) <= MAX_STATEMENTS_PER_BATCHED_EVENT[database.dialect_name], statements
    locks = [statement for statement in statements if "pg_advisory_xact_lock" in statement]
    assert len(locks) == (1 if database.dialect_name == "postgresql" else 0)
    head_reads = [statement for statement in statements if statement.lstrip().startswith("SELECT audit_events.seq")]
    assert len(head_reads) == 1


def test_continued_job_statements_bounded(database: Database, make_event: EventFactory) -> None:
    """Events of a job recorded by an earlier request read each of its rows once, not once per event."""
    events = job_events(make_event, "job-continued")
    ingest(database, events[:12])
    rest = events[12:]
    with count_statements(database) as statements:
        ingest(database, rest)
    job_reads = [statement for statement in statements if statement.lstrip().startswith("SELECT jobs.")]
    assert len(job_reads) == 1
    assert len(statements) / len(rest) <= MAX_STATEMENTS_PER_CONTINUED_EVENT[database.dialect_name], statements


def test_single_event_takes_lock_once(database: Database, make_event: EventFactory) -> None:
    ingest(database, [make_event("job.submitted")])
    with count_statements(database) as statements:
        ingest(database, [make_event("contribution.accepted")])
    locks = [statement for statement in statements if "pg_advisory_xact_lock" in statement]
    assert len(locks) == (1 if database.dialect_name == "postgresql" else 0)


def test_conflict_in_batch_writes_nothing(database: Database, make_event: EventFactory) -> None:
    recorded = job_events(make_event, "job-kept", num_rounds=1)
    ingest(database, recorded)
    with database.session() as session:
        head = get_chain_head(session)
    conflicting = {**recorded[0], "payload": {**recorded[0]["payload"], "name": "changed"}}
    batch = [*job_events(make_event, "job-dropped", num_rounds=1), recorded[1], conflicting]

    with pytest.raises(EventConflictError):
        ingest(database, batch)

    with database.session() as session:
        assert get_chain_head(session) == head
        assert session.scalar(select(func.count()).select_from(IngestedEvent)) == len(recorded)
        assert verify_chain(session).num_events == len(recorded)
    assert ingest(database, recorded)[0]["duplicate"] is True


def test_tampered_batch_fails_verification(database: Database, make_event: EventFactory) -> None:
    ingest(database, job_events(make_event, "job-tampered", num_rounds=2))
    with database.write_engine.begin() as connection:
        if database.dialect_name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_reject_update"))
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"))
    with database.session() as session:
        result = verify_chain(session)
    assert not result.ok
    assert result.first_bad_seq == 5


def test_concurrent_batches_keep_chain(database: Database, make_event: EventFactory) -> None:
    num_threads, num_batches = 2, 4
    batches = [
        [job_events(make_event, f"job-{thread}-{number}", num_rounds=2) for number in range(num_batches)]
        for thread in range(num_threads)
    ]
    barrier = threading.Barrier(num_threads)
    errors: list[BaseException] = []

    def write(own: list[list[dict[str, Any]]]) -> None:
        try:
            barrier.wait(timeout=30)
            for events in own:
                ingest(database, events)
        except BaseException as exc:  # noqa: BLE001  # reported below, so one failure does not hang the other
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(own,)) for own in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    total = sum(len(events) for own in batches for events in own)
    with database.session() as session:
        result = verify_chain(session)
        seqs = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
        audit_seqs = sorted(session.scalars(select(IngestedEvent.audit_seq)))
    assert result.ok
    assert result.num_events == total
    assert seqs == list(range(1, total + 1))
    assert audit_seqs == seqs
