"""``consortia kit`` and ``consortia site``: signed kits for hospital IT and the checks they run before starting.

``kit build`` and ``kit verify`` exit 1 on any failure. ``site check`` exits with the code of its outcome
(``provisioning.site_check.CheckStatus``: 0 OK, 10 unreachable, 11 other consortium's server, 12 invalid server
certificate, 13 site certificate rejected, 14 revoked, 15 not a TLS server, 16 invalid kit). ``site data check`` exits
1 when the data has problems.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provisioning.workspace import ProcessRecord, Workspace, WorkspaceError, WorkspaceState

if TYPE_CHECKING:
    from provisioning.data_check import DataReport, DataSchema

kit_app = typer.Typer(no_args_is_help=True, help="Build signed kit zips and verify a kit before installing it.")
site_app = typer.Typer(no_args_is_help=True, help="Checks hospital IT runs on a site before starting it.")
data_app = typer.Typer(no_args_is_help=True, help="Check the site's local data; nothing is sent anywhere.")
site_app.add_typer(data_app, name="data")

# Emoji codes are off because rich would turn ":CD:" inside a fingerprint into an emoji.
console = Console(emoji=False, highlight=False)
err_console = Console(stderr=True, emoji=False, highlight=False)

KitDirOption = Annotated[
    Path | None,
    typer.Option("--kit", help="unpacked site kit folder (the folder containing startup/); default: current folder"),
]


def say(text: str, *, label: str = "", style: str = "", stderr: bool = False) -> None:
    """Print ``text`` verbatim (no markup, no line breaks inserted), after an optional styled ``label``."""
    if label:
        line = Text(f"{label} ", style=style)
        line.append(text)
    else:
        line = Text(text, style=style)
    (err_console if stderr else console).print(line, soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    say(message, label="error:", style="red", stderr=True)
    raise typer.Exit(code=code)


@kit_app.command("build")
def build(
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="provisioned workspace folder")] = Path(
        "workspace"
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="folder for the zips; default WORKSPACE/kits")
    ] = None,
    participant: Annotated[
        list[str] | None, typer.Option("--participant", "-p", help="build only this participant's kit (repeatable)")
    ] = None,
) -> None:
    """Write one zip per participant, signed with the root CA key, and record each issuance."""
    from provisioning.kits import KitError, build_kits

    ws = Workspace(workspace)
    actor = getpass.getuser()
    try:
        issued = build_kits(ws, output or ws.root / "kits", participants=participant or None, actor=actor)
        root_fingerprint = _root_fingerprint(ws)
    except (KitError, WorkspaceError) as exc:
        _fail(str(exc))
        return
    for kit in issued:
        say(
            f"Issued {kit.zip_path.name} to {kit.role} {kit.participant!r} (by {actor}): certificate SHA-256 "
            f"{kit.certificate_fingerprint}, expires {kit.expires_at.date().isoformat()}; "
            f"audit event kit.issued {kit.audit}"
        )
    if issued:
        say(f"Zips written to {issued[0].zip_path.parent}")
    spooled = [kit.spool_file for kit in issued if kit.spool_file is not None]
    if spooled:
        say(
            f"{len(spooled)} audit event(s) spooled in {spooled[0].parent}; the server's event forwarder "
            "delivers them when the admin service accepts them."
        )
    say(root_fingerprint, label="Root CA SHA-256 fingerprint:", style="bold")
    say("Announce this fingerprint to every site by a channel other than the one that carries the zips.")


def _root_fingerprint(workspace: Workspace) -> str:
    from provisioning.kit_issuance import read_root_ca
    from provisioning.kits import fingerprint

    cert, _, _ = read_root_ca(workspace, workspace.load())
    return fingerprint(cert)


@kit_app.command("verify")
def verify(
    kit: Annotated[Path, typer.Argument(help="the kit zip to verify", exists=True, dir_okay=False)],
    ca_fingerprint: Annotated[
        str | None, typer.Option("--ca-fingerprint", help="root CA SHA-256 fingerprint the consortium announced")
    ] = None,
    extract: Annotated[
        Path | None, typer.Option("--extract", help="after a pass, unpack the verified files into this folder")
    ] = None,
) -> None:
    """Check signature, file hashes, certificate chain, name and expiry; print the root CA fingerprint."""
    from provisioning.kits import KitVerificationError, verify_kit

    try:
        report = verify_kit(kit, ca_fingerprint=ca_fingerprint, extract_to=extract)
    except KitVerificationError as exc:
        if exc.root_ca_fingerprint:
            say(exc.root_ca_fingerprint, label="Root CA SHA-256 fingerprint:", style="bold")
        _fail(f"{kit.name}: {exc}")
        return
    except (ValueError, FileExistsError) as exc:
        _fail(str(exc))
        return
    say(report.root_ca_fingerprint, label="Root CA SHA-256 fingerprint:", style="bold")
    if ca_fingerprint:
        say("  matches the announced fingerprint.")
    else:
        say("  compare it with the fingerprint the consortium announced (or pass --ca-fingerprint).", style="yellow")
    for warning in report.warnings:
        say(warning, label="warning:", style="yellow")
    say(
        f"kit of {report.role} {report.participant!r} for project {report.project}, issued "
        f"{report.issued_at.isoformat()}, {report.num_files} files intact, certificate valid until "
        f"{report.expires_at.date().isoformat()}.",
        label="OK:",
        style="green",
    )
    if report.extracted_to is not None:
        say(f"Unpacked into {report.extracted_to}")


@site_app.command("check")
def check(
    kit: KitDirOption = None,
    timeout: Annotated[float, typer.Option(min=0.5, max=60, help="seconds for connecting and the TLS handshake")] = 5.0,
    read_timeout: Annotated[
        float, typer.Option(min=0.2, max=30, help="seconds to wait for the server to reject this site's certificate")
    ] = 2.0,
) -> None:
    """Handshake with the server as this site (without registering) and report what is wrong and how to fix it."""
    from provisioning.site_check import CheckStatus, check_site

    result = check_site(kit or Path.cwd(), connect_timeout=timeout, read_timeout=read_timeout)
    for warning in result.warnings:
        say(warning, label="warning:", style="yellow")
    if result.status == CheckStatus.OK:
        say(f"{result.message} ({result.elapsed_s:.1f} s)")
        return
    _fail(f"{result.message} (exit code {int(result.status)}, {result.status.name})", code=int(result.status))


@data_app.command("check")
def data_check(
    kit: KitDirOption = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="data folder to check instead of the kit's")
    ] = None,
    job: Annotated[
        str, typer.Option("--job", help="job whose training script defines the expected data")
    ] = "fedavg_clinical",
) -> None:
    """Validate train.csv and test.csv against the job's schema and summarize them."""
    from app_custom.flare.site_trainer import SiteConfigError, site_data_dir
    from provisioning.data_check import DataCheckError, check_site_data

    if kit is not None and data_dir is not None:
        _fail("use either --kit or --data-dir, not both")
    try:
        schema = _job_schema(job)
        folder = data_dir if data_dir is not None else site_data_dir(kit or Path.cwd())
        report = check_site_data(folder, schema)
    except (DataCheckError, SiteConfigError, ValueError) as exc:
        _fail(str(exc))
        return
    _print_data_report(report)


def _job_schema(job: str) -> DataSchema:
    """Return the data schema of the training script that ``job`` runs at sites.

    Raises:
        ValueError: when the job is unknown or runs a script whose data this check does not know.
    """
    from consortia.jobs import CLIENT_CONFIG, job_path
    from provisioning.data_check import SCHEMAS

    config = json.loads((job_path(job) / CLIENT_CONFIG).read_text(encoding="utf-8"))
    for entry in config.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("path", "").endswith("site_trainer.SiteTrainer"):
            script = executor.get("args", {}).get("script", "tabular")
            if script not in SCHEMAS:
                raise ValueError(f"job {job!r} trains with script {script!r}; data check knows {sorted(SCHEMAS)}")
            return SCHEMAS[script]
    raise ValueError(f"job {job!r} runs no SiteTrainer executor, so it reads no site data this check knows")


def _print_data_report(report: DataReport) -> None:
    schema = report.schema
    splits = Table(title=Text(f"Site data in {report.data_dir} ({schema.name} schema)"))
    for column in ("split", "rows", f"{schema.label}=1", f"{schema.label}=0", f"{schema.label}=1 rate"):
        splits.add_column(column, justify="right")
    for split in report.splits:
        splits.add_row(
            split.split,
            str(split.rows),
            str(split.positives),
            str(split.rows - split.positives),
            f"{split.positive_rate:.1%}",
        )
    console.print(splits)
    missing = Table(title="Missing values per column")
    missing.add_column("column")
    for split in report.splits:
        missing.add_column(split.split, justify="right")
    for column in [rule.name for rule in schema.columns] + [schema.label]:
        missing.add_row(column, *(str(split.missing.get(column, 0)) for split in report.splits))
    console.print(missing)
    for warning in report.warnings:
        say(warning, label="warning:", style="yellow")
    say("the data matches the job's schema. Nothing was sent anywhere.", label="OK:", style="green")


# ---------------------------------------------------------------------------------------------- kit lifecycle

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
