"""Start, watch and stop a provisioned federation on this machine: admin service, FLARE server and sites.

Each participant runs from its own CA-signed startup kit with FLARE's ``sub_start.sh --once`` (no watchdog loop, so a
crash is visible instead of silently restarted), in a new process group. The PID and start time of every process
are recorded in ``state.json``; ``consortia down`` signals exactly those process groups after checking that each PID
still belongs to the process that was started (a PID reused by another program is left alone).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from provisioning.provision import ensure_port_free
from provisioning.workspace import ProcessRecord, Workspace, WorkspaceState

logger = logging.getLogger(__name__)

ADMIN_SERVICE = "admin-service"

# FLARE's server waits this long (default 900 s) for a dead site's outcome after a job's workflow has ended, which
# keeps a finished job RUNNING for 15 minutes when a site died mid-job. Operators can override it in the environment.
CLIENT_OUTCOME_WAIT_S = "30"


class FederationError(RuntimeError):
    """Raised when the federation cannot be started, reached or stopped."""


def _process_start_ticks(pid: int) -> str | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19] if len(fields) > 19 else None


def _child_env(workspace: Workspace) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["HOME"] = str(workspace.home_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT", CLIENT_OUTCOME_WAIT_S)
    env.pop("NVFL_WORKSPACE", None)
    return env


def _spawn(name: str, command: list[str], cwd: Path, env: dict[str, str], workspace: Workspace) -> ProcessRecord:
    workspace.logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = workspace.logs_dir / f"{name}.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    started = datetime.now(UTC).isoformat()
    record = ProcessRecord(
        name=name, pid=process.pid, log_file=str(log_file), started_at=started, start_ticks=_process_start_ticks(process.pid)
    )
    logger.info("started %s (pid %d), log %s", name, process.pid, log_file)
    return record


def log_tail(path: str | Path, lines: int = 15) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it is missing."""
    try:
        content = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(content[-lines:])


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_admin_service(workspace: Workspace, state: WorkspaceState, timeout: float = 60.0) -> ProcessRecord:
    """Start the admin service on 127.0.0.1 and wait until ``/readyz`` returns 200."""
    ensure_port_free(state.api_port, "admin service")
    env = _child_env(workspace)
    env.update(
        {
            "CONSORTIA_DATABASE_URL": env.get("CONSORTIA_DATABASE_URL", workspace.database_url),
            "CONSORTIA_EVENT_TOKEN": workspace.read_secret(workspace.event_token_file),
            "CONSORTIA_API_TOKEN": workspace.read_secret(workspace.api_token_file),
            "CONSORTIA_WORKSPACE": str(workspace.root),
            "CONSORTIA_FLARE_ADMIN_KIT": str(workspace.kit_dir(state, state.service_identity)),
            "CONSORTIA_FLARE_ADMIN_USER": state.service_identity,
        }
    )
    command = [sys.executable, "-m", "admin_api", "--host", "127.0.0.1", "--port", str(state.api_port)]
    record = _spawn(ADMIN_SERVICE, command, workspace.root, env, workspace)
    url = f"http://127.0.0.1:{state.api_port}/readyz"

    def ready() -> bool:
        if not record.is_alive():
            return True
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    if not _wait_until(ready, timeout) or not record.is_alive():
        stop_process(record)
        raise FederationError(
            f"admin service did not become ready on port {state.api_port} within {timeout:.0f} s; "
            f"its log ({record.log_file}) ends with:\n{log_tail(record.log_file)}"
        )
    return record


def start_flare_participant(workspace: Workspace, state: WorkspaceState, name: str) -> ProcessRecord:
    """Start the FLARE server or a site from its startup kit."""
    kit = workspace.kit_dir(state, name)
    script = kit / "startup" / "sub_start.sh"
    if not script.is_file():
        raise FederationError(f"startup kit of {name} not found at {kit}; run 'consortia provision' first")
    return _spawn(name, ["bash", str(script), "--once"], kit, _child_env(workspace), workspace)


def wait_server_ready(state: WorkspaceState, record: ProcessRecord, timeout: float = 60.0) -> None:
    """Wait until the FLARE server accepts connections on its FL and admin ports."""

    def ready() -> bool:
        return not record.is_alive() or (_port_open(state.fed_learn_port) and _port_open(state.admin_port))

    if not _wait_until(ready, timeout) or not record.is_alive():
        raise FederationError(
            f"FLARE server did not start listening on ports {state.fed_learn_port}/{state.admin_port} within "
            f"{timeout:.0f} s; its log ({record.log_file}) ends with:\n{log_tail(record.log_file)}"
        )


@contextmanager
def flare_session(workspace: Workspace, state: WorkspaceState, user: str, timeout: float = 30.0) -> Iterator:
    """Open a FLARE API session as ``user`` with that user's admin kit, and close it afterwards."""
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    kit = workspace.kit_dir(state, user)
    if not kit.is_dir():
        raise FederationError(f"no admin kit for user {user!r} at {kit}")
    try:
        session = new_secure_session(user, str(kit), timeout=timeout)
    except Exception as exc:  # FLARE raises its own exception types without a common base
        raise FederationError(f"cannot open a FLARE admin session as {user}: {exc}") from exc
    try:
        yield session
    finally:
        session.close()


def registered_sites(session) -> list[str]:
    """Return the names of the sites currently registered with the server."""
    info = session.get_system_info()
    return sorted(client.name for client in info.client_info)


def wait_sites_registered(
    workspace: Workspace, state: WorkspaceState, records: dict[str, ProcessRecord], timeout: float = 90.0
) -> None:
    """Wait until every site has registered with the server.

    Raises:
        FederationError: naming each missing site, with the end of its log.
    """
    deadline = time.monotonic() + timeout
    registered: list[str] = []
    with flare_session(workspace, state, state.service_identity) as session:
        while time.monotonic() < deadline:
            registered = registered_sites(session)
            dead = [name for name, record in records.items() if not record.is_alive()]
            if set(state.sites) <= set(registered) or dead:
                break
            time.sleep(1.0)
    missing = [site for site in state.sites if site not in registered]
    if missing:
        details = "\n".join(
            f"- {site} ({'exited' if not records[site].is_alive() else 'running, not registered'}); "
            f"log {records[site].log_file} ends with:\n{log_tail(records[site].log_file, 8)}"
            for site in missing
        )
        raise FederationError(
            f"sites {missing} did not register with the server within {timeout:.0f} s "
            f"(registered: {registered or 'none'}):\n{details}"
        )


def is_running(state: WorkspaceState) -> bool:
    """Return whether any process recorded by ``consortia up`` still runs."""
    return any(_is_ours(record) for record in state.processes)


def _is_ours(record: ProcessRecord) -> bool:
    if not record.is_alive():
        return False
    return record.start_ticks is None or _process_start_ticks(record.pid) == record.start_ticks


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_process(record: ProcessRecord, grace: float = 15.0) -> None:
    """Stop a recorded process, its process group and every descendant: SIGTERM, then SIGKILL after ``grace`` s.

    FLARE starts each job's worker in a new session (``setsid``), outside the site's process group, so descendants
    are collected from the process tree before signalling; a killed site must not leave its job worker training.
    PIDs that are neither the recorded process nor its descendants are never signalled.
    """
    if not _is_ours(record):
        return
    children = _descendants(record.pid)
    try:
        os.killpg(record.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for child in children:
        try:
            child.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace)
    if _wait_until(lambda: not record.is_alive(), grace if alive else max(grace, 1.0), interval=0.2) and not alive:
        _reap(record.pid)
        return
    logger.warning("%s (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL", record.name, record.pid, grace)
    try:
        os.killpg(record.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    _wait_until(lambda: not record.is_alive(), 5.0, interval=0.2)
    _reap(record.pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def up(workspace: Workspace, *, site_timeout: float = 90.0, progress: Callable[[str], None] | None = None) -> WorkspaceState:
    """Start the admin service, the FLARE server and every site, and wait until all sites are registered.

    On any failure every process started so far is stopped again, so a failed ``up`` leaves nothing running.
    """
    state = workspace.load()
    if is_running(state):
        raise FederationError(f"the federation in {workspace.root} is already running: use 'consortia down' first")
    say = progress or (lambda message: None)
    for port, what in ((state.fed_learn_port, "FLARE server"), (state.admin_port, "FLARE admin port")):
        ensure_port_free(port, what)
    state.processes = []
    try:
        say("starting the admin service")
        state.processes.append(start_admin_service(workspace, state))
        workspace.save(state)
        say("starting the FLARE server")
        server = start_flare_participant(workspace, state, state.server_name)
        state.processes.append(server)
        workspace.save(state)
        wait_server_ready(state, server)
        sites = {}
        for site in state.sites:
            say(f"starting site {site}")
            sites[site] = start_flare_participant(workspace, state, site)
            state.processes.append(sites[site])
        workspace.save(state)
        say("waiting for sites to register")
        wait_sites_registered(workspace, state, sites, timeout=site_timeout)
    except BaseException:
        down(workspace, state)
        raise
    return state


def down(workspace: Workspace, state: WorkspaceState | None = None) -> list[str]:
    """Stop every process recorded by ``up`` (sites first, then server, then the admin service)."""
    state = state or workspace.load()
    stopped = []
    for record in reversed(state.processes):
        if _is_ours(record):
            stop_process(record)
            stopped.append(record.name)
    state.processes = []
    workspace.save(state)
    return stopped
