import sys
from contextlib import contextmanager

import pytest

from consortia import federation
from provisioning.workspace import ProcessRecord, Workspace, WorkspaceState


def spawn_sleeper(tmp_path, name="sleeper") -> ProcessRecord:
    workspace = Workspace(tmp_path)
    return federation._spawn(name, [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path, {}, workspace)


def test_stop_process_ends_group(tmp_path):
    record = spawn_sleeper(tmp_path)
    assert record.is_alive()
    federation.stop_process(record, grace=5)
    assert not record.is_alive()


def test_reused_pid_left_alone(tmp_path):
    record = spawn_sleeper(tmp_path)
    impostor = ProcessRecord(name="x", pid=record.pid, log_file="", started_at="", start_ticks="1")
    federation.stop_process(impostor, grace=1)
    assert record.is_alive(), "a PID whose start time differs from the recorded one must not be signalled"
    federation.stop_process(record, grace=5)


def test_sigterm_ignored_then_killed(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    record = federation._spawn("stubborn", [sys.executable, "-c", code], tmp_path, {}, Workspace(tmp_path))
    import time

    time.sleep(0.5)
    federation.stop_process(record, grace=1)
    assert not record.is_alive()


def state_for(tmp_path, sites) -> WorkspaceState:
    return WorkspaceState(
        project="p", server_name="localhost", fed_learn_port=1, admin_port=2, api_port=3, kits_dir=str(tmp_path),
        sites=sites, site_orgs={}, users={}, service_identity="service@x.org", lead_user=None,
    )


def test_missing_site_named_with_log(tmp_path, monkeypatch):
    class Session:
        def get_system_info(self):
            class Info:
                client_info = [type("C", (), {"name": "hospital-a"})()]

            return Info()

    @contextmanager
    def fake_session(*args, **kwargs):
        yield Session()

    monkeypatch.setattr(federation, "flare_session", fake_session)
    log = tmp_path / "hospital-b.log"
    log.write_text("ClientConnectorCertificateError: certificate verify failed\n")
    records = {
        "hospital-a": ProcessRecord("hospital-a", 1, "", ""),
        "hospital-b": ProcessRecord("hospital-b", 999999, str(log), ""),
    }
    with pytest.raises(federation.FederationError) as excinfo:
        federation.wait_sites_registered(Workspace(tmp_path), state_for(tmp_path, ["hospital-a", "hospital-b"]), records, timeout=1)
    message = str(excinfo.value)
    assert "['hospital-b']" in message
    assert "exited" in message
    assert "certificate verify failed" in message


def test_up_refuses_unprovisioned_workspace(tmp_path):
    with pytest.raises(Exception, match="consortia provision"):
        federation.up(Workspace(tmp_path / "empty"))


def test_corrupt_state_named(tmp_path):
    (tmp_path / "state.json").write_text('{"version": 1, "project": ')
    with pytest.raises(Exception) as excinfo:
        Workspace(tmp_path).load()
    assert "state.json is corrupt" in str(excinfo.value)
    assert "provision --force" in str(excinfo.value)


def test_state_missing_field_named(tmp_path):
    (tmp_path / "state.json").write_text('{"version": 1, "project": "p"}')
    with pytest.raises(Exception, match="is corrupt"):
        Workspace(tmp_path).load()


def test_stop_process_ends_other_session_child(tmp_path):
    """A child started in its own session (as FLARE starts job workers) is stopped with its parent."""
    import psutil

    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "time.sleep(60)"
    )
    record = federation._spawn("parent", [sys.executable, "-c", code], tmp_path, {}, Workspace(tmp_path))
    import time

    deadline = time.monotonic() + 10
    while not psutil.Process(record.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = psutil.Process(record.pid).children()[0]
    federation.stop_process(record, grace=5)
    assert not record.is_alive()
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
