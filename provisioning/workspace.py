"""Layout and state of a Consortia workspace folder (default ``./workspace``, git-ignored).

Everything a federation writes lives under one folder so nothing leaks into FLARE's host-wide defaults
(``/tmp/nvflare``, ``~/.nvflare``)::

    workspace/
      consortium.yml        copy of the consortium file that was provisioned
      state.json            ports, participants, kit paths and the PIDs of processes `consortia up` started
      provision/            FLARE provisioning workspace (root CA key in provision/<project>/state: protect it)
      secrets/              event and API tokens (mode 0600)
      runtime/server/       job store, snapshots, event spool of the server
      admin.sqlite          admin service database (SQLite default)
      logs/                 stdout/stderr of every process started by `consortia up`
      reports/              audit reports
      home/                 HOME of started processes, so FLARE's ~/.nvflare stays inside the workspace
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_VERSION = 1


class WorkspaceError(RuntimeError):
    """Raised when a workspace is missing, incomplete or from an incompatible version."""


@dataclass
class ProcessRecord:
    """A process started by ``consortia up``: its role, PID and log file."""

    name: str
    pid: int
    log_file: str
    started_at: str
    start_ticks: str | None = None

    def is_alive(self) -> bool:
        """Return whether the process still runs; a zombie or another user's reused PID counts as gone."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        try:
            status = Path(f"/proc/{self.pid}/stat").read_text().split()[2]
        except (OSError, IndexError):
            return True
        return status != "Z"


@dataclass
class WorkspaceState:
    """State that provisioning and ``consortia up`` record about a workspace."""

    project: str
    server_name: str
    fed_learn_port: int
    admin_port: int
    api_port: int
    kits_dir: str
    sites: list[str]
    site_orgs: dict[str, str]
    users: dict[str, str]
    service_identity: str
    lead_user: str | None
    he: bool = False
    processes: list[ProcessRecord] = field(default_factory=list)
    # Kit folder of each participant provisioned after the first run (``consortia site add``, ``site rotate``).
    # Participants missing here keep their kit under ``kits_dir``; state files written before this field load as {}.
    kit_dirs: dict[str, str] = field(default_factory=dict)
    version: int = STATE_VERSION

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkspaceState:
        if data.get("version") != STATE_VERSION:
            raise WorkspaceError(
                f"workspace state version {data.get('version')!r} is not supported (expected {STATE_VERSION}); "
                "run 'consortia provision --force' to provision again"
            )
        processes = [ProcessRecord(**p) for p in data.pop("processes", [])]
        return cls(**data, processes=processes)


class Workspace:
    """Paths and state of one workspace folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def provision_dir(self) -> Path:
        return self.root / "provision"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "runtime"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def home_dir(self) -> Path:
        return self.root / "home"

    @property
    def database_file(self) -> Path:
        return self.root / "admin.sqlite"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database_file}"

    @property
    def event_token_file(self) -> Path:
        return self.secrets_dir / "event_token"

    @property
    def api_token_file(self) -> Path:
        return self.secrets_dir / "api_token"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def load(self) -> WorkspaceState:
        """Read ``state.json``.

        Raises:
            WorkspaceError: when the workspace was never provisioned.
        """
        if not self.state_file.is_file():
            raise WorkspaceError(f"no provisioned workspace at {self.root}: run 'consortia provision' first")
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, found {type(data).__name__}")
            return WorkspaceState.from_json(data)
        except WorkspaceError:
            raise
        except (ValueError, TypeError) as exc:
            raise WorkspaceError(
                f"workspace state {self.state_file} is corrupt ({exc}); stop any processes listed in it, then run "
                "'consortia provision --force' (the old workspace is kept as a .previous copy)"
            ) from None

    def save(self, state: WorkspaceState) -> None:
        """Write ``state.json`` atomically so a crash never leaves half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_file)

    def kit_dir(self, state: WorkspaceState, participant: str) -> Path:
        """Return the startup kit folder of a server, site or user."""
        if participant in state.kit_dirs:
            return Path(state.kit_dirs[participant])
        return Path(state.kits_dir) / participant

    def read_secret(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise WorkspaceError(f"secret file missing: {path}; run 'consortia provision' again") from None

    def write_new_secret(self, path: Path) -> str:
        """Create a random URL-safe token in ``path`` (mode 0600) unless one exists, and return it."""
        if path.is_file():
            return self.read_secret(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        return token
