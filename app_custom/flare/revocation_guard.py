"""The server's revocation list and the server component that keeps revoked sites out of the federation.

Hand-written because FLARE 2.9 has no certificate revocation: any certificate signed by the consortium's root CA
registers. FLARE only offers ``disable_client``, a list of disabled site names kept in the server's memory and in
``disabled_clients.json``.

The list is ``local/revoked.json`` in the server kit, written by ``consortia site revoke`` and ``site rotate``. Its
entries are signed with the root CA key (RSASSA-PSS-SHA256 or ECDSA-SHA256 over the canonical JSON of ``revoked``), so
the server checks it against its own ``startup/rootCA.pem`` and an edited list is detected.

``RevocationGuard`` (server ``local/resources.json``):

- at ``SYSTEM_START`` it disables every revoked site name through the engine's ``disable_clients``, so FLARE itself
  rejects their registration and heartbeats;
- at ``CLIENT_REGISTER_RECEIVED`` it re-reads the list and rejects a revoked name with ``NotAuthenticated`` in
  ``FLContextKey.EXCEPTIONS``, which ``FedServer.register_client`` raises before it authenticates the site.

NOTE: enforcement is by site name, not by certificate. FLARE 2.9 keeps the certificate a site presents in the
registration request (``IdentityChallengeKey.CERT``) and never puts it into the FLContext that components see. An
entry with ``scope: certificate`` (the old certificate of a rotated site) is therefore recorded and checked by
``consortia site check``, but the server still accepts that old certificate, because it carries the site's name.

Privacy: a list that does not verify, or cannot be read, revokes every site (fails closed) and logs why.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

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

REVOCATION_FILE = "local/revoked.json"
ROOT_CA_FILE = "startup/rootCA.pem"
REVOCATION_GUARD_ID = "consortia_revocation_guard"
ALL_SITES = "*"


class RevocationListError(ValueError):
    """Raised when a revocation list cannot be read or its signature does not verify."""


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


class RevocationGuard(FLComponent):
    """Server component that disables revoked sites and rejects their registration."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.SYSTEM_START:
            self._disable_revoked(fl_ctx)
        elif event_type == EventType.CLIENT_REGISTER_RECEIVED:
            self._check_registration(fl_ctx)

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
        revoked = self._revoked(fl_ctx)
        if ALL_SITES not in revoked and site not in revoked:
            return
        reason = f"site {site!r} is revoked by the consortium (server {REVOCATION_FILE})"
        self.logger.warning("rejected registration: %s", reason)
        exceptions = fl_ctx.get_prop(FLContextKey.EXCEPTIONS) or {}
        exceptions[self.name] = NotAuthenticated(reason)
        fl_ctx.set_prop(FLContextKey.EXCEPTIONS, exceptions, private=True, sticky=False)
        if site and ALL_SITES not in revoked:
            self._disable(fl_ctx, site)

    def _disable(self, fl_ctx: FLContext, site: str) -> None:
        try:
            fl_ctx.get_engine().disable_clients([site])
        except Exception as exc:  # noqa: BLE001 - FLARE raises plain exceptions; the registration is rejected.
            self.logger.error("failed to disable revoked site %s: %s", site, exc)
