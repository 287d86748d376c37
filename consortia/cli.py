"""The ``consortia`` command line: provision, start and stop a federation, run the demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from consortia import federation
from consortia.cli_audit import audit_app, report_app
from consortia.cli_kit import kit_app, site_app
from consortia.cli_users import users_app
from provisioning.schema import ConsortiumFileError
from provisioning.workspace import Workspace, WorkspaceError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Consortia: federated learning on NVIDIA FLARE.")
app.add_typer(kit_app, name="kit")
app.add_typer(site_app, name="site")
app.add_typer(audit_app, name="audit")
app.add_typer(report_app, name="report")
app.add_typer(users_app, name="users")
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

DEFAULT_CONSORTIUM = Path("provisioning/consortium.yml")
DEFAULT_WORKSPACE = Path("workspace")

WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="workspace folder (git-ignored)")]
ConsortiumOption = Annotated[Path, typer.Option("--consortium", "-c", help="consortium file to provision")]

_EXPECTED_ERRORS: tuple[type[Exception], ...] = (ConsortiumFileError, WorkspaceError, federation.FederationError)


def _fail(message: str) -> None:
    err_console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log debug details")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def provision(
    consortium: ConsortiumOption = DEFAULT_CONSORTIUM,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    force: Annotated[bool, typer.Option(help="replace an existing workspace (deletes its CA, kits and database)")] = False,
    he: Annotated[bool, typer.Option("--he", help="also create CKKS contexts for homomorphic-encryption jobs")] = False,
) -> None:
    """Create the root CA and a CA-signed startup kit for every participant, and each site's data."""
    from provisioning.provision import ProvisioningError
    from provisioning.provision import provision as run_provision

    try:
        result = run_provision(consortium, workspace, force=force, he=he)
    except _EXPECTED_ERRORS + (ProvisioningError,) as exc:
        _fail(str(exc))
        return
    state = result.state
    console.print(f"[green]Provisioned[/] project {state.project} into {state.kits_dir}")
    console.print(f"  server {state.server_name}: FL port {state.fed_learn_port}, admin port {state.admin_port}")
    console.print(f"  sites: {', '.join(state.sites)}; admin service port {state.api_port}")
    console.print("  The root CA key is in the provisioning state folder: keep it off shared disks.")


@app.command()
def up(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Start the admin service, the FLARE server and every site, and wait until all sites are registered."""
    from provisioning.provision import ProvisioningError

    ws = Workspace(workspace)
    try:
        with console.status("Starting the federation") as status:
            state = federation.up(ws, progress=lambda message: status.update(message.capitalize()))
    except _EXPECTED_ERRORS + (ProvisioningError,) as exc:
        _fail(str(exc))
        return
    console.print(f"[green]Federation up[/]: sites {', '.join(state.sites)} registered.")
    console.print(f"Admin service: http://127.0.0.1:{state.api_port}  (API token in {ws.api_token_file})")


@app.command()
def down(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Stop exactly the processes that 'consortia up' started."""
    try:
        stopped = federation.down(Workspace(workspace))
    except _EXPECTED_ERRORS as exc:
        _fail(str(exc))
        return
    console.print(f"Stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status(workspace: WorkspaceOption = DEFAULT_WORKSPACE) -> None:
    """Show the processes of the federation, the sites registered with the server and recent jobs."""
    ws = Workspace(workspace)
    try:
        state = ws.load()
    except WorkspaceError as exc:
        _fail(str(exc))
        return
    processes = Table(title="Processes started by 'consortia up'")
    for column in ("name", "pid", "running", "log"):
        processes.add_column(column)
    for record in state.processes:
        processes.add_row(record.name, str(record.pid), "yes" if record.is_alive() else "no", record.log_file)
    console.print(processes if state.processes else "No processes recorded: the federation is down.")
    if not federation.is_running(state):
        return
    from app_custom.flare.revocation_guard import certificate_check_error

    check_error = certificate_check_error(ws.kit_dir(state, state.server_name))
    if check_error:
        console.print(Text(f"Server rejects every site: {check_error}", style="red"))
    try:
        with federation.flare_session(ws, state, state.service_identity, timeout=10) as session:
            sites = federation.registered_sites(session)
            jobs = session.list_jobs(detailed=False) or []
    except federation.FederationError as exc:
        _fail(str(exc))
        return
    console.print(f"Registered sites: {', '.join(sites) or 'none'}")
    missing = sorted(set(state.sites) - set(sites))
    if missing:
        console.print(f"[yellow]Not registered:[/] {', '.join(missing)}")
    dead = sorted(r.name for r in state.processes if r.name in sites and not r.is_alive())
    if dead:
        console.print(
            f"[yellow]Process ended but still registered:[/] {', '.join(dead)} "
            "(the server drops a site after its heartbeat times out; restart it or run 'consortia down')"
        )
    table = Table(title="Jobs")
    for column in ("job id", "name", "status", "submitted"):
        table.add_column(column)
    for job in jobs[-10:]:
        table.add_row(job.get("job_id", ""), job.get("job_name", ""), job.get("status", ""), str(job.get("submit_time", "")))
    console.print(table)


@app.command()
def demo(
    consortium: ConsortiumOption = DEFAULT_CONSORTIUM,
    workspace: WorkspaceOption = DEFAULT_WORKSPACE,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="FedAvg rounds")] = 5,
) -> None:
    """Provision, start the federation, train on real clinical data, compare, write the audit report, stop."""
    from consortia.demo import DemoError, render_outcome, run_demo
    from provisioning.provision import ProvisioningError

    try:
        result = run_demo(consortium, workspace, num_rounds=rounds, console=console)
    except _EXPECTED_ERRORS + (DemoError, ProvisioningError) as exc:
        _fail(str(exc))
        return
    render_outcome(result, console)


if __name__ == "__main__":
    app()
