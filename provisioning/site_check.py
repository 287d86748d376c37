"""TLS preflight for a site kit: can this site reach the server, and do the two trust each other?

This is hand-written because FLARE 2.9 gives hospital IT no usable diagnosis. A kit from another project's CA retries
forever, and a client certificate that the server cannot verify hangs with no log line. ``nvflare preflight-check``
registers with the server, and on a live site it evicts the running site.

``check_site`` never registers. It opens one TCP connection to the server address in ``startup/fed_client.json``,
performs a TLS handshake the way FLARE's client does (``nvflare.fuel.f3.drivers.net_utils.get_ssl_context``: CA =
the kit's ``rootCA.pem``, client certificate and key from the kit, TLS 1.2 or newer, no host name check), checks that
the server certificate names the server identity of the kit, sends nothing, and closes. With TLS 1.3 the client
finishes its handshake before the server has checked the client certificate, so the server's rejection surfaces only
on the first read: the check therefore reads with a short timeout. A timeout means the server accepted the
certificate and waits for a request. An alert, a reset or a close means it rejected the certificate.

The server publishes nothing about revocation over TLS. A revocation list that the consortium ships as
``local/revoked.json`` is checked locally; the server enforces revocation when a site registers.

Exceptions:
    SiteKitError: the kit folder is incomplete or its files are invalid. ``check_site`` reports it as KIT_INVALID.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, ValidationError

from provisioning.kit_manifest import certificate_cn, fingerprint, normalize_fingerprint
from provisioning.kits import EXPIRY_WARNING_DAYS

REVOCATION_FILE = "local/revoked.json"
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 2.0
# OpenSSL X509_V_ERR_* codes (openssl/x509_vfy.h) meaning that the chain does not lead to the kit's CA:
# UNABLE_TO_GET_ISSUER_CERT, CERT_SIGNATURE_FAILURE, DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN,
# UNABLE_TO_GET_ISSUER_CERT_LOCALLY, UNABLE_TO_VERIFY_LEAF_SIGNATURE.
_UNTRUSTED_ISSUER_CODES = {2, 7, 18, 19, 20, 21}


class CheckStatus(IntEnum):
    """Outcome of ``check_site``; the value is the exit code of ``consortia site check``."""

    OK = 0
    UNREACHABLE = 10
    FOREIGN_SERVER = 11
    SERVER_CERT_INVALID = 12
    CERT_REJECTED = 13
    REVOKED = 14
    NOT_TLS = 15
    KIT_INVALID = 16


class SiteKitError(RuntimeError):
    """Raised when a site kit folder is incomplete or its files are invalid."""


@dataclass(frozen=True)
class SiteKit:
    """Server address and TLS files of a site (or admin) kit."""

    root: Path
    participant: str
    host: str
    port: int
    server_identity: str
    connection_security: str
    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass
class SiteCheckResult:
    """Outcome of one check, a message that names the fix, and warnings that do not change the outcome."""

    status: CheckStatus
    message: str
    target: str = ""
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)


class RevokedCertificate(BaseModel):
    """One entry of ``local/revoked.json``: a certificate named by its SHA-256 fingerprint or serial number."""

    model_config = ConfigDict(extra="forbid")

    sha256: str | None = None
    serial: str | None = None
    participant: str | None = None
    reason: str = "no reason given"
    revoked_at: datetime | None = None


class RevocationList(BaseModel):
    """Contents of ``local/revoked.json``."""

    model_config = ConfigDict(extra="forbid")

    revoked: list[RevokedCertificate]


def load_site_kit(kit_dir: Path) -> SiteKit:
    """Read the server address and the TLS files from a site kit (``fed_client.json``) or an admin kit.

    Raises:
        SiteKitError: naming the file and field that is missing or invalid.
    """
    startup = Path(kit_dir) / "startup"
    client_config, admin_config = startup / "fed_client.json", startup / "fed_admin.json"
    if client_config.is_file():
        config_file = client_config
    elif admin_config.is_file():
        config_file = admin_config
    elif (startup / "fed_server.json").is_file():
        raise SiteKitError(f"{kit_dir} is the server's kit: run the check with a site kit")
    else:
        raise SiteKitError(f"no startup/fed_client.json in {kit_dir}: pass the unpacked site kit with --kit")
    try:
        host, port, names, identity, security = _read_config(config_file)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise SiteKitError(f"{config_file} is invalid ({type(exc).__name__}: {exc}): use the kit as issued") from None
    if not host or not 0 < port < 65536:
        raise SiteKitError(f"{config_file}: invalid server address {host}:{port}")
    cert_file, key_file, ca_file = (startup / name for name in names)
    for path in (cert_file, key_file, ca_file):
        if not path.is_file():
            raise SiteKitError(f"{path} is missing: unpack the complete kit again")
    participant = certificate_cn(_load_cert(cert_file))
    return SiteKit(Path(kit_dir), participant, host, port, identity, security, cert_file, key_file, ca_file)


def _read_config(path: Path) -> tuple[str, int, tuple[str, str, str], str, str]:
    """Return host, port, (certificate, key, CA) file names, server identity and connection security."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if path.name == "fed_client.json":
        server, client = config["servers"][0], config["client"]
        host, _, port = str(server["service"]["target"]).rpartition(":")
        names = (str(client["ssl_cert"]), str(client["ssl_private_key"]), str(client["ssl_root_cert"]))
        return host, int(port), names, str(server["identity"]), str(client.get("connection_security", "mtls"))
    admin = config["admin"]
    names = (str(admin["client_cert"]), str(admin["client_key"]), str(admin["ca_cert"]))
    security = str(admin.get("connection_security", "mtls"))
    return str(admin["host"]), int(admin["port"]), names, str(admin["server_identity"]), security


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise SiteKitError(f"{path} is not a PEM certificate: use the kit as issued") from None


def check_revocation(kit: SiteKit) -> str | None:
    """Return why this site's certificate is revoked according to ``local/revoked.json``, or None.

    Raises:
        SiteKitError: when the revocation list exists but is invalid.
    """
    path = kit.root / REVOCATION_FILE
    if not path.is_file():
        return None
    try:
        revocations = RevocationList.model_validate_json(path.read_bytes())
        listed = [
            (entry, normalize_fingerprint(entry.sha256) if entry.sha256 else None) for entry in revocations.revoked
        ]
    except (ValidationError, ValueError) as exc:
        raise SiteKitError(f"revocation list {path} is invalid: {exc}") from None
    cert = _load_cert(kit.cert_file)
    ours_sha256 = normalize_fingerprint(fingerprint(cert))
    ours_serial = format(cert.serial_number, "X")
    for entry, sha256 in listed:
        if sha256 == ours_sha256 or (entry.serial and entry.serial.upper().lstrip("0") == ours_serial.lstrip("0")):
            when = f" on {entry.revoked_at.isoformat()}" if entry.revoked_at else ""
            return f"certificate {kit.cert_file.name} of {kit.participant} was revoked{when}: {entry.reason}"
    return None


def check_site(
    kit_dir: Path, *, connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S
) -> SiteCheckResult:
    """Check that this site can reach the server and that each side accepts the other's certificate.

    Args:
        kit_dir: the unpacked site kit (the folder containing ``startup/``).
        connect_timeout: seconds for the TCP connection and the TLS handshake together.
        read_timeout: seconds to wait for the server to reject the site's certificate after the handshake.
    """
    started = time.monotonic()
    try:
        kit = load_site_kit(kit_dir)
        revoked = check_revocation(kit)
    except SiteKitError as exc:
        return SiteCheckResult(CheckStatus.KIT_INVALID, str(exc))
    target = f"{kit.host}:{kit.port}"
    if revoked:
        message = f"revoked: {revoked}. Do not start this site; ask the consortium for a new kit"
        return SiteCheckResult(CheckStatus.REVOKED, message, target, time.monotonic() - started)
    status, message = probe_server(kit, connect_timeout=connect_timeout, read_timeout=read_timeout)
    result = SiteCheckResult(status, message, target, time.monotonic() - started, _local_findings(kit))
    if status == CheckStatus.CERT_REJECTED and result.warnings:
        result.message += f" Likely cause: {result.warnings[0]}"
    return result


def _local_findings(kit: SiteKit) -> list[str]:
    """Problems with the site's own certificate that explain a rejection or will cause one soon."""
    cert, root = _load_cert(kit.cert_file), _load_cert(kit.ca_file)
    findings = []
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        findings.append(
            f"{kit.cert_file.name} was not issued by this kit's {kit.ca_file.name}: the kit mixes files from "
            "different consortia; unpack the kit you received again"
        )
    now = datetime.now(UTC)
    if cert.not_valid_after_utc <= now:
        findings.append(f"{kit.cert_file.name} expired on {cert.not_valid_after_utc.date()}: ask for a new kit")
    elif cert.not_valid_after_utc - now < timedelta(days=EXPIRY_WARNING_DAYS):
        findings.append(f"{kit.cert_file.name} expires on {cert.not_valid_after_utc.date()}: ask for a new kit soon")
    if kit.connection_security == "clear":
        findings.append("the kit uses connection_security 'clear': traffic to the server is not encrypted")
    return findings


def _tls_context(kit: SiteKit) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(kit.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if kit.connection_security != "tls":
        context.load_cert_chain(certfile=str(kit.cert_file), keyfile=str(kit.key_file))
    return context


def probe_server(kit: SiteKit, *, connect_timeout: float, read_timeout: float) -> tuple[CheckStatus, str]:
    """Connect, handshake, read once and close; return the outcome and a message that names the fix."""
    target = f"{kit.host}:{kit.port}"
    try:
        context = _tls_context(kit)
    except (ssl.SSLError, OSError) as exc:
        return (
            CheckStatus.KIT_INVALID,
            f"cannot load {kit.cert_file.name}/{kit.key_file.name} ({exc}): use the kit as issued",
        )
    try:
        sock = socket.create_connection((kit.host, kit.port), timeout=connect_timeout)
    except socket.gaierror as exc:
        return CheckStatus.UNREACHABLE, f"server unreachable: cannot resolve {kit.host!r} ({exc.strerror}); check DNS"
    except ConnectionRefusedError:
        return CheckStatus.UNREACHABLE, (
            f"server unreachable: connection to {target} refused; the server is not running there or the port "
            "is wrong; ask the consortium whether the server is up"
        )
    except TimeoutError:
        return CheckStatus.UNREACHABLE, (
            f"server unreachable: no answer from {target} within {connect_timeout:g} s; "
            f"open outbound TCP to port {kit.port} in the firewall"
        )
    except OSError as exc:
        return (
            CheckStatus.UNREACHABLE,
            f"server unreachable: {target}: {exc.strerror or exc}; check routing and firewall",
        )
    if kit.connection_security == "clear":
        sock.close()
        return CheckStatus.OK, f"OK: {target} accepts TCP connections (no TLS: the kit uses 'clear')"
    with sock:
        return _handshake_and_read(context, sock, kit, target, read_timeout)


def _handshake_and_read(
    context: ssl.SSLContext, sock: socket.socket, kit: SiteKit, target: str, read_timeout: float
) -> tuple[CheckStatus, str]:
    rejected = (
        f"this site's certificate is rejected by the server at {target}: the server does not trust "
        f"{kit.cert_file.name}; ask the consortium for a kit issued by its CA."
    )
    try:
        tls = context.wrap_socket(sock, server_hostname=kit.server_identity)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _UNTRUSTED_ISSUER_CODES:
            return CheckStatus.FOREIGN_SERVER, (
                f"server certificate not from this kit's CA (this kit belongs to another consortium): {target} "
                f"presented a certificate that {kit.ca_file.name} does not sign ({exc.verify_message}); check that "
                "this is your consortium's server address and that you unpacked your consortium's kit"
            )
        return CheckStatus.SERVER_CERT_INVALID, (
            f"server certificate at {target} is invalid: {exc.verify_message}; tell the consortium"
        )
    except ssl.SSLError as exc:
        if "ALERT" in (exc.reason or ""):
            return CheckStatus.CERT_REJECTED, f"{rejected} (TLS alert {exc.reason})"
        return CheckStatus.NOT_TLS, (
            f"{target} does not speak TLS like a FLARE server ({exc.reason or exc}): check the server port in "
            "startup/fed_client.json with the consortium"
        )
    except (ConnectionResetError, BrokenPipeError):
        # NOTE: a reset during the handshake is how a TLS 1.2 server drops an untrusted client certificate, but a
        # firewall that resets connections looks the same from here.
        return CheckStatus.CERT_REJECTED, f"{rejected} (connection reset during the handshake)"
    except TimeoutError:
        return CheckStatus.NOT_TLS, f"{target} accepted TCP but did not complete a TLS handshake: is it the FLARE port?"
    with tls:
        peer_der = tls.getpeercert(binary_form=True)
        if peer_der is None:
            return CheckStatus.SERVER_CERT_INVALID, f"server at {target} sent no certificate; tell the consortium"
        peer_cn = certificate_cn(x509.load_der_x509_certificate(peer_der))
        if peer_cn != kit.server_identity:
            return CheckStatus.SERVER_CERT_INVALID, (
                f"server certificate at {target} is issued to {peer_cn!r}, but this kit expects the server "
                f"{kit.server_identity!r}: another participant answers on this address; tell the consortium"
            )
        tls.settimeout(read_timeout)
        try:
            data = tls.recv(1)
        except TimeoutError:
            data = None  # The server waits for a request: it accepted our certificate.
        except ssl.SSLError as exc:
            return CheckStatus.CERT_REJECTED, f"{rejected} (TLS alert {exc.reason or exc})"
        except (ConnectionResetError, BrokenPipeError):
            return CheckStatus.CERT_REJECTED, f"{rejected} (connection reset after the handshake)"
        if data == b"":
            return CheckStatus.CERT_REJECTED, f"{rejected} (connection closed after the handshake)"
    return CheckStatus.OK, f"OK: {target} is the server {kit.server_identity!r} of this kit's CA and accepts this site"
