"""Server crash: the FLARE server is killed with SIGKILL mid-job and restarted, and the admin service records the
job, which FLARE leaves RUNNING forever, as abandoned.

The module provisions and starts its own federation (admin service, server, one site), because killing the server
would break the jobs of the session's shared federation. The server and its job workers are killed by PID, and the
server is started again from its kit. The reconciler passes every second and must notice that no job process runs
the job and that the job started before the server's current start.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import pytest
import yaml

from admin_api.services.stuck_jobs import STUCK_JOB_ACTOR
from consortia import federation
from consortia.jobs import prepare_job
from provisioning.provision import provision
from provisioning.workspace import ProcessRecord

from .conftest import Federation, two_site_consortium

pytestmark = pytest.mark.integration

SITE = "hospital-a"
NUM_ROUNDS = 200
"""Far more rounds than the test waits for, so the job is still running when the server dies."""
RECONCILE_INTERVAL_S = "1"
ABANDONED = "FINISHED:ABANDONED"


def one_site_consortium(folder: Any) -> Any:
    path = two_site_consortium(folder)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["project"] = "consortia_crash"
    data["sites"] = [site for site in data["sites"] if site["name"] == SITE]
    data["users"] = [user for user in data["users"] if user["org"] in ("consortium", "hospital_a")]
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def kill_tree(record: ProcessRecord) -> dict[int, str]:
    """SIGKILL a recorded process and every descendant, collected before the first signal.

    Returns:
        The command line of each killed process, by PID.

    FLARE's job workers run in sessions of their own, so only the process tree finds them. Killing the parent first
    would orphan them before they could be listed.
    """
    victims = [psutil.Process(record.pid), *psutil.Process(record.pid).children(recursive=True)]
    command_lines = {process.pid: " ".join(process.cmdline()) for process in victims}
    for process in victims:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=10)
    try:
        os.waitpid(record.pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return command_lines


def stop_leftovers(pids: list[int]) -> None:
    """SIGKILL whichever of ``pids`` still runs. The PIDs were collected from processes this module started."""
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                process.kill()
        except psutil.NoSuchProcess:
            pass


def restart_server(fed: Federation) -> ProcessRecord:
    """Start the FLARE server from its kit again and replace its process record in the workspace state."""
    state = fed.state
    record = federation.start_flare_participant(fed.workspace, state, state.server_name)
    state.processes = [r for r in state.processes if r.name != state.server_name] + [record]
    fed.workspace.save(state)
    federation.wait_server_ready(state, record, timeout=90)
    return record


def submit_one_site_job(fed: Federation) -> str:
    """Submit a long FedAvg job whose meta.json asks for one site, because this federation has only one."""
    folder = prepare_job("fedavg_clinical", fed.scratch / "crash-job", num_rounds=NUM_ROUNDS, min_sites=1)
    meta_file = folder / "meta.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta["min_clients"] = 1
    meta_file.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    with federation.flare_session(fed.workspace, fed.state, fed.state.lead_user) as session:
        return str(session.submit_job(str(folder)))


def read_all_audit_events(fed: Federation) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        response = httpx.get(
            f"{fed.api}/audit/events", params={"limit": 500, "offset": len(events)}, headers=fed.headers, timeout=30
        )
        page = response.raise_for_status().json()
        events.extend(page["data"])
        if not page["data"] or len(events) >= page["count"]:
            return events


@pytest.fixture(scope="module")
def crash_federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    folder = tmp_path_factory.mktemp("server-crash")
    result = provision(one_site_consortium(folder), folder / "workspace")
    previous = os.environ.get("CONSORTIA_RECONCILE_INTERVAL_S")
    # The admin service reads its settings from the environment it inherits, so ours is restored once it started.
    os.environ["CONSORTIA_RECONCILE_INTERVAL_S"] = RECONCILE_INTERVAL_S
    fed: Federation | None = None
    try:
        state = federation.up(result.workspace)
        fed = Federation(workspace=result.workspace, state=state, scratch=folder)
    finally:
        if previous is None:
            os.environ.pop("CONSORTIA_RECONCILE_INTERVAL_S", None)
        else:
            os.environ["CONSORTIA_RECONCILE_INTERVAL_S"] = previous
    assert fed is not None  # up() either returned or raised out of this fixture
    try:
        yield fed
    finally:
        federation.down(result.workspace, fed.state)


@pytest.fixture(scope="module")
def crash(crash_federation: Federation) -> Iterator[dict[str, Any]]:
    """Run a job until a contribution is recorded, kill the server and its job workers, restart the server."""
    fed = crash_federation
    job_id = submit_one_site_job(fed)
    before_job = fed.wait_for(
        job_id, lambda j: j["status"] == "RUNNING" and any(r["contributions"] for r in j["rounds"]), timeout=240
    )
    before_events = read_all_audit_events(fed)

    (server,) = [r for r in fed.state.processes if r.name == fed.state.server_name]
    killed = kill_tree(server)
    try:
        workers = [command for command in killed.values() if f"-n {job_id}" in command]
        assert workers, f"no job worker of {job_id} among the killed server processes: {killed}"
        restart_server(fed)
        after_job = fed.wait_for(job_id, lambda j: j["status"] == ABANDONED, timeout=180)
        yield {"job_id": job_id, "before_job": before_job, "before_events": before_events, "after_job": after_job}
    finally:
        stop_leftovers(list(killed))


def test_stuck_job_abandoned(crash: dict[str, Any]) -> None:
    history = crash["after_job"]["status_history"]
    assert crash["before_job"]["status"] == "RUNNING"
    assert history[-1]["from_status"] == "RUNNING"
    assert history[-1]["to_status"] == ABANDONED
    assert history[-1]["source"] == "reconciler"


def test_abandon_audited_with_reason(crash_federation: Federation, crash: dict[str, Any]) -> None:
    response = httpx.get(
        f"{crash_federation.api}/audit/events",
        params={"action": "job.abandoned", "target": f"job:{crash['job_id']}"},
        headers=crash_federation.headers,
        timeout=30,
    )
    (event,) = response.raise_for_status().json()["data"]
    assert event["actor"] == STUCK_JOB_ACTOR
    assert "before the FLARE server's current start" in event["details"]["reason"]
    assert "no job process runs it" in event["details"]["reason"]
    assert event["details"]["status_change"]["to"] == ABANDONED


def test_chain_valid_after_crash(crash_federation: Federation, crash: dict[str, Any]) -> None:
    response = httpx.get(f"{crash_federation.api}/audit/verify", headers=crash_federation.headers, timeout=60)
    result = response.raise_for_status().json()
    assert result["ok"] is True
    assert result["first_bad_seq"] is None
    assert result["num_events"] > len(crash["before_events"])


def test_records_before_crash_kept(crash_federation: Federation, crash: dict[str, Any]) -> None:
    before_events = crash["before_events"]
    after_events = read_all_audit_events(crash_federation)
    assert after_events[: len(before_events)] == before_events

    before_job, after_job = crash["before_job"], crash["after_job"]
    assert after_job["status_history"][: len(before_job["status_history"])] == before_job["status_history"]
    before_rounds = {r["round"]: r for r in before_job["rounds"]}
    after_rounds = {r["round"]: r for r in after_job["rounds"]}
    for number, entry in before_rounds.items():
        assert number in after_rounds
        for contribution in entry["contributions"]:
            assert contribution in after_rounds[number]["contributions"]
