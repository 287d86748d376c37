"""Kit lifecycle on a real federation: a site's policy rejects a job by what it runs, a site added while running
trains, a revoked site stays out, and a rotated site's old certificate no longer registers.

The module starts its own federation (server, admin service, two sites, later a third) so that adding and revoking a
site cannot disturb the session's shared federation. The order of the tests matters and is the story: policy
rejection with two sites, a job that trains without the rejecting site, onboarding a third, revoking it, then
rotating the first site's key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from consortia import federation
from consortia.cli_lifecycle import wait_site_registered
from consortia.jobs import prepare_job
from provisioning.onboarding import add_site, existing_fingerprints
from provisioning.provision import provision
from provisioning.revocation import revoke_site, rotate_site

from .conftest import Federation, two_site_consortium

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 120


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("lifecycle")
    path = two_site_consortium(folder)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["project"] = "consortia_lifecycle"
    data["sites"][1]["policy"] = {"accepted_algorithms": ["fedavg", "fedprox"]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = provision(path, folder / "workspace")
    try:
        state = federation.up(result.workspace)
        yield Federation(workspace=result.workspace, state=state, scratch=folder)
    finally:
        federation.down(result.workspace)


def finished(job: dict) -> bool:
    return job["status"].startswith("FINISHED")


def accepted_sites(job: dict, round_number: int = 0) -> set[str]:
    rounds = {r["round"]: r for r in job["rounds"]}
    return {c["site"] for c in rounds[round_number]["contributions"] if c["accepted"]}


def registered(fed: Federation) -> list[str]:
    with federation.flare_session(fed.workspace, fed.state, fed.state.service_identity, timeout=20) as session:
        return federation.registered_sites(session)


def submit_with_min_clients(fed: Federation, job: str, job_name: str, min_clients: int, **parameters) -> str:
    folder = prepare_job(job, fed.scratch / f"job-{time.monotonic_ns()}", job_name=job_name, **parameters)
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    meta["min_clients"] = min_clients
    (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with federation.flare_session(fed.workspace, fed.state, fed.state.lead_user) as session:
        return session.submit_job(str(folder))


def test_policy_rejection_audited(lifecycle):
    # A Fed-Focal job renamed to look like FedAvg: hospital-b accepts only fedavg and fedprox.
    job_id = lifecycle.submit("fed_focal_clinical", job_name="fedavg_study", num_rounds=1, round_timeout=ROUND_TIMEOUT)
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and bool(j["rounds"]), timeout=120)
    assert job["status"] == "FINISHED:FAILED_TO_RUN"
    rejected = [c for r in job["rounds"] for c in r["contributions"] if not c["accepted"]]
    assert [(c["site"], c["reason_code"]) for c in rejected] == [("hospital-b", "site_policy")]
    assert "job 'fedavg_study' runs fed_focal (app_custom.flare.controller.ConsortiaFedAvg)" in rejected[0]["reason"]
    assert "accepted_algorithms ['fedavg', 'fedprox']" in rejected[0]["reason"]
    with federation.flare_session(lifecycle.workspace, lifecycle.state, lifecycle.state.lead_user) as session:
        detail = session.get_job_meta(job_id)["job_deploy_detail"]
    assert any(line.startswith("hospital-b: ") and "consortia site policy" in line for line in detail), detail


def test_policy_rejecting_site_not_awaited(lifecycle):
    # With min_clients=1 FLARE starts the job without hospital-b, so no round waits round_timeout for it.
    job_id = submit_with_min_clients(
        lifecycle, "fed_focal_clinical", "focal_study", 1, num_rounds=2, round_timeout=ROUND_TIMEOUT
    )
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and any(r["global_metrics"] for r in j["rounds"]))
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 0) == {"hospital-a"}
    assert accepted_sites(job, 1) == {"hospital-a"}
    rejected = [(r["round"], c["site"], c["reason_code"]) for r in job["rounds"] for c in r["contributions"]]
    rejected = [entry for entry in rejected if entry[1] == "hospital-b"]
    assert rejected == [(0, "hospital-b", "site_policy")]


def test_added_site_trains(lifecycle):
    workspace = lifecycle.workspace
    before = existing_fingerprints(workspace, workspace.load())
    site = add_site(workspace, "hospital-c", "hospital_c")
    state = workspace.load()
    assert {k: v for k, v in existing_fingerprints(workspace, state).items() if k != "hospital-c"} == before

    record = federation.start_flare_participant(workspace, state, "hospital-c")
    state.processes.append(record)
    workspace.save(state)
    lifecycle.state = state
    assert "hospital-c" in wait_site_registered(workspace, state, record, timeout=90)
    assert site.data_summary is not None

    job_id = lifecycle.submit(num_rounds=1, round_timeout=ROUND_TIMEOUT)
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and any(r["global_metrics"] for r in j["rounds"]))
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job) == {"hospital-a", "hospital-b", "hospital-c"}


def test_revoked_site_stays_out(lifecycle):
    workspace = lifecycle.workspace

    def disconnect(name: str) -> None:
        with federation.flare_session(workspace, lifecycle.state, lifecycle.state.service_identity) as session:
            session.disable_client(name)

    revoke_site(workspace, "hospital-c", reason="left the study", actor="tester", disconnect=disconnect)
    record = next(r for r in workspace.load().processes if r.name == "hospital-c")
    for _ in range(15):
        assert "hospital-c" not in registered(lifecycle)
        time.sleep(1.0)
    assert record.is_alive()

    job_id = lifecycle.submit(num_rounds=1, round_timeout=ROUND_TIMEOUT)
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and any(r["global_metrics"] for r in j["rounds"]))
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job) == {"hospital-a", "hospital-b"}
    assert "hospital-c" not in {c["site"] for r in job["rounds"] for c in r["contributions"]}

    response = httpx.get(
        f"{lifecycle.api}/audit/events",
        params={"action": "site.left", "target": "site:hospital-c", "limit": 100},
        headers=lifecycle.headers,
        timeout=10,
    )
    details = [str(event.get("details")) for event in response.raise_for_status().json()["data"]]
    assert any("left the study" in detail for detail in details), details


def server_log_contains(fed: Federation, text: str) -> bool:
    state = fed.workspace.load()
    logs = [Path(r.log_file) for r in state.processes if r.name == state.server_name]
    logs.append(fed.workspace.kit_dir(state, state.server_name) / "log.txt")
    return any(path.is_file() and text in path.read_text(encoding="utf-8", errors="replace") for path in logs)


def test_rotated_site_old_kit_rejected(lifecycle):
    workspace = lifecycle.workspace
    state = workspace.load()
    old_kit = workspace.kit_dir(state, "hospital-a")
    running = next(r for r in state.processes if r.name == "hospital-a" and r.is_alive())
    rotated = rotate_site(workspace, "hospital-a", actor="tester")
    federation.stop_process(running)

    # The site is started from its old kit, as a copy that was not replaced after the rotation would be.
    old_state = workspace.load()
    old_state.kit_dirs["hospital-a"] = str(old_kit)
    old_record = federation.start_flare_participant(workspace, old_state, "hospital-a")
    state = workspace.load()
    state.processes.append(old_record)
    workspace.save(state)
    rejection = f"the certificate of site 'hospital-a' (SHA-256 {rotated.old_sha256}"
    deadline = time.monotonic() + 90
    while not server_log_contains(lifecycle, rejection) and time.monotonic() < deadline:
        time.sleep(1.0)
    assert server_log_contains(lifecycle, rejection), "the server did not log the rejected old certificate"
    federation.stop_process(old_record)

    state = workspace.load()
    new_record = federation.start_flare_participant(workspace, state, "hospital-a")
    state.processes.append(new_record)
    workspace.save(state)
    lifecycle.state = state
    assert Path(workspace.kit_dir(state, "hospital-a")) == rotated.kit_dir
    assert "hospital-a" in wait_site_registered(workspace, state, new_record, timeout=90)

    job_id = lifecycle.submit(num_rounds=1, round_timeout=ROUND_TIMEOUT)
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and any(r["global_metrics"] for r in j["rounds"]))
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job) == {"hospital-a", "hospital-b"}
