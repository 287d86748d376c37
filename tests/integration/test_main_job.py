"""The main job end to end: a real provisioned federation trains on flchain and the admin service records it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from consortia.jobs import prepare_job

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

pytestmark = pytest.mark.integration


def finished_with_final_round(num_rounds: int):
    def done(job: dict) -> bool:
        rounds = {r["round"] for r in job["rounds"] if r["global_metrics"]}
        return job["status"].startswith("FINISHED") and num_rounds in rounds

    return done


@pytest.fixture(scope="module")
def completed_job(running_federation):
    job_id = running_federation.submit(num_rounds=2)
    return running_federation.wait_for(job_id, finished_with_final_round(2))


def test_job_completed_in_database(completed_job):
    assert completed_job["status"] == "FINISHED:COMPLETED"
    assert completed_job["submitter"] == "lead@hospital-a.org"
    statuses = [t["to_status"] for t in completed_job["status_history"]]
    assert statuses[-1] == "FINISHED:COMPLETED"
    assert "RUNNING" in statuses


def test_both_sites_contributed_every_round(completed_job):
    by_round = {r["round"]: r for r in completed_job["rounds"]}
    for round_number in (0, 1):
        accepted = {c["site"] for c in by_round[round_number]["contributions"] if c["accepted"]}
        assert accepted == {"hospital-a", "hospital-b"}, round_number


def test_global_model_beats_initial(completed_job):
    by_round = {r["round"]: r["global_metrics"] for r in completed_job["rounds"]}
    assert by_round[2]["roc_auc"] > by_round[0]["roc_auc"]
    assert by_round[2]["loss"] < by_round[0]["loss"] - 0.05


def test_report_names_job_and_sites(running_federation, completed_job):
    import httpx

    response = httpx.get(
        f"{running_federation.api}/jobs/{completed_job['job_id']}/report",
        params={"format": "json"},
        headers=running_federation.headers,
        timeout=30,
    )
    report = response.raise_for_status().json()
    text = response.text
    assert completed_job["job_id"] in text
    assert "hospital-a" in text and "hospital-b" in text
    assert report


def test_audit_chain_valid(running_federation, completed_job):
    import httpx

    response = httpx.get(f"{running_federation.api}/audit/verify", headers=running_federation.headers, timeout=30)
    result = response.raise_for_status().json()
    assert result["ok"] is True
    assert result["num_events"] > 10


def test_site_failure_recorded_and_stops_job(running_federation, completed_job):
    """A site missing its training file refuses every task with the reason, and the job does not complete."""
    data = running_federation.workspace.kit_dir(running_federation.state, "hospital-b") / "data" / "train.csv"
    hidden = data.with_name("train.csv.hidden")
    shutil.move(data, hidden)
    try:
        job_id = running_federation.submit(num_rounds=2, round_timeout=60)
        job = running_federation.wait_for(job_id, lambda j: j["status"].startswith("FINISHED"), timeout=240)
    finally:
        shutil.move(hidden, data)
    assert job["status"] != "FINISHED:COMPLETED"
    history = [t["to_status"] for t in job["status_history"]]
    assert history[-1] == job["status"]
    rejected = [c for r in job["rounds"] for c in r["contributions"] if not c["accepted"]]
    assert any(c["site"] == "hospital-b" and c["reason_code"] == "site_data_invalid" for c in rejected), rejected
    assert any("train.csv" in (c["reason"] or "") for c in rejected)


def test_console_submission_recorded(running_federation, completed_job):
    """A job submitted with the stock admin console (fl_admin.sh) is recorded with the console user as submitter."""
    state = running_federation.state
    kit = running_federation.workspace.kit_dir(state, state.lead_user)
    folder = prepare_job("fedavg_clinical", running_federation.scratch / "console", job_name="console_run", num_rounds=1)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    env["HOME"] = str(running_federation.workspace.home_dir)
    console = subprocess.run(
        ["bash", str(kit / "startup" / "fl_admin.sh")],
        input=f"{state.lead_user}\nsubmit_job {folder}\nbye\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    job_ids = UUID_PATTERN.findall(console.stdout)
    assert job_ids, f"no job id in the console output:\n{console.stdout}\n{console.stderr}"

    job = running_federation.wait_for(job_ids[-1], lambda j: j["status"].startswith("FINISHED"), timeout=240)
    assert job["submitter"] == state.lead_user
    assert job["name"] == "console_run"
    assert job["status"] == "FINISHED:COMPLETED"


def test_second_up_refused(running_federation):
    from consortia import federation

    with pytest.raises(federation.FederationError, match="already running"):
        federation.up(running_federation.workspace)


def test_status_lists_registered_sites(running_federation):
    from typer.testing import CliRunner

    from consortia.cli import app

    result = CliRunner().invoke(app, ["status", "--workspace", str(running_federation.workspace.root)])
    assert result.exit_code == 0, result.output
    assert "Registered sites: hospital-a, hospital-b" in result.output
