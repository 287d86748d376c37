"""``consortia kit`` and ``consortia site``: signed kits for hospital IT and the checks they run before starting.

``kit build`` and ``kit verify`` exit 1 on any failure. ``site check`` exits with the code of its outcome
(``provisioning.site_check.CheckStatus``: 0 OK, 10 unreachable, 11 other consortium's server, 12 invalid server
certificate, 13 site certificate rejected, 14 revoked, 15 not a TLS server, 16 invalid kit). ``site data check`` exits
1 when the data has problems.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from provisioning.workspace import Workspace, WorkspaceError

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


# The lifecycle commands (kit list, site add|start|revoke|rotate) register themselves on kit_app and site_app.
from consortia import cli_lifecycle  # noqa: F401
