"""Audit ingest and report generation of the admin service at 100k and 1M audit events, on SQLite and PostgreSQL.

For each database the script measures, in this order:

1. event ingest through the service layer: ``ingest_events`` with batches of validated job events (round, contribution
   and status events, each stored with its audit event and idempotency record), in events/s;
2. event ingest through HTTP: a ``python -m admin_api`` process on a free 127.0.0.1 port, posting the same kind of
   events one by one (``POST /api/v1/events``) and in batches of 100 (``POST /api/v1/events:batch``);
3. report generation at each chain size. The chain is filled up to the size with ``append_audit_event``, the
   service's append path (chain lock, head read, hash, insert), in transactions of ``--fill-batch`` rows. Then the
   script times a bare ``verify_chain``, a job report as JSON, CSV and PDF, and a period report over the whole range.
   Each report verifies the full chain and is signed.

Filling stops at ``--fill-time-limit-s`` per database. A size not reached is reported with the measured fill rate and
an extrapolated fill time, labelled as an extrapolation, and no report time.

PostgreSQL runs in a schema of its own, ``bench_<random hex>``, dropped at the end; SQLite in a temporary folder.
Usage: ``python -m benchmarks.audit_ingest [--sizes 100000,1000000] [--databases sqlite,postgresql]``. Results go to
the "Audit ingest and reports" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
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
from sqlalchemy.engine import make_url

from admin_api.db import Database
from admin_api.schemas.events import EventCreate
from admin_api.services.audit import append_audit_event, verify_chain
from admin_api.services.ingest import ingest_events
from admin_api.services.reports import render_signed_job_report, render_signed_period_report
from admin_api.services.signing import ReportSigner

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Audit ingest and reports"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
EVENT_TOKEN = "bench-evt-" + secrets.token_urlsafe(24)
API_TOKEN = "bench-api-" + secrets.token_urlsafe(24)
SITES = ("hospital-a", "hospital-b", "hospital-c")
START = datetime(2026, 1, 1, tzinfo=UTC)
_EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[EventCreate])
REPORT_COLUMNS = ("verify_chain", "job json", "job csv", "job pdf", "period json")


@dataclass
class DatabaseResult:
    """Measurements on one database."""

    name: str
    service_rate: float = 0.0
    http_single_rate: float = 0.0
    http_batch_rate: float = 0.0
    fill_rates: list[tuple[int, float]] = field(default_factory=list)
    fill_seconds: float = 0.0
    filled: int = 0
    reports: dict[int, dict[str, float]] = field(default_factory=dict)
    not_reached: dict[int, float] = field(default_factory=dict)
    reports_at_limit: tuple[int, dict[str, float]] | None = None
    """Report times at the chain size filling reached when the time limit stopped it short of a target."""


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


def count_events(database: Database) -> int:
    with database.session() as session:
        return verify_chain(session).num_events


def fill_chain(database: Database, target: int, batch: int, deadline: float, done: int) -> tuple[int, float]:
    """Append filler audit events until ``target`` exist or ``deadline`` passes; return the count and the rate."""
    started = time.perf_counter()
    appended = 0
    occurred_at = START + timedelta(days=30)
    while done + appended < target and time.monotonic() < deadline:
        with database.write_session() as session:
            for _ in range(min(batch, target - done - appended)):
                append_audit_event(
                    session,
                    occurred_at=occurred_at,
                    actor="bench",
                    role="system",
                    action="bench.filler",
                    target="bench:filler",
                    details={"n": done + appended, "note": "filler event of the audit ingest benchmark"},
                )
                appended += 1
            session.commit()
    return done + appended, appended / max(time.perf_counter() - started, 1e-9)


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure_reports(database: Database, signer: ReportSigner) -> dict[str, float]:
    times: dict[str, float] = {}
    with database.session() as session:
        times["verify_chain"] = timed(lambda: verify_chain(session))
        for fmt in ("json", "csv", "pdf"):
            times[f"job {fmt}"] = timed(lambda: render_signed_job_report(session, "svc-0", fmt, signer))  # noqa: B023
        end = START + timedelta(days=60)
        times["period json"] = timed(lambda: render_signed_period_report(session, START, end, "json", signer))
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
        yield f"sqlite:///{scratch}/bench.sqlite"
    else:
        with postgres_url(postgres_base) as url:
            yield url


def run_database(name: str, args: argparse.Namespace, scratch: Path) -> DatabaseResult:
    result = DatabaseResult(name=name)
    signer = ReportSigner(scratch / "report_signing_key.pem")
    with database_url(name, scratch, args.postgres_url) as url:
        database = Database(url)
        database.upgrade()
        try:
            result.service_rate = measure_service_ingest(database, args.ingest_events)
            print(f"{name}: service ingest {result.service_rate:.0f} events/s", flush=True)
            with admin_service(url, scratch / "report_signing_key.pem") as base:
                result.http_single_rate, result.http_batch_rate = measure_http_ingest(base, args.http_events)
            print(f"{name}: HTTP ingest {result.http_single_rate:.0f} (single), {result.http_batch_rate:.0f} (batch)")
            done = count_events(database)
            deadline = time.monotonic() + args.fill_time_limit_s
            for size in args.sizes:
                before, started = done, time.perf_counter()
                done, rate = fill_chain(database, size, args.fill_batch, deadline, done)
                result.fill_seconds += time.perf_counter() - started
                result.filled += done - before
                result.fill_rates.append((done, rate))
                print(f"{name}: {done} audit events, fill rate {rate:.0f} events/s", flush=True)
                if done < size:
                    result.not_reached[size] = rate
                    if result.reports_at_limit is None and done not in result.reports:
                        result.reports_at_limit = (done, measure_reports(database, signer))
                        print(f"{name}: reports at {done} (time limit): {result.reports_at_limit[1]}", flush=True)
                    continue
                result.reports[size] = measure_reports(database, signer)
                print(f"{name}: reports at {size}: {result.reports[size]}", flush=True)
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
            f"Report generation with N audit events in the chain (filled through `append_audit_event` in transactions of "
            f"{args.fill_batch:,} rows, at most {args.fill_time_limit_s:.0f} s of filling per database). Every report "
            "verifies the whole chain, so its time grows with N; the job report covers one 10-round job, the period "
            "report the whole time range. Times in seconds."
        ),
        "",
        "| database | N | fill rate (events/s) | verify_chain | job JSON | job CSV | job PDF | period JSON |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for size in args.sizes:
            if size in result.reports:
                times = result.reports[size]
                rate = next(rate for done, rate in result.fill_rates if done >= size)
                cells = " | ".join(
                    f"{times[key]:.1f}" for key in ("verify_chain", "job json", "job csv", "job pdf", "period json")
                )
                lines.append(f"| {result.name} | {size:,} | {rate:,.0f} | {cells} |")
            elif size in result.not_reached:
                if result.reports_at_limit is not None and size == min(result.not_reached):
                    reached_at, times = result.reports_at_limit
                    cells = " | ".join(f"{times[key]:.1f}" for key in REPORT_COLUMNS)
                    overall = result.filled / result.fill_seconds if result.fill_seconds else 0.0
                    lines.append(f"| {result.name} | {reached_at:,} (time limit) | {overall:,.0f} | {cells} |")
                # The overall rate, because the last fill may have had no time left at all.
                rate = result.filled / result.fill_seconds if result.fill_seconds else 0.0
                reached = max(done for done, _ in result.fill_rates)
                minutes = (size - reached) / rate / 60 if rate else float("inf")
                lines.append(
                    f"| {result.name} | {size:,} | {rate:,.0f} | not reached: filling stopped at the time limit with "
                    f"{reached:,} events. Extrapolation, not measured: {minutes:.0f} more minutes of filling at this "
                    "rate; report times grow about linearly with N, so scale the last measured row by N over its size | | | | |"
                )
    return "\n".join(lines) + "\n"


def write_section(text: str, doc: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace this benchmark's section of ``docs/benchmarks.md`` and keep the others."""
    content = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"{re.escape(SECTION)}\n.*?(?=\n## |\Z)", re.DOTALL)
    content = pattern.sub(text.rstrip() + "\n", content) if SECTION in content else content.rstrip() + "\n\n" + text
    doc.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated chain sizes to report at")
    parser.add_argument("--databases", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL, help="PostgreSQL database URL")
    parser.add_argument("--ingest-events", type=int, default=5000, help="events for the service-layer ingest")
    parser.add_argument("--http-events", type=int, default=1000, help="events for each HTTP ingest measurement")
    parser.add_argument("--fill-batch", type=int, default=2000, help="audit events per fill transaction")
    parser.add_argument("--fill-time-limit-s", type=float, default=600.0, help="seconds of filling per database")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of updating the doc")
    args = parser.parse_args()
    args.sizes = sorted(int(size) for size in args.sizes.split(","))

    results = []
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as scratch:
        for name in args.databases.split(","):
            results.append(run_database(name, args, Path(scratch)))
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    section = render_section(results, args, load)
    print(section)
    if not args.no_write:
        write_section(section)


if __name__ == "__main__":
    main()
