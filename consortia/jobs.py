"""Job folders under ``jobs/``: find them and copy them with parameters changed before submission.

A job folder is a plain FLARE job (``meta.json`` plus ``app/config``) that references only installed classes, so it can
be submitted as it is from the stock admin console. ``prepare_job`` writes a copy with selected parameters changed
(for example fewer rounds for a test) and never edits the folder in the repository.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

SERVER_CONFIG = Path("app/config/config_fed_server.json")
CLIENT_CONFIG = Path("app/config/config_fed_client.json")
SERVER_PARAMETERS = (
    "num_rounds",
    "min_sites",
    "round_timeout",
    "wait_time_after_min_received",
    "max_update_norm",
    "aggregation",
    "site_selection",
)


class JobDefinitionError(ValueError):
    """Raised when a job folder is missing or a parameter cannot be applied."""


def jobs_dir() -> Path:
    """Return the folder of job definitions (``CONSORTIA_JOBS_DIR`` or ``jobs/`` of this checkout)."""
    configured = os.environ.get("CONSORTIA_JOBS_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "jobs"


def available_jobs() -> list[str]:
    """Return the names of the job folders."""
    root = jobs_dir()
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").is_file()) if root.is_dir() else []


def job_path(name: str) -> Path:
    """Return the folder of job ``name``.

    Raises:
        JobDefinitionError: naming the available jobs when ``name`` is unknown.
    """
    path = jobs_dir() / name
    if not (path / "meta.json").is_file():
        raise JobDefinitionError(f"unknown job {name!r}: available jobs are {', '.join(available_jobs()) or 'none'}")
    return path


def prepare_job(name: str, destination: Path, *, job_name: str | None = None, **parameters: Any) -> Path:
    """Copy job ``name`` into ``destination`` with server workflow parameters and script arguments replaced.

    Args:
        name: job folder under ``jobs/``.
        destination: folder to create the copy in (the copy is ``destination/<job_name or name>``).
        job_name: name recorded in the job's ``meta.json``.
        parameters: server workflow arguments (``num_rounds``, ``min_sites``, ...) or ``script_args`` for sites.

    Raises:
        JobDefinitionError: when a parameter is not known to this job.
    """
    source = job_path(name)
    target = Path(destination) / (job_name or name)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    if job_name:
        meta = json.loads((target / "meta.json").read_text(encoding="utf-8"))
        meta["name"] = job_name
        (target / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    server_updates = {k: v for k, v in parameters.items() if k in SERVER_PARAMETERS}
    client_updates = {k: v for k, v in parameters.items() if k == "script_args"}
    unknown = set(parameters) - set(server_updates) - set(client_updates)
    if unknown:
        raise JobDefinitionError(
            f"unknown job parameters {sorted(unknown)}: use {', '.join(SERVER_PARAMETERS)} or script_args"
        )
    if server_updates:
        _update_component_args(target / SERVER_CONFIG, "workflows", server_updates)
    if client_updates:
        _update_component_args(target / CLIENT_CONFIG, "executors", client_updates)
    return target


def _update_component_args(config_file: Path, section: str, updates: dict[str, Any]) -> None:
    config = json.loads(config_file.read_text(encoding="utf-8"))
    entries = config.get(section, [])
    if not entries:
        raise JobDefinitionError(f"{config_file} has no {section} to apply {sorted(updates)} to")
    component = entries[0].get("executor", entries[0])
    component.setdefault("args", {}).update(updates)
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
