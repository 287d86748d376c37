"""Audit ingest and report generation of the admin service at 100k and 1M audit events, on SQLite and PostgreSQL.

For each database the script measures, in this order:

1. event ingest through the service layer: ``ingest_events`` with batches of validated job events (round, contribution
   and status events, each stored with its audit event and idempotency record), in events/s;
2. event ingest through HTTP: a ``python -m admin_api`` process on a free 127.0.0.1 port, posting the same kind of
   events one by one (``POST /api/v1/events``) and in batches of 100 (``POST /api/v1/events:batch``);
3. report generation at each chain size. The chain is filled up to the size by ``bulk_fill_chain``, a setup step
   that is not the service's append path: it computes each row's hash in Python with ``admin_api.core.chain``'s
   ``compute_hash`` and inserts ``--fill-batch`` rows per transaction (``COPY`` on PostgreSQL, ``executemany`` on
   SQLite). Before any report is timed, ``verify_chain`` must accept the filled chain, so a fill that hashed
   differently from the service stops the run. Then the script times a bare ``verify_chain``, the first job report
   (no audit checkpoint yet, so it walks the whole chain and records one), a job report as JSON, CSV and PDF and a
   period report over the whole range from that checkpoint, and a job report after ``NEW_EVENTS`` more events. Each
   size gets a fresh database, so no checkpoint of a smaller size shortens the first walk.

PostgreSQL runs in a schema of its own, ``bench_<random hex>``, dropped at the end; SQLite in a temporary folder.
Usage: ``python -m benchmarks.audit_ingest [--sizes 100000,1000000] [--databases sqlite,postgresql]``. Results go to
the "Audit ingest and reports" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import TypeAdapter
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from admin_api.core.chain import GENESIS_HASH, compute_hash
from admin_api.db import Database
from admin_api.models import AuditEvent
from admin_api.schemas.events import EventCreate
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, get_chain_head, lock_chain, verify_chain
from admin_api.services.ingest import ingest_events
from admin_api.services.reports import render_signed_job_report, render_signed_period_report
from admin_api.services.signing import ReportSigner
from benchmarks._markdown import replace_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Audit ingest and reports"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EVENT_TOKEN = "bench-evt-" + secrets.token_urlsafe(24)
API_TOKEN = "bench-api-" + secrets.token_urlsafe(24)
SITES = ("hospital-a", "hospital-b", "hospital-c")
START = datetime(2026, 1, 1, tzinfo=UTC)
_EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[EventCreate])
REPORT_COLUMNS = (
    "verify_chain",
    "first job json",
    "job json",
    "job csv",
    "job pdf",
    "period json",
    "job json after new",
)
NEW_EVENTS = 1000
"""Audit events appended after the reports from a checkpoint, before the last report."""


@dataclass
class DatabaseResult:
    """Measurements on one database."""

    name: str
    service_rate: float = 0.0
    http_single_rate: float = 0.0
    http_batch_rate: float = 0.0
    fill_rates: dict[int, float] = field(default_factory=dict)
    """Chain size to the bulk fill rate, in events/s, of the rows added to reach it."""
    reports: dict[int, dict[str, float]] = field(default_factory=dict)


def job_events(job_id: str, num_rounds: int, at: datetime) -> list[dict[str, Any]]:
    """Return the events of one job with three sites, as the FLARE server's forwarder sends them."""

    def event(event_type: str, minute: int, **fields: Any) -> dict[str, Any]:
        return {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "type": event_type,
            "occurred_at": (at + timedelta(seconds=minute)).isoformat(),
            "job_id": job_id,
            **fields,
        }

    events = [
        event("job.submitted", 0, payload={"name": "fedavg", "submitter": "lead@hospital-a.org",
                                           "submitter_org": "hospital_a", "submitter_role": "lead"}),
        event("job.started", 1, payload={"sites": list(SITES), "num_rounds": num_rounds}),
    ]  # fmt: skip
    for number in range(num_rounds):
        second = 2 + number * 5
        events.append(
            event("round.started", second, round=number, payload={"num_rounds": num_rounds, "sites": list(SITES)})
        )
        for site in SITES:
            payload = {"num_examples": 1500, "metrics": {"loss": 0.5 - number * 0.01, "roc_auc": 0.7 + number * 0.01}}
            events.append(event("contribution.accepted", second + 1, site=site, round=number, payload=payload))
        global_metrics = {"loss": 0.5 - number * 0.01, "roc_auc": 0.7 + number * 0.01}
        events.append(event("round.completed", second + 2, round=number,
                            payload={"num_accepted": 3, "num_rejected": 0, "global_metrics": global_metrics,
                                     "site_metrics": {}}))  # fmt: skip
    events.append(event("job.finished", 2 + num_rounds * 5, payload={"status": "FINISHED:COMPLETED"}))
    return events


def many_job_events(num_events: int, prefix: str) -> list[dict[str, Any]]:
    """Return at least ``num_events`` events of 10-round jobs with distinct ids."""
    events: list[dict[str, Any]] = []
    index = 0
    while len(events) < num_events:
        events.extend(job_events(f"{prefix}-{index}", 10, START + timedelta(hours=index)))
        index += 1
    return events


def measure_service_ingest(database: Database, num_events: int) -> float:
    events = _EVENTS.validate_python(many_job_events(num_events, "svc"))
    started = time.perf_counter()
    for offset in range(0, len(events), 500):
        with database.write_session() as session:
            ingest_events(session, events[offset : offset + 500])
    return len(events) / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def admin_service(url: str, key_path: Path) -> Iterator[str]:
    """Run the admin service on a free 127.0.0.1 port; stop it by PID afterwards."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONSORTIA_")}
    env.update(
        CONSORTIA_DATABASE_URL=url,
        CONSORTIA_EVENT_TOKEN=EVENT_TOKEN,
        CONSORTIA_API_TOKEN=API_TOKEN,
        CONSORTIA_REPORT_SIGNING_KEY=str(key_path),
    )
    command = [sys.executable, "-m", "admin_api", "--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                stderr = process.stderr.read() if process.stderr is not None else b""
                raise RuntimeError(f"admin service exited with {process.returncode}: {stderr!r}")
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError(f"admin service on port {port} not ready within 60 s")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_http_ingest(base: str, num_events: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {EVENT_TOKEN}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        single = many_job_events(num_events, "http-single")
        started = time.perf_counter()
        for event in single:
            client.post("/api/v1/events", json=event).raise_for_status()
        single_rate = len(single) / (time.perf_counter() - started)

        batched = many_job_events(num_events, "http-batch")
        started = time.perf_counter()
        for offset in range(0, len(batched), 100):
            client.post("/api/v1/events:batch", json=batched[offset : offset + 100]).raise_for_status()
        batch_rate = len(batched) / (time.perf_counter() - started)
    return single_rate, batch_rate


def chain_head(database: Database) -> tuple[int, str]:
    """Return ``(seq, hash)`` of the newest audit event, or ``(0, GENESIS_HASH)`` for an empty chain."""
    with database.session() as session:
        head = get_chain_head(session)
    return (0, GENESIS_HASH) if head is None else head


def filler_rows(first_seq: int, prev_hash: str, count: int) -> list[dict[str, Any]]:
    """Return ``count`` filler audit events from ``first_seq`` on, hashed exactly as ``append_audit_event`` does."""
    rows = []
    base = START + timedelta(days=30)
    for seq in range(first_seq, first_seq + count):
        occurred_at = base + timedelta(milliseconds=seq)
        details = {"n": seq, "note": "filler event of the audit ingest benchmark"}
        fields = {"seq": seq, "occurred_at": occurred_at, "actor": "bench", "role": SYSTEM_ROLE,
                  "action": "bench.filler", "target": "bench:filler", "details": details, "prev_hash": prev_hash}  # fmt: skip
        prev_hash = compute_hash(**fields)
        rows.append({**fields, "hash": prev_hash})
    return rows


def insert_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert audit rows with ``COPY`` on PostgreSQL and one ``executemany`` on SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(AuditEvent.__table__.insert(), rows)
        return
    columns = ("seq", "occurred_at", "actor", "role", "action", "target", "details", "prev_hash", "hash")
    driver_connection = session.connection().connection.driver_connection
    statement = f"COPY audit_events ({', '.join(columns)}) FROM STDIN"
    with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([json.dumps(row[name]) if name == "details" else row[name] for name in columns])


def bulk_fill_chain(database: Database, target: int, batch: int) -> float:
    """Extend the audit chain to ``target`` events in transactions of ``batch`` rows and return the rate in events/s.

    Benchmark setup only. It skips the service's per-event checks, which is safe because the caller runs
    ``verify_chain`` over the result before timing anything.
    """
    seq, prev_hash = chain_head(database)
    added = target - seq
    started = time.perf_counter()
    while seq < target:
        rows = filler_rows(seq + 1, prev_hash, min(batch, target - seq))
        with database.write_session() as session:
            lock_chain(session)
            insert_rows(session, rows)
            session.commit()
        seq, prev_hash = rows[-1]["seq"], rows[-1]["hash"]
    return added / max(time.perf_counter() - started, 1e-9)


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def append_events(database: Database, count: int) -> None:
    """Append ``count`` audit events through ``append_audit_event``, the service's append path, in one transaction."""
    with database.write_session() as session:
        for number in range(count):
            append_audit_event(session, occurred_at=START + timedelta(days=31), actor="bench", role=SYSTEM_ROLE,
                               action="bench.appended", target="bench:appended", details={"n": number})  # fmt: skip
        session.commit()


def measure_reports(database: Database, signer: ReportSigner, size: int) -> dict[str, float]:
    """Time a full ``verify_chain``, the first report, reports from its checkpoint, and one after new events.

    The first report finds no checkpoint, so it walks the whole chain and records the head as one. The reports after
    it walk from that checkpoint.

    Raises:
        RuntimeError: ``verify_chain`` rejected the chain or counted other than ``size`` events.
    """
    end = START + timedelta(days=60)
    renderers: dict[str, Callable[[Session], Any]] = {
        "job json": lambda session: render_signed_job_report(session, "svc-0", "json", signer),
        "job csv": lambda session: render_signed_job_report(session, "svc-0", "csv", signer),
        "job pdf": lambda session: render_signed_job_report(session, "svc-0", "pdf", signer),
        "period json": lambda session: render_signed_period_report(session, START, end, "json", signer),
    }
    times: dict[str, float] = {}
    with database.session() as session:
        started = time.perf_counter()
        verification = verify_chain(session)
        times["verify_chain"] = time.perf_counter() - started
    if not verification.ok or verification.num_events != size:
        raise RuntimeError(
            f"the filled chain is not valid: verify_chain checked {verification.num_events} of {size} events and "
            f"stopped at seq {verification.first_bad_seq}: {verification.reason}"
        )
    steps = [("first job json", "job json"), *((name, name) for name in renderers)]
    for column, renderer in steps:
        with database.session() as session:
            times[column] = timed(lambda: renderers[renderer](session))  # noqa: B023
    append_events(database, NEW_EVENTS)
    with database.session() as session:
        times["job json after new"] = timed(lambda: renderers["job json"](session))
    for column, seconds in times.items():
        print(f"{database.dialect_name} {size}: {column} {seconds:.2f} s", flush=True)
    return times


@contextmanager
def postgres_url(base_url: str) -> Iterator[str]:
    """Create a schema of its own for the benchmark, yield its URL and drop it afterwards."""
    schema = f"bench_{secrets.token_hex(4)}"
    conninfo = make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base_url}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@contextmanager
def database_url(name: str, scratch: Path, postgres_base: str) -> Iterator[str]:
    if name == "sqlite":
        scratch.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{scratch}/bench.sqlite"
    else:
        with postgres_url(postgres_base) as url:
            yield url


def profile_statements(database: Database, num_events: int) -> str:
    """Ingest ``num_events`` events one per transaction and return the SQL statements per event with their mean time.

    The time of a statement is measured around the driver's ``execute``, so it includes the round trip to the server.
    """
    stats: dict[str, list[float]] = {}
    started_at: dict[int, float] = {}

    def before(_conn: Any, cursor: Any, *_args: Any) -> None:
        started_at[id(cursor)] = time.perf_counter()

    def after(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        entry = stats.setdefault(" ".join(statement.split())[:60], [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - started_at.pop(id(cursor))

    events = _EVENTS.validate_python(many_job_events(num_events + 50, "profile"))
    for event in events[:50]:  # warm the caches and the connection pool
        with database.write_session() as session:
            ingest_events(session, [event])
    sqlalchemy_event.listen(database.engine, "before_cursor_execute", before)
    sqlalchemy_event.listen(database.engine, "after_cursor_execute", after)
    started = time.perf_counter()
    for event in events[50 : 50 + num_events]:
        with database.write_session() as session:
            ingest_events(session, [event])
    elapsed_ms = (time.perf_counter() - started) * 1000 / num_events
    sqlalchemy_event.remove(database.engine, "before_cursor_execute", before)
    sqlalchemy_event.remove(database.engine, "after_cursor_execute", after)

    statements = sum(count for count, _ in stats.values()) / num_events
    sql_ms = sum(seconds for _, seconds in stats.values()) * 1000 / num_events
    lines = [
        f"{database.dialect_name}: {elapsed_ms:.1f} ms per event, {statements:.1f} statements, {sql_ms:.1f} ms in SQL"
    ]
    for text_start, (count, seconds) in sorted(stats.items(), key=lambda item: -item[1][1]):
        lines.append(f"  {count / num_events:5.2f} per event, {seconds * 1000 / count:6.2f} ms each: {text_start}")
    return "\n".join(lines)


def run_database(name: str, args: argparse.Namespace, scratch: Path) -> DatabaseResult:
    result = DatabaseResult(name=name)
    signer = ReportSigner(scratch / "report_signing_key.pem")
    with database_url(name, scratch, args.postgres_url) as url:
        database = Database(url)
        database.upgrade()
        try:
            if args.profile_statements:
                print(profile_statements(database, args.profile_statements), flush=True)
                return result
            result.service_rate = measure_service_ingest(database, args.ingest_events)
            print(f"{name}: service ingest {result.service_rate:.0f} events/s", flush=True)
            with admin_service(url, scratch / "report_signing_key.pem") as base:
                result.http_single_rate, result.http_batch_rate = measure_http_ingest(base, args.http_events)
            print(f"{name}: HTTP ingest {result.http_single_rate:.0f} (single), {result.http_batch_rate:.0f} (batch)")
        finally:
            database.dispose()
    for size in args.sizes:
        with database_url(name, scratch / f"chain-{size}", args.postgres_url) as url:
            database = Database(url)
            database.upgrade()
            try:
                with database.write_session() as session:
                    ingest_events(session, _EVENTS.validate_python(job_events("svc-0", 10, START)))
                result.fill_rates[size] = bulk_fill_chain(database, size, args.fill_batch)
                print(f"{name}: {size} audit events, bulk fill {result.fill_rates[size]:.0f} events/s", flush=True)
                result.reports[size] = measure_reports(database, signer, size)
            finally:
                database.dispose()
    return result


def render_section(results: list[DatabaseResult], args: argparse.Namespace, load: str) -> str:
    lines = [
        SECTION,
        "",
        (
            f"`python -m benchmarks.audit_ingest` on {datetime.now().date()}: {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), shared with other work (load average at the end: {load}); "
            f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version} (WAL), PostgreSQL on "
            "127.0.0.1 over TCP. Ingest counts the events of 10-round, 3-site jobs; every event is validated, applied to "
            "the job tables and appended to the audit chain with its idempotency record, in one transaction per request "
            f"or batch. Service-layer ingest used {args.ingest_events:,} events in batches of 500; HTTP ingest "
            f"{args.http_events:,} events each way against one `python -m admin_api` process."
        ),
        "",
        "| database | service layer (events/s) | HTTP, one event per request (events/s) | HTTP, batches of 100 (events/s) |",
        "|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.name} | {result.service_rate:,.0f} | {result.http_single_rate:,.0f} | {result.http_batch_rate:,.0f} |"
        )
    lines += [
        "",
        (
            "Report generation with N audit events in the chain, each N in a fresh database holding one 10-round job "
            "and filler events. The chain was filled for this step only, by `bulk_fill_chain` (hashes from "
            f"`admin_api.core.chain.compute_hash`, {args.fill_batch:,} rows per transaction, `COPY` on PostgreSQL and "
            "`executemany` on SQLite). `verify_chain` accepted all N events before any report was timed. The fill "
            "rate is that setup step's, not the service's. Reports verify from the newest audit checkpoint: the first "
            "report finds none, walks the whole chain and records its head as one; the next reports walk from it. "
            f"The last column is a job report after {NEW_EVENTS:,} more events were appended through "
            "`append_audit_event`. The job report covers one 10-round job, the period report the whole time range. "
            "Times in seconds."
        ),
        "",
        (
            "| database | N | bulk fill (events/s) | full `verify_chain` | first job JSON (full walk) | job JSON "
            f"| job CSV | job PDF | period JSON | job JSON after {NEW_EVENTS:,} new events |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for size, times in sorted(result.reports.items()):
            cells = " | ".join(f"{times[key]:.2f}" for key in REPORT_COLUMNS)
            lines.append(f"| {result.name} | {size:,} | {result.fill_rates[size]:,.0f} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated chain sizes to report at")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL database URL")
    parser.add_argument("--ingest-events", type=int, default=5000, help="events for the service-layer ingest")
    parser.add_argument("--http-events", type=int, default=1000, help="events for each HTTP ingest measurement")
    parser.add_argument("--fill-batch", type=int, default=50_000, help="audit events per bulk fill transaction")
    parser.add_argument(
        "--profile-statements",
        type=int,
        default=0,
        help="only profile the SQL statements of this many single-event ingests per database, and print them",
    )
    parser.add_argument("--no-write", action="store_true", help="print the section instead of updating the doc")
    args = parser.parse_args()
    args.sizes = sorted(int(size) for size in args.sizes.split(","))

    results = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        for name in args.databases.split(","):
            results.append(run_database(name, args, Path(scratch)))
    if args.profile_statements:
        print(f"load average: {' '.join(f'{value:.1f}' for value in os.getloadavg())}")
        return
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    section = render_section(results, args, load)
    print(section)
    if not args.no_write:
        replace_section(ROOT / "docs" / "benchmarks.md", SECTION, section)


if __name__ == "__main__":
    main()
