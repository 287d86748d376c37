"""One provisioned 2-site federation on 127.0.0.1 shared by the integration tests of a session.

It is a real FLARE deployment: a root CA, CA-signed kits, mutual TLS, the admin service on SQLite, the server and
two sites started from their kits. Every process is started by ``consortia up`` and stopped by PID at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from consortia import federation
from consortia.jobs import prepare_job
from provisioning.provision import provision
from provisioning.workspace import Workspace, WorkspaceState

ROOT = Path(__file__).resolve().parents[2]


def two_site_consortium(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "provisioning" / "consortium.yml").read_text(encoding="utf-8"))
    data["project"] = "consortia_it"
    data["sites"] = data["sites"][:2]
    data["users"] = [u for u in data["users"] if u["org"] in ("consortium", "hospital_a", "hospital_b")]
    path = tmp_path / "consortium.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclass
class Federation:
    """A running federation and helpers to use it from tests."""

    workspace: Workspace
    state: WorkspaceState
    scratch: Path

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.state.api_port}/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.workspace.read_secret(self.workspace.api_token_file)}"}

    def submit(self, job: str = "fedavg_clinical", user: str | None = None, **parameters: Any) -> str:
        folder = prepare_job(job, self.scratch / f"job-{time.monotonic_ns()}", **parameters)
        with federation.flare_session(self.workspace, self.state, user or self.state.lead_user) as session:
            return session.submit_job(str(folder))

    def job(self, job_id: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.api}/jobs/{job_id}", headers=self.headers, timeout=10)
        return None if response.status_code == 404 else response.raise_for_status().json()

    def wait_for(self, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and done(job):
                return job
            time.sleep(1.0)
        raise AssertionError(f"job {job_id} not done within {timeout} s; last record: {job}")


@pytest.fixture(scope="session")
def running_federation(tmp_path_factory) -> Iterator[Federation]:
    tmp_path = tmp_path_factory.mktemp("federation")
    result = provision(two_site_consortium(tmp_path), tmp_path / "workspace")
    state = federation.up(result.workspace)
    try:
        yield Federation(workspace=result.workspace, state=state, scratch=tmp_path)
    finally:
        federation.down(result.workspace)
