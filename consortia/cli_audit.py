"""``consortia audit verify`` and ``consortia report verify``: offline checks of the audit chain and signed reports.

Both exit with status 0 when every check passes and 1 when one fails, naming the reason, so scripts can gate on them.
Usage errors (a missing file, no public key given) exit with status 2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from admin_api.services.signing import (
    SIDECAR_SUFFIX,
    SignatureStatement,
    SignatureVerificationError,
    load_public_key,
    parse_statement_file,
    verify_json_report,
    verify_statement,
)

__all__ = ["audit_app", "report_app"]

audit_app = typer.Typer(no_args_is_help=True, help="Check the hash-chained audit trail of the admin service.")
report_app = typer.Typer(no_args_is_help=True, help="Check signed reports of the admin service.")
console = Console(highlight=False, emoji=False, markup=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, emoji=False, markup=False, soft_wrap=True)

PUBLIC_KEY_PATH = "/api/v1/reports/public-key"


@audit_app.callback()
def audit_main() -> None:
    """Check the hash-chained audit trail of the admin service."""


@report_app.callback()
def report_main() -> None:
    """Check signed reports of the admin service."""


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"FAILED: {message}")
    raise typer.Exit(code=code)


def _resolve_database_url(database: str | None, workspace: Path) -> str:
    if database:
        return database
    if os.environ.get("CONSORTIA_DATABASE_URL"):
        return os.environ["CONSORTIA_DATABASE_URL"]
    from provisioning.workspace import Workspace

    database_file = Workspace(workspace).database_file
    if not database_file.is_file():
        _fail(
            f"no admin database at {database_file}; pass --database URL or --workspace DIR, "
            "or set CONSORTIA_DATABASE_URL",
            code=2,
        )
    return f"sqlite:///{database_file}"


def _report_chain_head(path: Path) -> tuple[int, str]:
    """Read the chain head pinned by a signed report (JSON, or the ``.sig.json`` of a CSV or PDF)."""
    candidate = (
        path if path.name.endswith(SIDECAR_SUFFIX) or path.suffix == ".json" else Path(f"{path}{SIDECAR_SUFFIX}")
    )
    try:
        data = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"cannot read the chain head from {candidate}: {exc}", code=2)
    # A JSON report embeds its statement under "signature"; a sidecar is the statement itself.
    statement = data.get("signature") if isinstance(data, dict) and "chain_head_seq" not in data else data
    if not isinstance(statement, dict) or not isinstance(statement.get("chain_head_seq"), int):
        _fail(f"{candidate} pins no chain head; pass a signed report or its .sig.json file", code=2)
    return statement["chain_head_seq"], statement["chain_head_hash"]


@audit_app.command("verify")
def audit_verify(
    database: Annotated[
        str | None,
        typer.Option("--database", help="SQLAlchemy URL; default: CONSORTIA_DATABASE_URL or the workspace's"),
    ] = None,
    workspace: Annotated[Path, typer.Option("--workspace", "-w", help="workspace folder")] = Path("workspace"),
    report: Annotated[
        Path | None,
        typer.Option("--report", help="signed report whose chain head must still be in the chain (detects truncation)"),
    ] = None,
    from_checkpoint: Annotated[
        bool,
        typer.Option(
            "--from-checkpoint",
            help="walk only from the newest verified checkpoint (fast; misses changes before it)",
        ),
    ] = False,
    record_checkpoint: Annotated[
        bool,
        typer.Option(
            "--record-checkpoint/--no-record-checkpoint",
            help="record the valid head as a verified checkpoint (skipped with a note when the database is read-only)",
        ),
    ] = True,
) -> None:
    """Walk the whole audit chain (or from the newest checkpoint) and name the first bad row; exit 1 when broken."""
    from sqlalchemy.exc import SQLAlchemyError

    from admin_api.db import Database
    from admin_api.models import AuditEvent
    from admin_api.services.checkpoints import verify_from_checkpoint, verify_full

    url = _resolve_database_url(database, workspace)
    db = Database(url)
    verify = verify_from_checkpoint if from_checkpoint else verify_full
    try:
        with db.session() as session:
            result = verify(session, checkpoint=record_checkpoint)
            pinned_hash = None
            if report is not None:
                pinned_seq, pinned_hash = _report_chain_head(report)
                pinned_row = session.get(AuditEvent, pinned_seq)
    except SQLAlchemyError as exc:
        _fail(f"cannot read the audit chain from {db.url.render_as_string(hide_password=True)}: {exc}", code=2)
    finally:
        db.dispose()

    if not result.ok:
        _fail(f"audit chain broken at seq {result.first_bad_seq}: {result.reason}")
    console.print(
        f"audit chain valid: {result.num_events} events, head seq {result.head_seq}, head hash {result.head_hash}"
    )
    if result.verified_from_seq is not None:
        console.print(
            f"walked from the verified checkpoint at seq {result.verified_from_seq}; events before it were not "
            "checked (run without --from-checkpoint for the full walk)"
        )
    if report is not None:
        if pinned_row is None:
            _fail(
                f"the report pins seq {pinned_seq}, but the chain ends at seq {result.head_seq}: "
                "events were removed from the end of the chain"
            )
        if pinned_row.hash != pinned_hash:
            _fail(f"the report pins hash {pinned_hash} at seq {pinned_seq}, but the chain has {pinned_row.hash} there")
        console.print(f"the chain still contains the head the report pins (seq {pinned_seq})")


def _public_key_pem(public_key: Path | None, url: str | None) -> bytes:
    if public_key is not None:
        try:
            return public_key.read_bytes()
        except OSError as exc:
            _fail(f"cannot read the public key {public_key}: {exc.strerror}", code=2)
    if url is not None:
        endpoint = url.rstrip("/") + PUBLIC_KEY_PATH
        try:
            response = httpx.get(endpoint, timeout=15.0)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            _fail(f"cannot download the public key from {endpoint}: {exc}", code=2)
        return response.content
    _fail("no public key given; pass --public-key FILE.pem or --url http://HOST:PORT of the admin service", code=2)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        _fail(f"{path} is not UTF-8 text, so it is no JSON report")
    except json.JSONDecodeError as exc:
        _fail(f"{path} is not valid JSON ({exc}); was it truncated or edited?")


def _verify_file(path: Path, signature: Path | None, pem: bytes) -> SignatureStatement:
    key = load_public_key(pem)
    if path.suffix == ".json" and signature is None:
        return verify_json_report(_load_json(path), key)
    sidecar = signature or Path(f"{path}{SIDECAR_SUFFIX}")
    try:
        statement = parse_statement_file(sidecar.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"no signature file {sidecar} ({exc.strerror}); keep the .sig.json beside the report or pass --signature")
    verify_statement(statement, key, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    if statement.file_name != path.name:
        err_console.print(f"note: the report was signed as {statement.file_name!r} and is now named {path.name!r}")
    return statement


@report_app.command("verify")
def report_verify(
    file: Annotated[Path, typer.Argument(help="report file: .json (embedded signature), .csv or .pdf")],
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="PEM public key of the service, from /api/v1/reports/public-key")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="admin service base URL to download the public key from")
    ] = None,
    signature: Annotated[
        Path | None, typer.Option("--signature", help="signature statement file; default: FILE.sig.json")
    ] = None,
) -> None:
    """Check a report's Ed25519 signature and digest offline; exit 1, naming the reason, when either fails."""
    if not file.is_file():
        _fail(f"report file {file} not found", code=2)
    pem = _public_key_pem(public_key, url)
    try:
        statement = _verify_file(file, signature, pem)
    except SignatureVerificationError as exc:
        _fail(f"{file}: {exc}")
    console.print(f"OK: {file} is signed by key {statement.key_id}")
    console.print(f"  sha256 {statement.sha256}, signed at {statement.signed_at}")
    console.print(f"  audit chain head: seq {statement.chain_head_seq}, hash {statement.chain_head_hash}")


def decode_signature_header(value: str) -> str:
    """Decode the ``Consortia-Report-Signature`` response header into the text of a ``.sig.json`` file."""
    return base64.b64decode(value, validate=True).decode("utf-8")
