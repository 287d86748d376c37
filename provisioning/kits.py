"""Signed kit zips for hospital IT: build one per participant, and verify one before installing it.

This is hand-written because FLARE 2.9's ``SignatureBuilder`` signs only homomorphic-encryption and
confidential-computing kits. An ordinary FLARE kit has no signature, so a receiver cannot tell a genuine kit from an
altered one or from another consortium's. Each zip built here contains one folder, named after the participant, with:

- the FLARE kit files (``readme.txt``, ``startup/``, ``local/`` as provisioned, never the site's ``data/``);
- ``README-HOSPITAL-IT.md`` (sites only): what to open in the firewall, where the data goes, what to run;
- ``consortia-manifest.json``: participant, role, project, issue time, certificate fingerprint and expiry, and the
  SHA-256 of every other file;
- ``consortia-manifest.sig``: base64 signature of the manifest bytes by the consortium's root CA private key
  (RSASSA-PSS with SHA-256 for RSA keys, which FLARE generates; ECDSA with SHA-256 for EC keys).

FLARE keeps the root CA key in ``provision/<project>/state/cert.json`` together with every participant's private
key. Nothing from that file except the root certificate ever goes into a zip, and the build fails when any kit file
contains key material of the root CA.

A valid signature proves only that the kit was signed by the CA whose ``rootCA.pem`` it carries. Hospital IT must
compare that CA's fingerprint with the one the consortium announced by another channel (``--ca-fingerprint``).

The manifest format and signing live in ``provisioning.kit_manifest``, zip handling in ``provisioning.kit_archive``.

Exceptions (defined in ``provisioning.kit_archive``, re-exported here):
    KitError: base of both below.
    KitBuildError: the workspace cannot be turned into signed kits.
    KitVerificationError: a kit zip is unsafe, altered, foreign or expired; the message names the file or reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from provisioning.kit_archive import (
    KitBuildError,
    KitError,
    KitFiles,
    KitVerificationError,
    read_kit_zip,
    write_kit_folder,
    write_kit_zip,
)
from provisioning.kit_issuance import (
    hospital_readme,
    kit_files,
    read_root_ca,
    record_issuance,
)
from provisioning.kit_manifest import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    CertificateInfo,
    KitManifest,
    certificate_cn,
    fingerprint,
    normalize_fingerprint,
    sign,
    signature_algorithm,
    signature_valid,
)
from provisioning.schema import FLARE_ROLES
from provisioning.workspace import Workspace, WorkspaceState

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "IssuedKit",
    "KitBuildError",
    "KitError",
    "KitManifest",
    "KitReport",
    "KitVerificationError",
    "build_kits",
    "fingerprint",
    "normalize_fingerprint",
    "verify_kit",
]

README_NAME = "README-HOSPITAL-IT.md"
ROOT_CA_FILE = "startup/rootCA.pem"
EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class IssuedKit:
    """One kit zip written by ``build_kits`` and how its issuance was recorded."""

    participant: str
    role: str
    zip_path: Path
    certificate_fingerprint: str
    expires_at: datetime
    audit: str
    spool_file: Path | None = None


@dataclass
class KitReport:
    """Facts that ``verify_kit`` established about a kit that passed."""

    participant: str
    role: str
    project: str
    issued_at: datetime
    expires_at: datetime
    root_ca_fingerprint: str
    num_files: int
    warnings: list[str] = field(default_factory=list)
    extracted_to: Path | None = None


def _certificate_file(role: str) -> str:
    return "startup/server.crt" if role == "server" else "startup/client.crt"


def _participants(state: WorkspaceState, only: Iterable[str] | None) -> list[tuple[str, str]]:
    everyone = [(state.server_name, "server"), *[(site, "site") for site in state.sites]]
    everyone.append((state.service_identity, "project_admin"))
    everyone += [(user, role) for user, role in state.users.items() if role in FLARE_ROLES]
    if only is None:
        return everyone
    wanted = list(only)
    known = {name for name, _ in everyone}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise KitBuildError(f"no FLARE kit for {unknown} in this workspace: choose among {sorted(known)}")
    return [(name, role) for name, role in everyone if name in wanted]


def build_kits(
    workspace: Workspace, output_dir: Path, *, participants: Iterable[str] | None = None, actor: str
) -> list[IssuedKit]:
    """Write one signed kit zip per participant into ``output_dir`` and record each issuance.

    Args:
        workspace: a provisioned workspace.
        output_dir: folder for the zips (created if missing); an existing ``<participant>.zip`` is replaced.
        participants: names to build kits for; default: the server, every site and every user with a FLARE kit.
        actor: who issues the kits (recorded in the manifest and in the ``kit.issued`` audit event).

    Raises:
        KitBuildError: naming the participant and file when a kit is incomplete, from another CA or would leak the
            root CA key.
    """
    state = workspace.load()
    root_cert, root_key, secret_markers = read_root_ca(workspace, state)
    output_dir.mkdir(parents=True, exist_ok=True)
    issued = []
    for name, role in _participants(state, participants):
        kit_dir = workspace.kit_dir(state, name)
        issued_at = datetime.now(UTC).replace(microsecond=0)
        files = kit_files(kit_dir, name)
        if role == "site":
            files[README_NAME] = (hospital_readme(kit_dir, name, state, issued_at).encode("utf-8"), 0o644)
        cert = _check_kit_contents(name, role, files, root_cert, secret_markers)
        manifest = _manifest(state, name, role, cert, root_cert, root_key, files, issued_at=issued_at, actor=actor)
        manifest_bytes = (json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()
        files[MANIFEST_NAME] = (manifest_bytes, 0o644)
        files[SIGNATURE_NAME] = (base64.b64encode(sign(root_key, manifest_bytes)) + b"\n", 0o644)
        zip_path = output_dir / f"{name}.zip"
        write_kit_zip(zip_path, name, files, issued_at)
        audit, spool_file = record_issuance(workspace, state, manifest.model_dump(mode="json"), actor=actor)
        issued.append(IssuedKit(name, role, zip_path, fingerprint(cert), cert.not_valid_after_utc, audit, spool_file))
    return issued


def _check_kit_contents(
    name: str, role: str, files: KitFiles, root_cert: x509.Certificate, secret_markers: list[bytes]
) -> x509.Certificate:
    """Check that no kit file contains root CA key material and that the kit's CA and certificate are this workspace's.

    Returns:
        The participant certificate, issued by the root CA to ``name``.
    """
    for relative, (content, _) in files.items():
        if any(marker in content for marker in secret_markers):
            raise KitBuildError(f"kit of {name}: {relative} contains root CA key material; remove it from the kit")
    if files.get(ROOT_CA_FILE, (b"", 0))[0].strip() != root_cert.public_bytes(serialization.Encoding.PEM).strip():
        raise KitBuildError(f"kit of {name}: {ROOT_CA_FILE} is not this workspace's root CA: provision again")
    cert_file = _certificate_file(role)
    if cert_file not in files:
        raise KitBuildError(f"kit of {name} has no {cert_file}: provision the workspace again")
    cert = x509.load_pem_x509_certificate(files[cert_file][0])
    try:
        cert.verify_directly_issued_by(root_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise KitBuildError(f"kit of {name}: {cert_file} is not signed by this workspace's root CA") from None
    if certificate_cn(cert) != name:
        raise KitBuildError(f"kit of {name}: {cert_file} is issued to {certificate_cn(cert)!r}")
    return cert


def _manifest(
    state: WorkspaceState,
    name: str,
    role: str,
    cert: x509.Certificate,
    root_cert: x509.Certificate,
    root_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    files: KitFiles,
    *,
    issued_at: datetime,
    actor: str,
) -> KitManifest:
    return KitManifest(
        project=state.project,
        participant=name,
        role=role,
        issued_at=issued_at,
        issued_by=actor,
        root_ca_sha256=fingerprint(root_cert),
        signature_algorithm=signature_algorithm(root_key),
        certificate=CertificateInfo(
            file=_certificate_file(role),
            subject_cn=certificate_cn(cert),
            serial=format(cert.serial_number, "X"),
            sha256_fingerprint=fingerprint(cert),
            not_valid_before=cert.not_valid_before_utc,
            not_valid_after=cert.not_valid_after_utc,
        ),
        files={relative: hashlib.sha256(content).hexdigest() for relative, (content, _) in sorted(files.items())},
    )


def verify_kit(
    zip_path: Path,
    *,
    ca_fingerprint: str | None = None,
    extract_to: Path | None = None,
    now: datetime | None = None,
) -> KitReport:
    """Verify a kit zip: layout, root CA, manifest signature, every file hash, certificate chain, name and expiry.

    Args:
        zip_path: the kit zip.
        ca_fingerprint: SHA-256 fingerprint of the consortium's root CA as announced out of band.
        extract_to: when set and the kit passes, unpack exactly the verified bytes into ``extract_to/<participant>``.
        now: the time to check expiry against (default: now).

    Raises:
        KitVerificationError: at the first failure, with one message naming the file or the reason.
        ValueError: when ``ca_fingerprint`` is not a SHA-256 fingerprint.
        FileExistsError: when ``extract_to/<participant>`` already exists.
    """
    expected_ca = normalize_fingerprint(ca_fingerprint) if ca_fingerprint else None
    now = now or datetime.now(UTC)
    top, entries = read_kit_zip(Path(zip_path))
    for required in (MANIFEST_NAME, SIGNATURE_NAME, ROOT_CA_FILE):
        if required not in entries:
            raise KitVerificationError(f"{required} is missing: this is not a signed Consortia kit")
    try:
        root = x509.load_pem_x509_certificate(entries[ROOT_CA_FILE][0])
    except ValueError:
        raise KitVerificationError(f"{ROOT_CA_FILE} is not a PEM certificate") from None
    root_fp = fingerprint(root)

    def fail(message: str) -> KitVerificationError:
        return KitVerificationError(message, root_ca_fingerprint=root_fp)

    if expected_ca and normalize_fingerprint(root_fp) != expected_ca:
        raise fail(
            f"root CA fingerprint {root_fp} is not the announced one: this kit belongs to another consortium; "
            "do not install it and ask the consortium for your kit"
        )
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise fail(f"{ROOT_CA_FILE} is not a self-signed root CA certificate") from None
    manifest_bytes = entries[MANIFEST_NAME][0]
    try:
        signature = base64.b64decode(entries[SIGNATURE_NAME][0].strip(), validate=True)
    except ValueError:
        raise fail(f"{SIGNATURE_NAME} is not base64") from None
    if not signature_valid(root.public_key(), signature, manifest_bytes):
        raise fail(
            f"{SIGNATURE_NAME}: the manifest signature does not verify with {ROOT_CA_FILE}: "
            f"{MANIFEST_NAME} was altered or the root CA was replaced"
        )
    try:
        manifest = KitManifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise fail(f"{MANIFEST_NAME} is signed but invalid: {exc.errors()[0]['msg']}") from None
    if top != manifest.participant:
        raise fail(f"kit folder {top!r} does not match the manifest participant {manifest.participant!r}")
    _check_files(entries, manifest, fail)
    report = KitReport(
        participant=manifest.participant,
        role=manifest.role,
        project=manifest.project,
        issued_at=manifest.issued_at,
        expires_at=manifest.certificate.not_valid_after,
        root_ca_fingerprint=root_fp,
        num_files=len(manifest.files),
    )
    _check_certificate(entries, manifest, root, now, report, fail)
    if extract_to is not None:
        report.extracted_to = write_kit_folder(top, entries, extract_to)
    return report


def _check_files(entries: KitFiles, manifest: KitManifest, fail: Callable[[str], KitVerificationError]) -> None:
    present = set(entries) - {MANIFEST_NAME, SIGNATURE_NAME}
    for missing in sorted(set(manifest.files) - present):
        raise fail(f"{missing} is listed in the manifest but missing from the kit")
    for extra in sorted(present - set(manifest.files)):
        raise fail(f"{extra} is not listed in the manifest: it was added after the kit was issued")
    for relative, expected in sorted(manifest.files.items()):
        if hashlib.sha256(entries[relative][0]).hexdigest() != expected:
            raise fail(f"{relative} was changed after the kit was issued (SHA-256 does not match the manifest)")


def _check_certificate(
    entries: KitFiles,
    manifest: KitManifest,
    root: x509.Certificate,
    now: datetime,
    report: KitReport,
    fail: Callable[[str], KitVerificationError],
) -> None:
    cert_file = manifest.certificate.file
    if cert_file not in entries:
        raise fail(f"{cert_file} (the participant certificate) is missing")
    try:
        cert = x509.load_pem_x509_certificate(entries[cert_file][0])
    except ValueError:
        raise fail(f"{cert_file} is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise fail(f"{cert_file} is not signed by this kit's root CA ({ROOT_CA_FILE})") from None
    if certificate_cn(cert) != manifest.participant:
        raise fail(
            f"{cert_file} is issued to {certificate_cn(cert)!r}, not to the kit's participant {manifest.participant!r}"
        )
    key_file = cert_file.removesuffix(".crt") + ".key"
    if key_file in entries:
        try:
            key = serialization.load_pem_private_key(entries[key_file][0], password=None)
        except (ValueError, TypeError):
            raise fail(f"{key_file} is not an unencrypted PEM private key") from None
        if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise fail(f"{key_file} does not belong to {cert_file}")
    if now < cert.not_valid_before_utc:
        raise fail(f"{cert_file} is not valid before {cert.not_valid_before_utc.isoformat()}: check this host's clock")
    if now >= cert.not_valid_after_utc:
        raise fail(f"{cert_file} expired on {cert.not_valid_after_utc.isoformat()}: ask the consortium for a new kit")
    if cert.not_valid_after_utc - now < timedelta(days=EXPIRY_WARNING_DAYS):
        days = (cert.not_valid_after_utc - now).days
        report.warnings.append(
            f"{cert_file} expires in {days} days ({cert.not_valid_after_utc.date()}): ask the consortium for a new kit"
        )
