"""Tests for the reconciler with a fake FLARE job source, and for FlareApiJobSource with a fake FLARE session."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import select

from admin_api.app import create_app
from admin_api.db import Database
from admin_api.errors import FlareSourceError
from admin_api.models import AuditEvent
from admin_api.schemas.events import EventCreate
from admin_api.services.audit import verify_chain
from admin_api.services.ingest import ingest_events
from admin_api.services.jobs import get_job_detail
from admin_api.services.reconciler import (
    RECONCILER_ACTOR,
    FlareApiJobSource,
    ReconcileResult,
    ReconcilerLoop,
    reconcile_once,
)
from admin_api.settings import Settings

JOB_ID = "75852f7d-ea25-4a51-8c2c-046e09dacebd"


def flare_meta(status: str = "SUBMITTED", **overrides: Any) -> dict[str, Any]:
    """Return job meta shaped like FLARE 2.9's detailed list_jobs output."""
    meta: dict[str, Any] = {
        "name": "bc_fedavg_prod",
        "resource_spec": {},
        "min_clients": 2,
        "deploy_map": {"app_server": ["server"], "app_client": ["hospital-a", "hospital-b"]},
        "byoc": False,
        "study": "default",
        "submitter_name": "admin@hq.org",
        "submitter_org": "nvidia",
        "submitter_role": "project_admin",
        "job_folder_name": "tmpx5dtkmel",
        "job_id": JOB_ID,
        "submit_time": 1796411661.116597,
        "submit_time_iso": "2026-12-04T20:14:21.116597+01:00",
        "start_time": "",
        "duration": "N/A",
        "data_storage_format": 2,
        "status": status,
    }
    meta.update(overrides)
    return meta


class FakeSource:
    """FLARE job source that returns a settable list, or raises while ``failing`` is set."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs
        self.failing = False
        self.calls = 0
        self.closed = False

    def list_jobs(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.failing:
            raise FlareSourceError("listing FLARE jobs failed: NoConnection: cannot connect to server")
        return [dict(job) if isinstance(job, dict) else job for job in self.jobs]

    def close(self) -> None:
        self.closed = True


def run_pass(database: Database, source: FakeSource) -> ReconcileResult:
    with database.write_session() as session:
        return reconcile_once(session, source)


def detail(database: Database, job_id: str = JOB_ID) -> Any:
    with database.session() as session:
        return get_job_detail(session, job_id)


def audit_actions(database: Database) -> list[tuple[str, str]]:
    with database.session() as session:
        return [(e.actor, e.action) for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq))]


def test_unknown_job_created(database: Database) -> None:
    result = run_pass(database, FakeSource([flare_meta()]))

    assert result == ReconcileResult(num_seen=1, num_created=1)
    job = detail(database)
    assert job.status == "SUBMITTED"
    assert job.name == "bc_fedavg_prod"
    assert job.submitter == "admin@hq.org"
    assert job.submitter_org == "nvidia"
    assert job.submitter_role == "project_admin"
    assert job.submitted_at == datetime(2026, 12, 4, 19, 14, 21, 116597, tzinfo=UTC)
    assert job.sites == ["hospital-a", "hospital-b"]
    assert [(t.to_status, t.source) for t in job.status_history] == [("SUBMITTED", "reconciler")]
    assert audit_actions(database) == [(RECONCILER_ACTOR, "job.discovered")]


def test_status_progress_recorded(database: Database) -> None:
    source = FakeSource([flare_meta()])
    run_pass(database, source)
    source.jobs = [flare_meta("RUNNING", start_time="2026-12-04T19:14:21.616597+00:00")]
    run_pass(database, source)
    source.jobs = [
        flare_meta("FINISHED:COMPLETED", start_time="2026-12-04T19:14:21.616597+00:00", duration="0:00:21.868592")
    ]
    result = run_pass(database, source)

    assert result == ReconcileResult(num_seen=1, num_updated=1)
    job = detail(database)
    assert [t.to_status for t in job.status_history] == ["SUBMITTED", "RUNNING", "FINISHED:COMPLETED"]
    assert all(t.source == "reconciler" for t in job.status_history)
    assert job.started_at == datetime(2026, 12, 4, 19, 14, 21, 616597, tzinfo=UTC)
    assert job.finished_at == datetime(2026, 12, 4, 19, 14, 43, 485189, tzinfo=UTC)
    assert [action for _, action in audit_actions(database)] == [
        "job.discovered", "job.status_changed", "job.status_changed",
    ]  # fmt: skip


def test_unchanged_pass_writes_nothing(database: Database) -> None:
    source = FakeSource([flare_meta()])
    run_pass(database, source)
    result = run_pass(database, source)
    assert result == ReconcileResult(num_seen=1)
    assert len(audit_actions(database)) == 1


def ingest(database: Database, *events: dict[str, Any]) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(list[EventCreate])
    with database.write_session() as session:
        ingest_events(session, adapter.validate_python(list(events)))


def test_final_status_not_regressed(database: Database, make_event: EventFactory) -> None:
    ingest(database, make_event("job.finished", job_id=JOB_ID))
    result = run_pass(database, FakeSource([flare_meta("RUNNING")]))

    job = detail(database)
    assert job.status == "FINISHED:COMPLETED"
    assert [t.to_status for t in job.status_history] == ["FINISHED:COMPLETED"]
    assert result.num_updated == 1
    assert audit_actions(database)[-1] == (RECONCILER_ACTOR, "job.metadata_filled")


def test_final_status_corrected(database: Database, make_event: EventFactory) -> None:
    ingest(database, make_event("job.finished", job_id=JOB_ID))
    run_pass(database, FakeSource([flare_meta("FINISHED:ABORTED")]))

    job = detail(database)
    assert job.status == "FINISHED:ABORTED"
    assert [(t.to_status, t.source) for t in job.status_history] == [
        ("FINISHED:COMPLETED", "event"), ("FINISHED:ABORTED", "reconciler"),
    ]  # fmt: skip


def test_event_fields_kept(database: Database, make_event: EventFactory) -> None:
    ingest(database, make_event("job.submitted", job_id=JOB_ID))
    run_pass(database, FakeSource([flare_meta()]))
    job = detail(database)
    assert job.submitter == "lead@hospital-a.org"
    assert job.name == "fedavg"
    assert job.sites == ["hospital-a", "hospital-b"]


@pytest.mark.parametrize(
    "bad_meta",
    [
        {"name": "no id", "status": "RUNNING"},
        flare_meta("EXPLODED", job_id="bad-status"),
        flare_meta(job_id="../../etc/passwd"),
        flare_meta(job_id="long-name", name="n" * 300),
        "not a dict",
    ],
)
def test_invalid_meta_skipped(database: Database, bad_meta: Any, caplog: pytest.LogCaptureFixture) -> None:
    good = flare_meta(job_id="good-job")
    with caplog.at_level(logging.WARNING, logger="admin_api.services.reconciler"):
        result = run_pass(database, FakeSource([bad_meta, good]))  # type: ignore[list-item]
    assert result == ReconcileResult(num_seen=2, num_created=1, num_invalid=1)
    assert "skipped FLARE job meta" in caplog.text
    assert detail(database, "good-job").status == "SUBMITTED"


def test_source_error_raised(database: Database) -> None:
    source = FakeSource([flare_meta()])
    source.failing = True
    with pytest.raises(FlareSourceError, match="cannot connect"):
        run_pass(database, source)
    assert audit_actions(database) == []


def test_reconciler_chain_valid(database: Database, make_event: EventFactory) -> None:
    ingest(database, make_event("job.submitted", job_id="job-x"))
    run_pass(database, FakeSource([flare_meta(), flare_meta("RUNNING", job_id="job-x")]))
    with database.session() as session:
        assert verify_chain(session).ok


def wait_for(condition: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_loop_survives_failures(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    source = FakeSource([flare_meta()])
    source.failing = True
    passes: list[ReconcileResult] = []
    loop = ReconcilerLoop(database, source, interval_s=0.02, on_pass=passes.append)
    with caplog.at_level(logging.INFO, logger="admin_api.services.reconciler"):
        loop.start()
        try:
            assert wait_for(lambda: source.calls >= 2)
            source.failing = False
            assert wait_for(lambda: len(passes) >= 1)
        finally:
            loop.stop()
    assert "reconciler pass 1 failed" in caplog.text
    assert "reconciler recovered" in caplog.text
    assert source.closed
    assert detail(database).status == "SUBMITTED"


def test_app_runs_reconciler(database_url: str, read_headers: dict[str, str]) -> None:
    settings = Settings.model_validate(
        {
            "database_url": database_url,
            "event_token": EVENT_TOKEN,
            "api_token": API_TOKEN,
            "reconcile_interval_s": 0.05,
        }
    )
    source = FakeSource([flare_meta("RUNNING", start_time="2026-12-04T19:14:22+00:00")])
    with TestClient(create_app(settings, job_source=source)) as client:
        assert wait_for(lambda: client.get(f"/api/v1/jobs/{JOB_ID}", headers=read_headers).status_code == 200)
        assert client.get(f"/api/v1/jobs/{JOB_ID}", headers=read_headers).json()["status"] == "RUNNING"
    assert source.closed


class FakeFlareSession:
    def __init__(self, jobs: list[dict[str, Any]], fail_listing: bool = False) -> None:
        self.jobs = jobs
        self.fail_listing = fail_listing
        self.closed = False

    def list_jobs(self, detailed: bool = False) -> list[dict[str, Any]]:
        assert detailed is True
        if self.fail_listing:
            raise ConnectionResetError("connection reset by peer")
        return self.jobs

    def close(self) -> None:
        self.closed = True


def test_flare_api_source_reconnects(monkeypatch: pytest.MonkeyPatch) -> None:
    from nvflare.fuel.flare_api import flare_api
    from nvflare.fuel.flare_api.api_spec import NoConnection

    sessions = [FakeFlareSession([], fail_listing=True), FakeFlareSession([flare_meta()])]
    connects: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def fake_new_secure_session(username: str, startup_kit_location: str, timeout: float = 10.0) -> Any:
        with lock:
            connects.append((username, startup_kit_location, timeout))
            if len(connects) == 1:
                raise NoConnection("cannot connect to server")
            return sessions[len(connects) - 2]

    monkeypatch.setattr(flare_api, "new_secure_session", fake_new_secure_session)
    source = FlareApiJobSource("/kits/admin@hq.org", "admin@hq.org", timeout_s=3.0)

    with pytest.raises(FlareSourceError, match="NoConnection: cannot connect to server"):
        source.list_jobs()
    with pytest.raises(FlareSourceError, match="ConnectionResetError"):
        source.list_jobs()
    assert sessions[0].closed
    assert source.list_jobs() == [flare_meta()]
    assert source.list_jobs() == [flare_meta()]
    assert connects == [("admin@hq.org", "/kits/admin@hq.org", 3.0)] * 3
    source.close()
    assert sessions[1].closed


def test_flare_prints_logged(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: Any) -> None:
    import sys

    from nvflare.fuel.flare_api import flare_api

    def printing_session(username: str, startup_kit_location: str, timeout: float = 10.0) -> Any:
        print("Connecting to FLARE ...")
        print("login failed", file=sys.stderr)
        return FakeFlareSession([])

    monkeypatch.setattr(flare_api, "new_secure_session", printing_session)
    with caplog.at_level(logging.INFO, logger="admin_api.services.flare_jobs"):
        assert FlareApiJobSource("/kits/admin@hq.org", "admin@hq.org").list_jobs() == []
    captured = capsys.readouterr()
    assert "Connecting to FLARE" not in captured.out
    assert "login failed" not in captured.err
    assert "FLARE: Connecting to FLARE ..." in caplog.text
    assert "FLARE: login failed" in caplog.text
