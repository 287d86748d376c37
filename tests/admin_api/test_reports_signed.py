"""Tests for signed reports: the signing key, the report routes, the PDF and the verify commands of the CLI."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN, EventFactory
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from admin_api.app import create_app
from admin_api.db import Database
from admin_api.errors import ConfigurationError
from admin_api.services.signing import (
    ReportSigner,
    SignatureStatement,
    SignatureVerificationError,
    load_public_key,
    resolve_signing_key_path,
    verify_json_report,
    verify_statement,
)
from admin_api.settings import Settings
from consortia.cli_audit import audit_app, decode_signature_header, report_app

START = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


def job_events(make_event: EventFactory) -> list[dict[str, Any]]:
    return [
        make_event("site.joined", site="hospital-a", occurred_at=at(0)),
        make_event("job.submitted", occurred_at=at(1),
                   payload={"name": "fedavg <b>bold</b>", "submitter": "lead@hospital-a.org",
                            "submitter_org": "hospital_a", "submitter_role": "lead"}),
        make_event("job.started", occurred_at=at(2)),
        make_event("contribution.accepted", site="hospital-a", occurred_at=at(3)),
        make_event("contribution.rejected", site="hospital-b", occurred_at=at(3)),
        make_event("round.completed", occurred_at=at(4)),
        make_event("privacy.spent", site="hospital-a", round=0, occurred_at=at(4),
                   payload={"epsilon": 0.8, "delta": 1e-5, "mechanism": "dp-sgd", "noise_multiplier": 1.1}),
        make_event("round.completed", round=1, occurred_at=at(5),
                   payload={"num_accepted": 2, "num_rejected": 0,
                            "global_metrics": {"loss": 0.3, "roc_auc": 0.95}, "site_metrics": {}}),
        make_event("job.finished", occurred_at=at(6)),
        make_event("job.submitted", job_id="job-later", occurred_at=at(600)),
    ]  # fmt: skip


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def signed_client(database_url: str, workspace: Path) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        event_token=EVENT_TOKEN,  # type: ignore[arg-type]
        api_token=API_TOKEN,  # type: ignore[arg-type]
        report_signing_key=workspace / "secrets" / "report_signing_key.pem",
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def recorded(signed_client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> TestClient:
    response = signed_client.post("/api/v1/events:batch", json=job_events(make_event), headers=event_headers)
    assert response.status_code == 200, response.text
    return signed_client


def public_key_pem(client: TestClient) -> bytes:
    response = client.get("/api/v1/reports/public-key")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-pem-file"
    return response.content


def statement_of(response: Any) -> SignatureStatement:
    return SignatureStatement.from_json(
        json.loads(decode_signature_header(response.headers["consortia-report-signature"]))
    )


def test_signing_key_created_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "report_signing_key.pem"
    first = ReportSigner(path)
    second = ReportSigner(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.key_id == second.key_id
    assert len(first.key_id) == 64
    assert b"PRIVATE KEY" not in first.public_key_pem()


def test_signing_key_wrong_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigurationError, match="not an unencrypted PEM private key"):
        ReportSigner(path)


def test_key_path_from_workspace(tmp_path: Path) -> None:
    explicit = tmp_path / "service.pem"
    assert resolve_signing_key_path(explicit, tmp_path / "ws") == explicit
    assert resolve_signing_key_path(None, tmp_path / "ws") == tmp_path / "ws" / "secrets" / "report_signing_key.pem"
    with pytest.raises(ConfigurationError, match="CONSORTIA_REPORT_SIGNING_KEY"):
        resolve_signing_key_path(None, None)


def test_key_created_on_first_report(recorded: TestClient, workspace: Path, read_headers: dict[str, str]) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", headers=read_headers)
    assert response.status_code == 200
    key_file = workspace / "secrets" / "report_signing_key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert response.headers["consortia-key-id"] == ReportSigner(key_file).key_id


def test_json_report_verifies(recorded: TestClient, read_headers: dict[str, str]) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", headers=read_headers)
    chain = recorded.get("/api/v1/audit/verify", headers=read_headers).json()
    report = response.json()
    statement = verify_json_report(report, load_public_key(public_key_pem(recorded)))

    assert response.headers["content-type"] == "application/json"
    assert 'filename="job-job-1-report.json"' in response.headers["content-disposition"]
    assert statement.chain_head_hash == chain["head_hash"]
    assert statement.chain_head_seq == chain["head_seq"]
    assert report["job"]["status"] == "FINISHED:COMPLETED"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r["job"].update(status="FINISHED:ABORTED"), "digest mismatch"),
        (lambda r: r["chain"].update(head_hash="0" * 64), "digest mismatch"),
        (lambda r: r["signature"].update(chain_head_seq=1), "invalid signature"),
        (lambda r: r["signature"].update(key_id="f" * 64), "key mismatch"),
        (lambda r: r.pop("signature"), "no 'signature' field"),
    ],
)
def test_json_report_tampering_named(
    recorded: TestClient, read_headers: dict[str, str], change: Any, reason: str
) -> None:
    report = recorded.get("/api/v1/reports/jobs/job-1", headers=read_headers).json()
    change(report)
    with pytest.raises(SignatureVerificationError, match=reason):
        verify_json_report(report, load_public_key(public_key_pem(recorded)))


@pytest.mark.parametrize("fmt", ["csv", "pdf"])
def test_sidecar_signature_verifies(recorded: TestClient, read_headers: dict[str, str], fmt: str) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", params={"format": fmt}, headers=read_headers)
    key = load_public_key(public_key_pem(recorded))
    statement = statement_of(response)
    import hashlib

    verify_statement(statement, key, sha256=hashlib.sha256(response.content).hexdigest())
    assert statement.file_name == f"job-job-1-report.{fmt}"
    tampered = response.content.replace(b"hospital-b", b"hospital-x", 1)
    if fmt == "pdf":
        tampered = response.content[:-10] + b"0" + response.content[-9:]
    with pytest.raises(SignatureVerificationError, match="digest mismatch"):
        verify_statement(statement, key, sha256=hashlib.sha256(tampered).hexdigest())


def test_pdf_report_content(recorded: TestClient, read_headers: dict[str, str]) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", params={"format": "pdf"}, headers=read_headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert b"/Subtype /Image" in response.content  # the training curve
    assert response.content.count(b"/Type /Page\n") + response.content.count(b"/Type /Page ") >= 1


def test_csv_report_lists_privacy(recorded: TestClient, read_headers: dict[str, str]) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", params={"format": "csv"}, headers=read_headers)
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert "audit_event" in response.text
    assert "privacy.spent" in response.text


def test_period_report(recorded: TestClient, read_headers: dict[str, str]) -> None:
    params = {"start": at(0), "end": at(60)}
    report = recorded.get("/api/v1/reports/period", params=params, headers=read_headers).json()
    verify_json_report(report, load_public_key(public_key_pem(recorded)))

    assert [job["job_id"] for job in report["jobs"]] == ["job-1"]
    assert report["jobs"][0]["num_accepted"] == 1
    assert report["jobs"][0]["num_rejected"] == 1
    assert report["jobs"][0]["final_global_metrics"]["roc_auc"] == 0.95
    assert report["audit_event_counts"]["round.completed"] == 2
    assert report["num_audit_events"] == 9
    assert report["first_seq"] == 1
    assert report["last_seq"] == 9
    (spend,) = report["privacy"]
    assert spend["epsilon"] == 0.8
    assert spend["site"] == "hospital-a"
    assert spend["settings"] == {"noise_multiplier": 1.1}


@pytest.mark.parametrize("fmt", ["csv", "pdf"])
def test_period_report_formats(recorded: TestClient, read_headers: dict[str, str], fmt: str) -> None:
    params = {"start": at(0), "end": at(60), "format": fmt}
    response = recorded.get("/api/v1/reports/period", params=params, headers=read_headers)
    assert response.status_code == 200
    assert statement_of(response).file_name == f"period-20261204T190000Z-20261204T200000Z-report.{fmt}"


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"start": at(60), "end": at(0)}, "is not before end"),
        ({"start": "2026-12-04T19:00:00", "end": at(60)}, "timezone"),
        ({"end": at(60)}, "start"),
        ({"start": "0001-01-01T00:01:00+00:09", "end": at(60)}, "outside the years 1 to 9999"),
    ],
)
def test_period_report_invalid(
    signed_client: TestClient, read_headers: dict[str, str], params: dict[str, str], fragment: str
) -> None:
    response = signed_client.get("/api/v1/reports/period", params=params, headers=read_headers)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert fragment in json.dumps(response.json())


def test_report_unknown_job(signed_client: TestClient, read_headers: dict[str, str]) -> None:
    response = signed_client.get("/api/v1/reports/jobs/nope", headers=read_headers)
    assert response.status_code == 404
    assert "job 'nope' not found" in response.json()["detail"]


def test_report_needs_token(signed_client: TestClient) -> None:
    assert signed_client.get("/api/v1/reports/jobs/job-1").status_code == 401


def test_report_without_key_setting(client: TestClient, read_headers: dict[str, str]) -> None:
    response = client.get("/api/v1/reports/public-key", headers=read_headers)
    assert response.status_code == 503
    assert "CONSORTIA_REPORT_SIGNING_KEY" in response.json()["detail"]


# ----------------------------------------------------------------------------------------------- command line


@pytest.fixture
def report_files(recorded: TestClient, read_headers: dict[str, str], tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    out.mkdir()
    files = {"pem": out / "service.pub.pem"}
    files["pem"].write_bytes(public_key_pem(recorded))
    for fmt in ("json", "csv", "pdf"):
        response = recorded.get("/api/v1/reports/jobs/job-1", params={"format": fmt}, headers=read_headers)
        files[fmt] = out / f"report.{fmt}"
        files[fmt].write_bytes(response.content)
        if fmt != "json":
            Path(f"{files[fmt]}.sig.json").write_text(
                decode_signature_header(response.headers["consortia-report-signature"])
            )
    return files


@pytest.mark.parametrize("fmt", ["json", "csv", "pdf"])
def test_cli_report_verify_ok(report_files: dict[str, Path], fmt: str) -> None:
    result = CliRunner().invoke(
        report_app, ["verify", str(report_files[fmt]), "--public-key", str(report_files["pem"])]
    )
    assert result.exit_code == 0, result.output
    assert "OK:" in result.output
    assert "audit chain head" in result.output


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_cli_report_verify_tampered(report_files: dict[str, Path], fmt: str) -> None:
    path = report_files[fmt]
    path.write_text(path.read_text().replace("FINISHED:COMPLETED", "FINISHED:ABORTED"))
    result = CliRunner().invoke(report_app, ["verify", str(path), "--public-key", str(report_files["pem"])])
    assert result.exit_code == 1
    assert "digest mismatch" in result.output


def test_cli_report_verify_other_key(report_files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    other.write_bytes(ReportSigner(tmp_path / "other-key.pem").public_key_pem())
    result = CliRunner().invoke(report_app, ["verify", str(report_files["csv"]), "--public-key", str(other)])
    assert result.exit_code == 1
    assert "key mismatch" in result.output


def test_cli_report_verify_missing_sidecar(report_files: dict[str, Path]) -> None:
    Path(f"{report_files['pdf']}.sig.json").unlink()
    result = CliRunner().invoke(
        report_app, ["verify", str(report_files["pdf"]), "--public-key", str(report_files["pem"])]
    )
    assert result.exit_code == 1
    assert "no signature file" in result.output


def test_cli_report_verify_needs_key(report_files: dict[str, Path]) -> None:
    result = CliRunner().invoke(report_app, ["verify", str(report_files["json"])])
    assert result.exit_code == 2
    assert "--public-key" in result.output


def _drop_protection(database: Database) -> None:
    with database.write_engine.begin() as connection:
        if database.dialect_name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        else:
            connection.execute(text("DROP TRIGGER audit_events_reject_update"))
            connection.execute(text("DROP TRIGGER audit_events_reject_delete"))


def test_cli_audit_verify_ok(recorded: TestClient, database_url: str, report_files: dict[str, Path]) -> None:
    result = CliRunner().invoke(audit_app, ["verify", "--database", database_url, "--report", str(report_files["csv"])])
    assert result.exit_code == 0, result.output
    assert "audit chain valid: 10 events" in result.output
    assert "still contains the head" in result.output


def test_cli_audit_verify_names_bad_row(recorded: TestClient, database_url: str) -> None:
    database = Database(database_url)
    _drop_protection(database)
    with database.write_engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 3"))
    database.dispose()

    result = CliRunner().invoke(audit_app, ["verify", "--database", database_url])
    assert result.exit_code == 1
    assert "audit chain broken at seq 3" in result.output


def test_cli_audit_verify_truncation(recorded: TestClient, database_url: str, report_files: dict[str, Path]) -> None:
    database = Database(database_url)
    _drop_protection(database)
    with database.write_engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 10"))
    database.dispose()

    plain = CliRunner().invoke(audit_app, ["verify", "--database", database_url])
    pinned = CliRunner().invoke(
        audit_app, ["verify", "--database", database_url, "--report", str(report_files["json"])]
    )
    assert plain.exit_code == 0, plain.output
    assert pinned.exit_code == 1
    assert "removed from the end" in pinned.output


def test_cli_audit_verify_no_database(tmp_path: Path) -> None:
    result = CliRunner().invoke(audit_app, ["verify", "--workspace", str(tmp_path)])
    assert result.exit_code == 2
    assert "no admin database" in result.output


def test_signature_header_round_trip(recorded: TestClient, read_headers: dict[str, str]) -> None:
    response = recorded.get("/api/v1/reports/jobs/job-1", params={"format": "csv"}, headers=read_headers)
    header = response.headers["consortia-report-signature"]
    assert json.loads(base64.b64decode(header))["algorithm"] == "Ed25519"
