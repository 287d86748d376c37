"""Every algorithm job runs on the provisioned federation, and a site that dies mid-job does not hang it."""

from __future__ import annotations

import time

import pytest

from consortia import federation

pytestmark = pytest.mark.integration


def finished(job: dict) -> bool:
    return job["status"].startswith("FINISHED")


@pytest.mark.parametrize("job_name", ["fedprox_clinical", "fed_focal_clinical"])
def test_algorithm_job_completes(running_federation, job_name):
    job_id = running_federation.submit(job_name, num_rounds=1)
    job = running_federation.wait_for(job_id, finished, timeout=240)
    assert job["status"] == "FINISHED:COMPLETED"
    round_zero = next(r for r in job["rounds"] if r["round"] == 0)
    assert {c["site"] for c in round_zero["contributions"] if c["accepted"]} == {"hospital-a", "hospital-b"}


def test_catfedavg_requests_selected_sites_only(running_federation):
    job_id = running_federation.submit(
        "catfedavg_clinical", num_rounds=2, site_selection={"variant": "budget", "budget": 1}
    )
    job = running_federation.wait_for(job_id, finished, timeout=240)
    assert job["status"] == "FINISHED:COMPLETED"
    for round_number in (0, 1):
        entry = next(r for r in job["rounds"] if r["round"] == round_number)
        assert len([c for c in entry["contributions"] if c["accepted"]]) == 1


def test_dead_site_does_not_hang_job(running_federation):
    """k-of-n: with min_sites=1 a site killed mid-job is reported as not responding and the job completes."""
    fed = running_federation
    # Round 0 includes starting each site's training script, so its timeout is generous; later rounds close 5 s
    # after the live site answers. Twenty local epochs make each round last seconds, so the kill lands mid-job.
    job_id = fed.submit(
        num_rounds=6,
        min_sites=1,
        round_timeout=90,
        wait_time_after_min_received=5,
        script_args="--local-epochs 20 --learning-rate 0.002 --hidden 32,16",
    )
    fed.wait_for(job_id, lambda j: any(c["accepted"] for r in j["rounds"] for c in r["contributions"]), timeout=240)
    victim = next(p for p in fed.state.processes if p.name == "hospital-b")
    started = time.monotonic()
    federation.stop_process(victim, grace=1.0)
    try:
        job = fed.wait_for(job_id, finished, timeout=240)
        elapsed = time.monotonic() - started
    finally:
        replacement = federation.start_flare_participant(fed.workspace, fed.state, "hospital-b")
        fed.state.processes = [p for p in fed.state.processes if p.name != "hospital-b"] + [replacement]
        fed.workspace.save(fed.state)
        federation.wait_sites_registered(fed.workspace, fed.state, {"hospital-b": replacement}, timeout=90)
    assert job["status"] == "FINISHED:COMPLETED"
    assert elapsed < 200, "the job waited for the dead site instead of closing the round at round_timeout"
    rejected = [c for r in job["rounds"] for c in r["contributions"] if not c["accepted"]]
    assert any(c["site"] == "hospital-b" and c["reason_code"] in ("no_response", "site_error") for c in rejected)
    last_round = next(r for r in job["rounds"] if r["round"] == 5)
    assert [c["site"] for c in last_round["contributions"] if c["accepted"]] == ["hospital-a"]
