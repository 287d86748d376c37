"""Kit lifecycle on a real federation: a site added while running trains, a revoked site stays out, and a site's
policy rejects a job it does not accept.

The module starts its own federation (server, admin service, two sites, later a third) so that adding and revoking a
site cannot disturb the session's shared federation. The order of the tests matters and is the story: policy
rejection with two sites, onboarding a third, then revoking it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import yaml

from consortia import federation
from consortia.cli_lifecycle import wait_site_registered
from provisioning.onboarding import add_site, existing_fingerprints
from provisioning.provision import provision
from provisioning.revocation import revoke_site

from .conftest import Federation, two_site_consortium

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 120


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("lifecycle")
    path = two_site_consortium(folder)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["project"] = "consortia_lifecycle"
    data["sites"][1]["policy"] = {"accepted_jobs": ["fedavg_*"]}
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


def test_policy_rejection_audited(lifecycle):
    job_id = lifecycle.submit(job_name="unapproved_study", num_rounds=1, round_timeout=ROUND_TIMEOUT)
    job = lifecycle.wait_for(job_id, lambda j: finished(j) and bool(j["rounds"]), timeout=120)
    assert job["status"] == "FINISHED:FAILED_TO_RUN"
    rejected = [c for r in job["rounds"] for c in r["contributions"] if not c["accepted"]]
    assert [(c["site"], c["reason_code"]) for c in rejected] == [("hospital-b", "site_policy")]
    assert "job 'unapproved_study' is not in this site's accepted_jobs" in rejected[0]["reason"]
    with federation.flare_session(lifecycle.workspace, lifecycle.state, lifecycle.state.lead_user) as session:
        detail = session.get_job_meta(job_id)["job_deploy_detail"]
    assert any(line.startswith("hospital-b: ") and "consortia site policy" in line for line in detail), detail


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
