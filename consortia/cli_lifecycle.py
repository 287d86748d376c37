"""``consortia kit list`` and ``consortia site add|start|revoke|rotate``: the certificate lifecycle of a consortium.

The commands register on the ``kit`` and ``site`` command groups of ``consortia.cli_kit`` and exit 1 on any failure
(``kit list`` also when a certificate expires within ``--warn-days``).
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from consortia.cli_kit import _fail, console, kit_app, say, site_app
from provisioning.workspace import ProcessRecord, Workspace, WorkspaceError, WorkspaceState

WorkspaceOption = Annotated[Path, typer.Option("--workspace", "-w", help="provisioned workspace folder")]


@kit_app.command("list")
def list_kits(
    workspace: WorkspaceOption = Path("workspace"),
    warn_days: Annotated[
        int, typer.Option("--warn-days", min=0, help="warn when a certificate expires within this many days")
    ] = 30,
) -> None:
    """List every participant's certificate with its expiry; exit 1 when one expires within --warn-days."""
    from provisioning.revocation import RevocationError, list_certificates

    try:
        statuses = list_certificates(Workspace(workspace), warn_days=warn_days)
    except (RevocationError, WorkspaceError, ValueError) as exc:
        _fail(str(exc))
        return
    table = Table(title=f"Certificates in {workspace}")
    for column in ("participant", "role", "expires", "days left", "state", "SHA-256"):
        table.add_column(column)
    for status in statuses:
        state = "revoked" if status.revoked else ("expiring" if status.expiring else "valid")
        style = "red" if status.revoked or status.days_left < 0 else ("yellow" if status.expiring else "")
        table.add_row(
            status.participant,
            status.role,
            status.not_valid_after.date().isoformat(),
            str(status.days_left),
            Text(state, style=style),
            status.sha256,
        )
    console.print(table)
    expiring = [s.participant for s in statuses if s.expiring and not s.revoked]
    if expiring:
        say(
            f"{', '.join(expiring)} expire within {warn_days} days: rotate them with 'consortia site rotate'",
            label="warning:",
            style="yellow",
        )
        raise typer.Exit(code=1)


@site_app.command("add")
def add_site(
    name: Annotated[str, typer.Argument(help="the new site's name, for example hospital-d")],
    org: Annotated[str, typer.Option("--org", help="the site's organisation (letters, digits and _)")],
    workspace: WorkspaceOption = Path("workspace"),
) -> None:
    """Provision a kit for a new site without re-issuing any other kit."""
    from provisioning.onboarding import add_site as run_add_site
    from provisioning.provision import ProvisioningError
    from provisioning.schema import ConsortiumFileError

    try:
        site = run_add_site(Workspace(workspace), name, org)
    except (ProvisioningError, ConsortiumFileError, WorkspaceError) as exc:
        _fail(str(exc))
        return
    say(
        f"Added site {site.name!r} (org {site.org}): kit {site.kit_dir}, certificate SHA-256 "
        f"{site.certificate_fingerprint}; {site.unchanged_participants} existing certificates unchanged."
    )
    if site.data_summary is not None:
        say(
            f"Demo data: {int(site.data_summary['train_rows'])} training and {int(site.data_summary['test_rows'])} "
            "held-out rows (its own seeded partition, overlapping the other sites' rows)."
        )
    say(
        f"Start it with 'consortia site start {site.name}', or build its zip with 'consortia kit build -p {site.name}'."
    )


@site_app.command("start")
def start_site(
    name: Annotated[str, typer.Argument(help="the site to start from its kit")],
    workspace: WorkspaceOption = Path("workspace"),
    timeout: Annotated[float, typer.Option(min=5, max=600, help="seconds to wait for the site to register")] = 90.0,
) -> None:
    """Start one site of a running federation and wait until it registers; 'consortia down' stops it."""
    from consortia import federation

    ws = Workspace(workspace)
    try:
        state = ws.load()
        if name not in state.sites:
            _fail(f"unknown or revoked site {name!r}: start one of {', '.join(state.sites)}")
        if not federation.is_running(state):
            _fail(f"the federation in {ws.root} is not running: start it with 'consortia up'")
        if any(r.name == name and r.is_alive() for r in state.processes):
            _fail(f"site {name!r} is already running; stop it with 'consortia down'")
        record = federation.start_flare_participant(ws, state, name)
        state.processes.append(record)
        ws.save(state)
        registered = wait_site_registered(ws, state, record, timeout=timeout)
    except (federation.FederationError, WorkspaceError) as exc:
        _fail(str(exc))
        return
    say(
        f"site {name!r} registered (pid {record.pid}, log {record.log_file}); registered: {', '.join(registered)}",
        label="OK:",
        style="green",
    )


@site_app.command("revoke")
def revoke_site(
    name: Annotated[str, typer.Argument(help="the site to revoke")],
    reason: Annotated[
        str, typer.Option("--reason", help="why the site is revoked (stored and audited)")
    ] = "revoked by the consortium",
    workspace: WorkspaceOption = Path("workspace"),
) -> None:
    """Revoke a site: sign it into the server's revocation list, audit it, and disconnect it if running."""
    from consortia import federation
    from provisioning.kit_archive import KitError
    from provisioning.revocation import RevocationError
    from provisioning.revocation import revoke_site as run_revoke

    ws = Workspace(workspace)
    try:
        state = ws.load()
        disconnect = _disconnector(ws, state) if federation.is_running(state) else None
        entry = run_revoke(ws, name, reason=reason, actor=getpass.getuser(), disconnect=disconnect)
    except (RevocationError, KitError, WorkspaceError, federation.FederationError) as exc:
        _fail(str(exc))
        return
    say(
        f"Revoked site {name!r}: certificate SHA-256 {entry.sha256}, serial {entry.serial}; "
        f"{'disconnected from the running server' if disconnect else 'the server rejects it when it starts'}."
    )
    say(f"Send {ws.root / 'revocations' / 'revoked.json'} to the sites so 'consortia site check' can see it.")


def _disconnector(ws: Workspace, state: WorkspaceState) -> Callable[[str], None]:
    from consortia import federation

    def disconnect(site: str) -> None:
        with federation.flare_session(ws, state, state.service_identity) as session:
            session.disable_client(site)

    return disconnect


def wait_site_registered(ws: Workspace, state: WorkspaceState, record: ProcessRecord, timeout: float) -> list[str]:
    """Wait until the site of ``record`` is registered with the server and return the registered sites.

    Raises:
        FederationError: when the site exits or does not register within ``timeout`` seconds, with its log's end.
    """
    from consortia import federation

    deadline = time.monotonic() + timeout
    registered: list[str] = []
    with federation.flare_session(ws, state, state.service_identity) as session:
        while time.monotonic() < deadline and record.is_alive():
            registered = federation.registered_sites(session)
            if record.name in registered:
                return registered
            time.sleep(1.0)
    status = "exited" if not record.is_alive() else f"did not register within {timeout:.0f} s"
    raise federation.FederationError(
        f"site {record.name!r} {status} (registered: {registered or 'none'}); its log {record.log_file} ends with:\n"
        f"{federation.log_tail(record.log_file, 8)}"
    )


@site_app.command("rotate")
def rotate_site(
    name: Annotated[str, typer.Argument(help="the site whose key and certificate to replace")],
    workspace: WorkspaceOption = Path("workspace"),
) -> None:
    """Issue a new key and certificate for a site and record the old certificate as revoked."""
    from provisioning.kit_archive import KitError
    from provisioning.provision import ProvisioningError
    from provisioning.revocation import RevocationError
    from provisioning.revocation import rotate_site as run_rotate

    try:
        rotated = run_rotate(Workspace(workspace), name, actor=getpass.getuser())
    except (RevocationError, ProvisioningError, KitError, WorkspaceError) as exc:
        _fail(str(exc))
        return
    say(
        f"Rotated {name!r}: new kit {rotated.kit_dir}, certificate SHA-256 {rotated.new_sha256}; old certificate "
        f"{rotated.old_sha256} recorded as revoked. Restart the site from the new kit: the server rejects the old certificate at registration."
    )
