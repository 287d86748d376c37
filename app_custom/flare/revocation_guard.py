"""The server's revocation list and the server component that keeps revoked sites out of the federation.

Hand-written because FLARE 2.9 has no certificate revocation: any certificate signed by the consortium's root CA
registers. FLARE only offers ``disable_client``, a list of disabled site names kept in the server's memory and in
``disabled_clients.json``.

The list is ``local/revoked.json`` in the server kit, written by ``consortia site revoke`` and ``site rotate``. Its
entries are signed with the root CA key (RSASSA-PSS-SHA256 or ECDSA-SHA256 over the canonical JSON of ``revoked``), so
the server checks it against its own ``startup/rootCA.pem`` and an edited list is detected.

``RevocationGuard`` (server ``local/resources.json``):

- at ``SYSTEM_START`` it disables every revoked site name through the engine's ``disable_clients``, so FLARE itself
  rejects their registration and heartbeats, and it installs the certificate check described below;
- at ``CLIENT_REGISTER_RECEIVED`` it re-reads the list and rejects a revoked name with ``NotAuthenticated`` in
  ``FLContextKey.EXCEPTIONS``, which ``FedServer.register_client`` raises before it authenticates the site.

Revocation by certificate: FLARE 2.9 keeps the certificate a site presents in the registration request
(``IdentityChallengeKey.CERT``) and never puts it into the FLContext that components see, so an event handler cannot
tell the old certificate of a rotated site from its new one (both carry the site's name). The only code that sees
the certificate is ``ClientManager.authenticated_client``, which calls
``client_manager.cred_keeper.get_id_verifier(fl_ctx).verify_common_name(asserter_cert=...)``. The guard therefore
wraps that getter: the wrapped getter returns ``RevocationCheckingVerifier``, which rejects a certificate whose SHA-256
fingerprint or serial is in the list (any scope) and otherwise calls FLARE's own ``IdentityVerifier``. FLARE logs
only the exception type in secure logging mode, so the verifier logs the reason itself before it raises.

The wrapper depends on FLARE 2.9 internals (``ServerEngine.client_manager``, ``CredKeeper.get_id_verifier``). When
they are missing, the guard fails closed: it logs an error naming the FLARE version, rejects every site
registration, and writes ``CERTIFICATE_CHECK_ERROR_FILE`` in the server kit, which ``consortia status`` shows.

Privacy: a list that does not verify, or cannot be read, revokes every site (fails closed) and logs why.
"""

from __future__ import annotations

import base64
import inspect
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import nvflare
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotAuthenticated
from pydantic import BaseModel, ConfigDict, ValidationError

logger = logging.getLogger(__name__)

REVOCATION_FILE = "local/revoked.json"
ROOT_CA_FILE = "startup/rootCA.pem"
# Written into the server kit while the certificate check cannot be installed; removed once it is.
CERTIFICATE_CHECK_ERROR_FILE = "certificate_check_error.txt"
REVOCATION_GUARD_ID = "consortia_revocation_guard"
ALL_SITES = "*"


class RevocationListError(ValueError):
    """Raised when a revocation list cannot be read or its signature does not verify."""


class CertificateRevoked(NotAuthenticated):
    """Raised by ``RevocationCheckingVerifier`` when a site presents a revoked certificate."""


class CertificateCheckUnavailable(RuntimeError):
    """Raised when the installed FLARE offers no place to check the certificate a site registers with."""


class RevocationEntry(BaseModel):
    """One revoked site or certificate.

    ``scope`` is ``site`` when the site itself is revoked (the server rejects its name) and ``certificate`` when only
    one certificate is revoked, for example the old certificate of a rotated site.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    participant: str
    scope: Literal["site", "certificate"] = "site"
    sha256: str
    serial: str
    reason: str
    revoked_at: datetime
    revoked_by: str = ""


class RevocationList(BaseModel):
    """Contents of the server's ``local/revoked.json``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["consortia-revocation-list"] = "consortia-revocation-list"
    version: Literal[1] = 1
    revoked: list[RevocationEntry]
    signature_algorithm: Literal["RSASSA-PSS-SHA256", "ECDSA-SHA256"]
    signature: str

    def revoked_sites(self) -> set[str]:
        """Return the names of the sites revoked as a whole."""
        return {entry.participant for entry in self.revoked if entry.scope == "site"}

    def entry_for_certificate(self, cert: x509.Certificate) -> RevocationEntry | None:
        """Return the entry that revokes ``cert`` by SHA-256 fingerprint or serial, of either scope, or None."""
        sha256 = certificate_fingerprint(cert)
        serial = format(cert.serial_number, "X")
        for entry in self.revoked:
            if entry.sha256.upper() == sha256 or entry.serial.upper() == serial:
                return entry
        return None


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of ``cert`` in the list's spelling (``AB:CD:...``, as openssl prints it)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def signed_bytes(entries: list[RevocationEntry]) -> bytes:
    """Return the canonical bytes that the list's signature covers."""
    data = [entry.model_dump(mode="json") for entry in entries]
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)


def verify_signature(revocations: RevocationList, root_ca: x509.Certificate) -> None:
    """Check the list's signature with the root CA certificate.

    Raises:
        RevocationListError: when the signature does not verify.
    """
    data = signed_bytes(revocations.revoked)
    public_key = root_ca.public_key()
    try:
        signature = base64.b64decode(revocations.signature, validate=True)
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _pss(), hashes.SHA256())
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise RevocationListError(f"root CA key type {type(public_key).__name__} cannot verify the list")
    except (InvalidSignature, ValueError) as exc:
        raise RevocationListError(
            f"the revocation list signature does not verify with the root CA ({type(exc).__name__}): "
            "write the list again with 'consortia site revoke'"
        ) from None


def load_revocation_list(server_root: str | Path) -> RevocationList | None:
    """Read and verify ``local/revoked.json`` of a server kit; None when the kit has no list.

    Raises:
        RevocationListError: when the list or ``startup/rootCA.pem`` is unreadable, or the signature fails.
    """
    path = Path(server_root) / REVOCATION_FILE
    try:
        revocations = RevocationList.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValidationError, OSError) as exc:
        raise RevocationListError(f"revocation list {path} is unreadable: {exc}") from None
    try:
        root_ca = x509.load_pem_x509_certificate((Path(server_root) / ROOT_CA_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise RevocationListError(f"cannot read {ROOT_CA_FILE} of {server_root} to verify {path}: {exc}") from None
    verify_signature(revocations, root_ca)
    return revocations


def revoked_site_names(server_root: str | Path) -> set[str]:
    """Return the revoked site names of a server kit; ``{"*"}`` (every site) when the list is invalid."""
    try:
        revocations = load_revocation_list(server_root)
    except RevocationListError:
        return {ALL_SITES}
    return revocations.revoked_sites() if revocations else set()


class RevocationCheckingVerifier:
    """FLARE identity verifier that rejects a revoked certificate, then runs FLARE's own verification.

    Args:
        delegate: FLARE's ``IdentityVerifier`` (root CA chain, key usage, common name and nonce signature).
        server_root: the server kit, whose ``local/revoked.json`` is read at every registration so that a site
            revoked while the server runs is rejected at its next registration.
    """

    def __init__(self, delegate: Any, server_root: str | Path) -> None:
        self.delegate = delegate
        self.server_root = Path(server_root)

    def check_certificate(self, asserted_cn: str, cert: x509.Certificate) -> None:
        """Raise ``CertificateRevoked`` when ``cert`` is in the revocation list or the list does not verify."""
        try:
            revocations = load_revocation_list(self.server_root)
        except RevocationListError as exc:
            reason = f"rejecting the certificate of site {asserted_cn!r} because {exc}"
            logger.error("rejected registration: %s", reason)
            raise CertificateRevoked(reason) from None
        entry = revocations.entry_for_certificate(cert) if revocations else None
        if entry is None:
            return
        reason = (
            f"the certificate of site {asserted_cn!r} (SHA-256 {entry.sha256}, serial {entry.serial}) is revoked "
            f"since {entry.revoked_at:%Y-%m-%d} ({entry.reason}); start the site from its current kit"
        )
        logger.warning("rejected registration: %s", reason)
        raise CertificateRevoked(reason)

    def verify_common_name(
        self,
        asserted_cn: str,
        nonce: str,
        asserter_cert: x509.Certificate,
        signature: Any,
        intermediate_certs: list[x509.Certificate] | None = None,
        expected_eku: Any = None,
    ) -> bool:
        """Check ``asserter_cert`` against the revocation list, then delegate to FLARE's verifier."""
        self.check_certificate(asserted_cn, asserter_cert)
        return self.delegate.verify_common_name(
            asserted_cn=asserted_cn,
            nonce=nonce,
            asserter_cert=asserter_cert,
            signature=signature,
            intermediate_certs=intermediate_certs,
            expected_eku=expected_eku,
        )


_WRAPPED = "_consortia_checks_revocation"


def install_certificate_check(engine: Any, server_root: str | Path) -> None:
    """Make the server's site registration check every presented certificate against the revocation list.

    Wraps ``engine.client_manager.cred_keeper.get_id_verifier`` so it returns a ``RevocationCheckingVerifier``
    around FLARE's verifier. Installing twice is a no-op.

    Raises:
        CertificateCheckUnavailable: when the installed FLARE does not route site registration through that getter.
    """
    client_manager = getattr(engine, "client_manager", None)
    cred_keeper: Any = getattr(client_manager, "cred_keeper", None)
    get_id_verifier = getattr(cred_keeper, "get_id_verifier", None)
    if not callable(get_id_verifier):
        raise CertificateCheckUnavailable(
            f"FLARE {nvflare.__version__} has no engine.client_manager.cred_keeper.get_id_verifier"
        )
    if getattr(get_id_verifier, _WRAPPED, False):
        return
    _check_registration_path(type(client_manager))

    def checking_get_id_verifier(fl_ctx: FLContext) -> RevocationCheckingVerifier | None:
        verifier = get_id_verifier(fl_ctx)
        return None if verifier is None else RevocationCheckingVerifier(verifier, server_root)

    setattr(checking_get_id_verifier, _WRAPPED, True)
    cred_keeper.get_id_verifier = checking_get_id_verifier


def _check_registration_path(client_manager_class: type) -> None:
    """Confirm from FLARE's source that registration verifies certificates through the wrapped getter.

    A FLARE release that verifies some other way would bypass the wrapper silently, so a changed call path counts as
    unavailable (fails closed).
    """
    try:
        getter = inspect.getsource(getattr(client_manager_class, "_get_id_verifier"))  # noqa: B009 - private hook
        register = inspect.getsource(getattr(client_manager_class, "authenticated_client"))  # noqa: B009
    except (AttributeError, OSError, TypeError) as exc:
        raise CertificateCheckUnavailable(
            f"FLARE {nvflare.__version__}: cannot read ClientManager's registration code ({exc})"
        ) from None
    if "cred_keeper.get_id_verifier" not in getter or ".verify_common_name(" not in register:
        raise CertificateCheckUnavailable(
            f"FLARE {nvflare.__version__}: ClientManager.authenticated_client no longer verifies certificates "
            "through cred_keeper.get_id_verifier"
        )


class RevocationGuard(FLComponent):
    """Server component that rejects revoked sites and revoked certificates at registration."""

    def __init__(self) -> None:
        super().__init__()
        self._check_installed = False
        self._check_error: str | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.SYSTEM_START:
            self._install_check(fl_ctx)
            self._disable_revoked(fl_ctx)
        elif event_type == EventType.CLIENT_REGISTER_RECEIVED:
            if not self._check_installed and self._check_error is None:
                self._install_check(fl_ctx)
            self._check_registration(fl_ctx)

    def _install_check(self, fl_ctx: FLContext) -> None:
        server_root = Path(fl_ctx.get_engine().get_workspace().get_root_dir())
        marker = server_root / CERTIFICATE_CHECK_ERROR_FILE
        try:
            install_certificate_check(fl_ctx.get_engine(), server_root)
        except CertificateCheckUnavailable as exc:
            self._check_error = (
                f"certificate revocation cannot be enforced: {exc}; rejecting every site registration until "
                "app_custom.flare.revocation_guard supports this FLARE version"
            )
            self.logger.error("%s", self._check_error)
            try:
                marker.write_text(self._check_error + "\n", encoding="utf-8")
            except OSError as write_exc:
                self.logger.error("failed to write %s: %s", marker, write_exc)
            return
        self._check_installed = True
        self._check_error = None
        marker.unlink(missing_ok=True)
        self.logger.info("checking site certificates against %s at registration", REVOCATION_FILE)

    def _revoked(self, fl_ctx: FLContext) -> set[str]:
        server_root = fl_ctx.get_engine().get_workspace().get_root_dir()
        try:
            revocations = load_revocation_list(server_root)
        except RevocationListError as exc:
            self.logger.error("rejecting every site registration: %s", exc)
            return {ALL_SITES}
        return revocations.revoked_sites() if revocations else set()

    def _disable_revoked(self, fl_ctx: FLContext) -> None:
        names = sorted(self._revoked(fl_ctx) - {ALL_SITES})
        if not names:
            return
        try:
            fl_ctx.get_engine().disable_clients(names)
        except Exception as exc:  # noqa: BLE001 - FLARE raises plain exceptions; registration checks still apply.
            self.logger.error("failed to disable revoked sites %s: %s", names, exc)
            return
        self.logger.info("disabled revoked sites %s", names)

    def _check_registration(self, fl_ctx: FLContext) -> None:
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else None
        if self._check_error is not None:
            self._reject(fl_ctx, f"site {site!r} rejected because {self._check_error}")
            return
        revoked = self._revoked(fl_ctx)
        if ALL_SITES not in revoked and site not in revoked:
            return
        self._reject(fl_ctx, f"site {site!r} is revoked by the consortium (server {REVOCATION_FILE})")
        if site and ALL_SITES not in revoked:
            self._disable(fl_ctx, site)

    def _reject(self, fl_ctx: FLContext, reason: str) -> None:
        self.logger.warning("rejected registration: %s", reason)
        exceptions = fl_ctx.get_prop(FLContextKey.EXCEPTIONS) or {}
        exceptions[self.name] = NotAuthenticated(reason)
        fl_ctx.set_prop(FLContextKey.EXCEPTIONS, exceptions, private=True, sticky=False)

    def _disable(self, fl_ctx: FLContext, site: str) -> None:
        try:
            fl_ctx.get_engine().disable_clients([site])
        except Exception as exc:  # noqa: BLE001 - FLARE raises plain exceptions; the registration is rejected.
            self.logger.error("failed to disable revoked site %s: %s", site, exc)


def certificate_check_error(server_root: str | Path) -> str | None:
    """Return why the server's guard rejects every registration (it cannot check certificates), or None."""
    try:
        return (Path(server_root) / CERTIFICATE_CHECK_ERROR_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
