"""Tests for job audit reports: the service function, the JSON and the CSV content."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import EventFactory
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from admin_api.db import Database
from admin_api.errors import JobNotFoundError
from admin_api.schemas.events import EventCreate
from admin_api.services.ingest import ingest_events
from admin_api.services.reports import CSV_COLUMNS, write_job_report


def at(minutes: int) -> str:
    return (datetime(2026, 12, 4, 19, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


def job_events(make_event: EventFactory) -> list[dict[str, Any]]:
    return [
        make_event("site.joined", site="hospital-a", occurred_at=at(0)),
        make_event("job.submitted", occurred_at=at(1),
                   payload={"name": "=HYPERLINK(\"x\")", "submitter": "lead@hospital-a.org",
                            "submitter_org": "hospital_a", "submitter_role": "lead"}),
        make_event("job.started", occurred_at=at(2)),
        make_event("contribution.accepted", site="hospital-a", occurred_at=at(3)),
        make_event("contribution.rejected", site="hospital-b", occurred_at=at(3)),
        make_event("round.completed", occurred_at=at(4),
                   payload={"num_accepted": 1, "num_rejected": 1,
                            "global_metrics": {"loss": -0.5, "roc_auc": None, "accuracy": 0.9}, "site_metrics": {}}),
        make_event("job.finished", occurred_at=at(5)),
        make_event("job.submitted", job_id="job-other"),
    ]  # fmt: skip


@pytest.fixture
def recorded_job(database: Database, make_event: EventFactory) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(list[EventCreate])
    with database.write_session() as session:
        ingest_events(session, adapter.validate_python(job_events(make_event)))


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def values(rows: list[dict[str, str]], section: str, **match: str) -> dict[str, str]:
    selected = [row for row in rows if row["section"] == section and all(row[k] == v for k, v in match.items())]
    return {row["field"]: row["value"] for row in selected}


@pytest.mark.usefixtures("recorded_job")
def test_report_files_written(database: Database, tmp_path: Path) -> None:
    with database.session() as session:
        json_path, csv_path = write_job_report(session, "job-1", tmp_path / "reports")

    assert json_path == tmp_path / "reports" / "job-job-1-report.json"
    assert csv_path == tmp_path / "reports" / "job-job-1-report.csv"
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [csv_path.name, json_path.name]


@pytest.mark.usefixtures("recorded_job")
def test_report_json_content(database: Database, tmp_path: Path) -> None:
    with database.session() as session:
        json_path, _ = write_job_report(session, "job-1", tmp_path)
    report = json.loads(json_path.read_text())

    assert report["report_version"] == 1
    assert report["job"]["job_id"] == "job-1"
    assert report["job"]["submitter"] == "lead@hospital-a.org"
    assert report["job"]["status"] == "FINISHED:COMPLETED"
    assert report["job"]["sites"] == ["hospital-a", "hospital-b"]
    assert [s["name"] for s in report["sites"]] == ["hospital-a", "hospital-b"]
    (round_0,) = report["job"]["rounds"]
    assert round_0["global_metrics"]["loss"] == -0.5
    assert round_0["global_metrics"]["roc_auc"] is None
    assert [c["accepted"] for c in round_0["contributions"]] == [True, False]
    actions = [event["action"] for event in report["audit_events"]]
    assert actions == [
        "job.submitted", "job.started", "contribution.accepted", "contribution.rejected", "round.completed",
        "job.finished",
    ]  # fmt: skip
    assert all(event["target"] == "job:job-1" for event in report["audit_events"])
    assert report["chain"]["ok"] is True
    assert report["chain"]["head_seq"] == 8
    assert len(report["chain"]["head_hash"]) == 64


@pytest.mark.usefixtures("recorded_job")
def test_report_csv_content(database: Database, tmp_path: Path) -> None:
    with database.session() as session:
        json_path, csv_path = write_job_report(session, "job-1", tmp_path)
    report = json.loads(json_path.read_text())
    rows = read_csv(csv_path.read_text())

    assert tuple(rows[0]) == CSV_COLUMNS
    job = values(rows, "job")
    assert job["job_id"] == "job-1"
    assert job["submitter"] == "lead@hospital-a.org"
    assert job["name"] == '\'=HYPERLINK("x")'
    assert job["sites"] == '["hospital-a","hospital-b"]'
    assert values(rows, "global_metric", round="0") == {
        "accuracy": "0.9", "loss": "-0.5", "num_accepted": "1", "num_rejected": "1", "roc_auc": "",
    }  # fmt: skip
    assert values(rows, "contribution", site="hospital-b")["reason_code"] == "non_finite"
    assert values(rows, "contribution", site="hospital-a")["accepted"] == "true"
    assert values(rows, "site_metric", site="hospital-a")["num_examples"] == "152"
    audit_seqs = {row["item"] for row in rows if row["section"] == "audit_event"}
    assert audit_seqs == {str(event["seq"]) for event in report["audit_events"]}
    first_seq = str(report["audit_events"][0]["seq"])
    assert values(rows, "audit_event", item=first_seq)["hash"] == report["audit_events"][0]["hash"]
    assert values(rows, "chain")["head_hash"] == report["chain"]["head_hash"]
    assert [row["field"] for row in rows if row["section"] == "status_transition" and row["item"] == "1"] == [
        "from_status", "to_status", "at", "source", "event_id",
    ]  # fmt: skip


def test_report_unknown_job(database: Database, tmp_path: Path) -> None:
    out_dir = tmp_path / "reports"
    with database.session() as session, pytest.raises(JobNotFoundError, match="job 'nope' not found"):
        write_job_report(session, "nope", out_dir)
    assert not out_dir.exists()


def test_report_endpoint_formats(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    response = client.post("/api/v1/events:batch", json=job_events(make_event), headers=event_headers)
    assert response.status_code == 200

    as_json = client.get("/api/v1/jobs/job-1/report", headers=read_headers)
    as_csv = client.get("/api/v1/jobs/job-1/report", params={"format": "csv"}, headers=read_headers)
    bad = client.get("/api/v1/jobs/job-1/report", params={"format": "pdf"}, headers=read_headers)

    assert as_json.headers["content-type"] == "application/json"
    assert as_json.json()["job"]["job_id"] == "job-1"
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="job-job-1-report.csv"' in as_csv.headers["content-disposition"]
    assert values(read_csv(as_csv.text), "chain")["ok"] == "true"
    assert bad.status_code == 422
