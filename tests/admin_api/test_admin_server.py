"""End-to-end tests of ``python -m admin_api``: a real uvicorn process on 127.0.0.1, stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from admin_test_support import API_TOKEN, EVENT_TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(database_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONSORTIA_")}
    env.update(
        CONSORTIA_DATABASE_URL=database_url,
        CONSORTIA_EVENT_TOKEN=EVENT_TOKEN,
        CONSORTIA_API_TOKEN=API_TOKEN,
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]


@contextmanager
def running_service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    """Start the service on a free loopback port, wait for /readyz, and stop it by PID afterwards."""
    port = free_port()
    log_path = tmp_path / "admin.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "admin_api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=service_env(database_url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    started = Service(process=process, base_url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{started.base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail(f"admin service did not become ready; log:\n{log_path.read_text()}")
        yield started
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    with running_service(database_url, tmp_path) as started:
        yield started


def test_concurrent_http_writers(service: Service) -> None:
    num_writers = 50
    barrier = threading.Barrier(num_writers)
    statuses: list[int] = []
    errors: list[BaseException] = []

    def post_one(index: int) -> None:
        event = {
            "schema_version": 1,
            "event_id": str(uuid.uuid4()),
            "type": "contribution.accepted",
            "occurred_at": datetime.now(UTC).isoformat(),
            "job_id": "job-http",
            "site": f"site-{index % 7}",
            "round": index // 7,
            "payload": {"num_examples": 10 + index, "metrics": {"loss": 1.0 / (index + 1)}},
        }
        try:
            with httpx.Client(base_url=service.base_url, timeout=60) as client:
                barrier.wait(timeout=30)
                response = client.post("/api/v1/events", json=event, headers={"Authorization": f"Bearer {EVENT_TOKEN}"})
            statuses.append(response.status_code)
        except BaseException as exc:  # noqa: BLE001  # reported below, so one failure does not hang the others
            errors.append(exc)

    threads = [threading.Thread(target=post_one, args=(index,)) for index in range(num_writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    assert statuses == [201] * num_writers
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    verification = httpx.get(f"{service.base_url}/api/v1/audit/verify", headers=headers).json()
    assert verification["ok"] is True
    assert verification["num_events"] == num_writers
    job = httpx.get(f"{service.base_url}/api/v1/jobs/job-http", headers=headers).json()
    assert sum(len(r["contributions"]) for r in job["rounds"]) == num_writers


def test_logs_are_json_lines(tmp_path: Path) -> None:
    with running_service(f"sqlite:///{tmp_path}/admin.sqlite", tmp_path) as service:
        response = httpx.get(f"{service.base_url}/api/v1/jobs", headers={"X-Request-ID": "probe-42"})
        assert response.status_code == 401
        service.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down cleanly, then re-raises the signal, so the exit status is -SIGTERM.
        assert service.process.wait(timeout=20) == -signal.SIGTERM

    lines = service.log_lines()
    access = [line for line in lines if line.get("request_id") == "probe-42" and line["logger"] == "admin_api.access"]
    assert len(access) == 1
    assert access[0]["status"] == 401
    messages = [str(line["message"]) for line in lines]
    assert any("database schema upgraded" in message for message in messages)
    assert "Application shutdown complete." in messages
    assert EVENT_TOKEN not in service.log_path.read_text()


def test_invalid_settings_exit_2(tmp_path: Path) -> None:
    env = service_env(f"sqlite:///{tmp_path}/x.sqlite")
    env["CONSORTIA_EVENT_TOKEN"] = "changeme"
    result = subprocess.run(
        [sys.executable, "-m", "admin_api", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    message = json.loads(result.stderr.decode().strip().splitlines()[-1])["message"]
    assert "CONSORTIA_EVENT_TOKEN" in message
    assert "changeme" not in message.replace("placeholder text 'changeme'", "")
