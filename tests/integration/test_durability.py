"""Durability: the admin service is killed with SIGKILL mid-job, restarted, and loses no event.

The FLARE server's event forwarder spools every event to disk and deletes it only after the service acknowledged it,
so events raised while the service is down are delivered after the restart. Ingestion is idempotent by event_id, so
the replay of an event the service stored just before it died is not stored twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from consortia import federation
from consortia.cli_audit import audit_app, report_app
from provisioning.provision import ProvisioningError

pytestmark = pytest.mark.integration

NUM_ROUNDS = 3
NUM_SITES = 2
RESTART_TIMEOUT_S = 90.0


def kill_admin_service(running_federation: Any) -> None:
    """SIGKILL the admin service by its recorded PID and reap it."""
    state = running_federation.state
    (record,) = [r for r in state.processes if r.name == federation.ADMIN_SERVICE]
    os.kill(record.pid, signal.SIGKILL)
    try:
        os.waitpid(record.pid, 0)
    except ChildProcessError:  # started by another process: it is reaped there
        pass
    assert not record.is_alive()


def restart_admin_service(running_federation: Any) -> None:
    """Start the admin service again, replace its process record and save the state."""
    workspace, state = running_federation.workspace, running_federation.state
    started = time.monotonic()
    while True:
        try:
            record = federation.start_admin_service(workspace, state)
            break
        except ProvisioningError:
            # The killed process's connections can hold the port for a while; retry until the deadline.
            if time.monotonic() - started > RESTART_TIMEOUT_S:
                raise
            time.sleep(1.0)
    state.processes = [r for r in state.processes if r.name != federation.ADMIN_SERVICE] + [record]
    workspace.save(state)


def spool_files(running_federation: Any) -> tuple[list[Path], list[Path]]:
    """Return the pending and the rejected event files of the server's event spool."""
    (spool,) = list(running_federation.workspace.root.rglob("event-spool"))
    pending = sorted(p for p in spool.glob("*.json") if not p.name.startswith("."))
    rejected = sorted((spool / "rejected").glob("*"))
    return pending, rejected


def finished_with_final_round(job: dict[str, Any]) -> bool:
    rounds = {r["round"] for r in job["rounds"] if r["global_metrics"]}
    return job["status"].startswith("FINISHED") and NUM_ROUNDS in rounds


@pytest.fixture(scope="module")
def job_across_restart(running_federation: Any) -> dict[str, Any]:
    """Run a job, kill the admin service once the first contribution is recorded, restart it, wait for the end."""
    job_id = running_federation.submit(num_rounds=NUM_ROUNDS)
    running_federation.wait_for(job_id, lambda j: any(r["contributions"] for r in j["rounds"]), timeout=240)
    kill_admin_service(running_federation)
    # Stay down until the forwarder has spooled events it cannot deliver, so the restart has a backlog to replay.
    deadline = time.monotonic() + 60
    while not spool_files(running_federation)[0] and time.monotonic() < deadline:
        time.sleep(0.5)
    spooled_while_down = len(spool_files(running_federation)[0])
    restart_admin_service(running_federation)
    job = running_federation.wait_for(job_id, finished_with_final_round, timeout=300)
    return {"job": job, "spooled_while_down": spooled_while_down}


def audit_actions(running_federation: Any, job_id: str) -> Counter[str]:
    response = httpx.get(
        f"{running_federation.api}/reports/jobs/{job_id}", headers=running_federation.headers, timeout=60
    )
    report = response.raise_for_status().json()
    return Counter(event["action"] for event in report["audit_events"])


def test_job_completes_after_restart(job_across_restart: dict[str, Any]) -> None:
    job = job_across_restart["job"]
    assert job["status"] == "FINISHED:COMPLETED"
    assert job["status_history"][-1]["to_status"] == "FINISHED:COMPLETED"


def test_no_event_lost(running_federation: Any, job_across_restart: dict[str, Any]) -> None:
    job = job_across_restart["job"]
    # The forwarder may still be posting the last events when the job record is complete.
    deadline = time.monotonic() + 30
    while spool_files(running_federation)[0] and time.monotonic() < deadline:
        time.sleep(1.0)
    pending, rejected = spool_files(running_federation)
    actions = audit_actions(running_federation, job["job_id"])

    assert job_across_restart["spooled_while_down"] > 0
    assert pending == []
    assert rejected == []
    assert actions["round.started"] == NUM_ROUNDS
    assert actions["contribution.accepted"] == NUM_ROUNDS * NUM_SITES
    assert actions["contribution.rejected"] == 0
    assert actions["round.completed"] == NUM_ROUNDS + 1  # one per round plus the final evaluation
    assert actions["job.finished"] == 1
    for round_number in range(NUM_ROUNDS):
        (entry,) = [r for r in job["rounds"] if r["round"] == round_number]
        assert {c["site"] for c in entry["contributions"] if c["accepted"]} == {"hospital-a", "hospital-b"}


def test_chain_valid_after_restart(running_federation: Any, job_across_restart: dict[str, Any]) -> None:
    response = httpx.get(f"{running_federation.api}/audit/verify", headers=running_federation.headers, timeout=60)
    result = response.raise_for_status().json()
    assert result["ok"] is True
    assert result["first_bad_seq"] is None


def test_reports_verify_after_restart(running_federation: Any, job_across_restart: dict[str, Any]) -> None:
    """The demo's report writer works against the restarted service, and the CLI verifies what it wrote."""
    from consortia.demo import AdminClient, _write_reports

    workspace = running_federation.workspace
    admin = AdminClient(workspace, running_federation.state)
    paths = _write_reports(admin, workspace, job_across_restart["job"]["job_id"])

    for kind in ("json", "csv", "pdf"):
        result = CliRunner().invoke(report_app, ["verify", str(paths[kind]), "--public-key", str(paths["public_key"])])
        assert result.exit_code == 0, result.output
    pinned = CliRunner().invoke(
        audit_app, ["verify", "--database", workspace.database_url, "--report", str(paths["json"])]
    )
    assert pinned.exit_code == 0, pinned.output
