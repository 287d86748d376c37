"""The one-command demo: provision, start, train on real data, compare, report, shut down.

Steps, each visible on the console:

1. provision the consortium file into the workspace (root CA, CA-signed kits, site data partitions);
2. start the admin service, the FLARE server and every site, and wait until all sites are registered;
3. submit ``jobs/fedavg_clinical`` through the FLARE API as the consortium's ``lead`` user;
4. follow the job round by round from the admin service's records (a progress bar);
5. download the global model and score it on the sites' pooled held-out rows next to a centralized model and
   one local-only model per site (computed here only for comparison);
6. write the job's signed audit report (PDF, JSON and CSV, with ``.sig.json`` signatures for PDF and CSV) and the
   service's public key from the admin service into ``workspace/reports``;
7. stop every process that step 2 started.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from consortia import federation
from consortia.baselines import read_sites, score_centralized, score_federated, score_local_only
from consortia.jobs import prepare_job
from provisioning.provision import provision
from provisioning.workspace import Workspace, WorkspaceState

DEMO_JOB = "fedavg_clinical"
HIDDEN = (32, 16)


class DemoError(RuntimeError):
    """Raised when a demo step fails; the message names the step and what to check."""


@dataclass
class DemoResult:
    """Outcome of a demo run: job, rounds, comparison and report paths."""

    job_id: str
    status: str
    rounds: list[dict[str, Any]]
    report_json: Path
    report_csv: Path
    report_pdf: Path
    report_signatures: list[Path]
    public_key: Path
    comparison: dict[str, dict[str, Any]]


class AdminClient:
    """Minimal client of the admin service's read API, authenticated with the workspace's API token."""

    def __init__(self, workspace: Workspace, state: WorkspaceState) -> None:
        self.base = f"http://127.0.0.1:{state.api_port}/api/v1"
        token = workspace.read_secret(workspace.api_token_file)
        self.headers = {"Authorization": f"Bearer {token}"}

    def job(self, job_id: str) -> dict[str, Any] | None:
        response = httpx.get(f"{self.base}/jobs/{job_id}", headers=self.headers, timeout=10.0)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def signed_report(self, job_id: str, fmt: str) -> httpx.Response:
        response = httpx.get(
            f"{self.base}/reports/jobs/{job_id}", params={"format": fmt}, headers=self.headers, timeout=60.0
        )
        return response.raise_for_status()

    def public_key(self) -> bytes:
        return httpx.get(f"{self.base}/reports/public-key", timeout=10.0).raise_for_status().content


def run_demo(
    consortium_file: Path,
    workspace_dir: Path,
    *,
    num_rounds: int = 5,
    console: Console | None = None,
    job_timeout: float = 600.0,
) -> DemoResult:
    """Run the whole demo and return its outcome; the federation is always shut down before returning."""
    console = console or Console()
    workspace = Workspace(workspace_dir)
    if workspace.exists() and federation.is_running(workspace.load()):
        raise DemoError(f"a federation from {workspace.root} is still running: run 'consortia down' first")

    with console.status("Provisioning the consortium (root CA, CA-signed kits, site data)"):
        # A previous demo's workspace (its audit database and reports) is kept as <workspace>.previous.
        result = provision(consortium_file, workspace_dir, force=True)
    state = result.state
    console.print(f"[green]Provisioned[/] {len(state.sites)} sites into {state.kits_dir}")

    try:
        with console.status("Starting the federation") as status:
            federation.up(workspace, progress=lambda message: status.update(message.capitalize()))
        console.print(f"[green]Federation up:[/] server {state.server_name}, sites {', '.join(state.sites)}")
        job_id = _submit(workspace, state, num_rounds)
        console.print(f"Submitted job [bold]{job_id}[/] as {state.lead_user} through the FLARE API")
        admin = AdminClient(workspace, state)
        final = _follow(admin, workspace, state, job_id, num_rounds, console, job_timeout)
        comparison = _compare(workspace, state, job_id, console)
        reports = _write_reports(admin, workspace, job_id)
    finally:
        with console.status("Stopping the federation"):
            federation.down(workspace)
    console.print("[green]Federation stopped.[/]")
    return DemoResult(
        job_id=job_id,
        status=final["status"],
        rounds=final.get("rounds", []),
        report_json=reports["json"],
        report_csv=reports["csv"],
        report_pdf=reports["pdf"],
        report_signatures=[reports["csv.sig"], reports["pdf.sig"]],
        public_key=reports["public_key"],
        comparison=comparison,
    )


def _submit(workspace: Workspace, state: WorkspaceState, num_rounds: int) -> str:
    if not state.lead_user:
        raise DemoError("the consortium file has no user with role 'lead' to submit the demo job")
    with tempfile.TemporaryDirectory(dir=workspace.root) as scratch:
        job_folder = prepare_job(DEMO_JOB, Path(scratch), num_rounds=num_rounds)
        with federation.flare_session(workspace, state, state.lead_user) as session:
            return session.submit_job(str(job_folder))


def _follow(
    admin: AdminClient,
    workspace: Workspace,
    state: WorkspaceState,
    job_id: str,
    num_rounds: int,
    console: Console,
    timeout: float,
) -> dict[str, Any]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    job: dict[str, Any] | None = None
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("Rounds", total=num_rounds)
        while time.monotonic() < deadline:
            job = admin.job(job_id)
            if job is not None:
                completed = [r for r in job["rounds"] if r["round"] < num_rounds and r["global_metrics"] is not None]
                auc = completed[-1]["global_metrics"].get("roc_auc") if completed else None
                label = f"Rounds ({job['status']}" + (f", global AUC {auc:.3f})" if auc is not None else ")")
                progress.update(task, completed=len(completed), description=label)
                if job["status"].startswith("FINISHED") and _final_round_recorded(job, num_rounds):
                    break
            time.sleep(1.0)
    if job is None or not job["status"].startswith("FINISHED"):
        logs = ", ".join(str(workspace.logs_dir / f"{name}.log") for name in [state.server_name, *state.sites])
        raise DemoError(f"job {job_id} did not finish within {timeout:.0f} s; see {logs}")
    if job["status"] != "FINISHED:COMPLETED":
        raise DemoError(f"job {job_id} ended with status {job['status']}; see {workspace.logs_dir}")
    return job


def _final_round_recorded(job: dict[str, Any], num_rounds: int) -> bool:
    # The last events can reach the service a moment after FLARE marks the job finished.
    return any(r["round"] == num_rounds and r["global_metrics"] for r in job["rounds"])


def _compare(workspace: Workspace, state: WorkspaceState, job_id: str, console: Console) -> dict[str, dict[str, Any]]:
    from app_custom.site.training import LocalTrainingConfig

    with console.status("Scoring the global model against centralized and local-only models"):
        params = _download_global_model(workspace, state, job_id)
        sites = read_sites({site: workspace.kit_dir(state, site) / "data" for site in state.sites})
        budget = LocalTrainingConfig(local_epochs=2 * 5, learning_rate=0.002, seed=7)
        comparison = {"federated (FedAvg)": score_federated(sites, params, HIDDEN)}
        comparison["centralized (union of sites)"] = score_centralized(sites, budget, HIDDEN)
        for site, metrics in score_local_only(sites, budget, HIDDEN).items():
            comparison[f"local only: {site}"] = metrics
    return comparison


def _download_global_model(workspace: Workspace, state: WorkspaceState, job_id: str) -> dict[str, np.ndarray]:
    destination = workspace.root / "results"
    destination.mkdir(exist_ok=True)
    with federation.flare_session(workspace, state, state.lead_user or state.service_identity) as session:
        result_dir = Path(session.download_job_result(job_id, destination=str(destination)))
    candidates = sorted(result_dir.rglob("FL_global_model.pt"))
    if not candidates:
        raise DemoError(f"job {job_id} result in {result_dir} contains no FL_global_model.pt")
    saved = torch.load(candidates[0], map_location="cpu", weights_only=True)
    state_dict = saved.get("model", saved) if isinstance(saved, dict) else saved
    return {key: np.asarray(value) for key, value in state_dict.items()}


def _write_reports(admin: AdminClient, workspace: Workspace, job_id: str) -> dict[str, Path]:
    """Download the signed job report as JSON, CSV and PDF, with a ``.sig.json`` beside CSV and PDF.

    The service's public key is saved too, so ``consortia report verify FILE --public-key KEY`` works offline.
    """
    from consortia.cli_audit import decode_signature_header

    workspace.reports_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for fmt in ("json", "csv", "pdf"):
        response = admin.signed_report(job_id, fmt)
        path = workspace.reports_dir / f"job-{job_id}-report.{fmt}"
        path.write_bytes(response.content)
        paths[fmt] = path
        if fmt != "json":
            signature = Path(f"{path}.sig.json")
            signature.write_text(decode_signature_header(response.headers["Consortia-Report-Signature"]))
            paths[f"{fmt}.sig"] = signature
    paths["public_key"] = workspace.reports_dir / "report-signing-key.pub.pem"
    paths["public_key"].write_bytes(admin.public_key())
    return paths


def render_outcome(result: DemoResult, console: Console) -> None:
    """Print the global AUC by round, the comparison table and the report paths."""
    rounds = Table(title="Global model by round (mean over sites' held-out splits, weighted by size)")
    for column in ("after round", "ROC AUC", "accuracy", "loss", "sites aggregated"):
        rounds.add_column(column, justify="right")
    by_round = {entry["round"]: entry for entry in result.rounds}
    for round_number in sorted(by_round):
        metrics = by_round[round_number].get("global_metrics") or {}
        # Round r's global metrics evaluate the model the sites received at round r, i.e. the aggregate of the
        # contributions of round r - 1.
        previous = by_round.get(round_number - 1, {}).get("contributions", [])
        accepted = str(sum(1 for c in previous if c["accepted"])) if round_number > 0 else "-"
        label = "initial model" if round_number == 0 else str(round_number)
        rounds.add_row(
            label, _fmt(metrics.get("roc_auc")), _fmt(metrics.get("accuracy")), _fmt(metrics.get("loss")), accepted
        )
    console.print(rounds)

    comparison = Table(title="Pooled held-out rows of all sites")
    for column in ("model", "ROC AUC", "accuracy", "balanced accuracy"):
        comparison.add_column(column, justify="right" if column != "model" else "left")
    for name, metrics in result.comparison.items():
        comparison.add_row(
            name, _fmt(metrics.get("roc_auc")), _fmt(metrics.get("accuracy")), _fmt(metrics.get("balanced_accuracy"))
        )
    console.print(comparison)
    console.print(f"Job {result.job_id}: [bold]{result.status}[/]")
    console.print("Signed audit report:")
    # Paths are printed unwrapped so they can be copied from a narrow terminal.
    for path in (result.report_pdf, result.report_json, result.report_csv, *result.report_signatures):
        console.print(f"  {path}", soft_wrap=True)
    console.print(f"  public key: {result.public_key}", soft_wrap=True)
    console.print(
        f"Check it offline: consortia report verify {result.report_pdf} --public-key {result.public_key}", soft_wrap=True
    )


def _fmt(value: Any) -> str:
    return "undefined" if value is None else f"{value:.3f}"
