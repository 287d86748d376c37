"""Certificate lifecycle of a consortium: expiry per participant, revocation of a site, rotation of a site's key.

Hand-written because FLARE 2.9 issues certificates but neither lists their expiry nor revokes them.

- ``list_certificates`` reads every kit's certificate and flags those that expire within ``warn_days``.
- ``revoke_site`` appends the site's current certificate to the server's signed revocation list
  (``app_custom.flare.revocation_guard``), drops the site from the sites ``consortia up`` starts, audits the revocation
  as a ``site.left`` event with a ``reason``, and calls ``disconnect`` (the CLI passes FLARE's ``disable_client``) when
  the federation runs. It also writes ``revocations/revoked.json`` in the workspace: the list in the format that
  ``consortia site check`` reads, for sending to sites.
- ``rotate_site`` removes the site from FLARE's certificate state so that the provisioner creates a new key and
  certificate, records the old certificate in the list with ``scope: certificate``, and points the site's kit folder
  at the new kit (the site's data folder is copied over).

The server rejects a revoked site by name and any revoked certificate by its SHA-256 fingerprint or serial (see
``app_custom.flare.revocation_guard``), so after a rotation the old key no longer registers, while the new kit does.
NOTE: the check runs at registration only. A site process that registered with the old certificate before the
rotation keeps its session until it stops.

Exceptions: ``RevocationError`` for invalid requests; ``ProvisioningError`` and ``KitBuildError`` from the steps that
provision or read the root CA.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from app_custom.flare.event_forwarder import EventSpool, spool_for_server
from app_custom.flare.events import make_envelope
from app_custom.flare.revocation_guard import (
    REVOCATION_FILE,
    RevocationEntry,
    RevocationList,
    load_revocation_list,
    signed_bytes,
)
from provisioning.kit_issuance import EVENT_POST_TIMEOUT_S, cert_state_file, read_root_ca
from provisioning.kit_manifest import fingerprint, sign, signature_algorithm
from provisioning.onboarding import (
    certificate_file,
    check_unchanged,
    existing_fingerprints,
    participant_names,
    provision_again,
    read_consortium_copy,
)
from provisioning.provision import ProvisioningError
from provisioning.workspace import Workspace, WorkspaceError, WorkspaceState

EXPIRY_WARN_DAYS = 30
SITE_EXPORT = Path("revocations") / "revoked.json"


class RevocationError(ValueError):
    """Raised when a site cannot be revoked or rotated, naming the site and the fix."""


@dataclass(frozen=True)
class CertificateStatus:
    """Expiry of one participant's certificate."""

    participant: str
    role: str
    sha256: str
    serial: str
    not_valid_after: datetime
    days_left: int
    expiring: bool
    revoked: bool


def _role(state: WorkspaceState, name: str) -> str:
    if name == state.server_name:
        return "server"
    if name in state.sites:
        return "site"
    return state.users.get(name, "project_admin" if name == state.service_identity else "user")


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RevocationError(f"cannot read certificate {path}: {exc}; provision the workspace again") from None


def list_certificates(
    workspace: Workspace, *, warn_days: int = EXPIRY_WARN_DAYS, now: datetime | None = None
) -> list[CertificateStatus]:
    """Return the certificate expiry of every participant, revoked sites included, soonest expiry first."""
    state = workspace.load()
    now = now or datetime.now(UTC)
    revoked = _revoked_sites(workspace, state)
    names = [*participant_names(state), *sorted(revoked - set(participant_names(state)))]
    statuses = []
    for name in names:
        path = certificate_file(workspace.kit_dir(state, name))
        if not path.is_file():
            continue
        cert = _load_certificate(path)
        days_left = (cert.not_valid_after_utc - now).days
        statuses.append(
            CertificateStatus(
                participant=name,
                role="site" if name in revoked else _role(state, name),
                sha256=fingerprint(cert),
                serial=format(cert.serial_number, "X"),
                not_valid_after=cert.not_valid_after_utc,
                days_left=days_left,
                expiring=days_left < warn_days,
                revoked=name in revoked,
            )
        )
    return sorted(statuses, key=lambda status: (status.not_valid_after, status.participant))


def _revoked_sites(workspace: Workspace, state: WorkspaceState) -> set[str]:
    revocations = load_revocation_list(workspace.kit_dir(state, state.server_name))
    return revocations.revoked_sites() if revocations else set()


def write_revocation_list(workspace: Workspace, state: WorkspaceState, entries: list[RevocationEntry]) -> Path:
    """Sign ``entries`` with the root CA key and write them into the server kit and the site export.

    Returns:
        The server kit's ``local/revoked.json``.
    """
    _, key, _ = read_root_ca(workspace, state)
    signature = base64.b64encode(sign(key, signed_bytes(entries))).decode("ascii")
    revocations = RevocationList(revoked=entries, signature_algorithm=signature_algorithm(key), signature=signature)
    target = workspace.kit_dir(state, state.server_name) / REVOCATION_FILE
    _write_atomic(target, revocations.model_dump_json(indent=2) + "\n")
    site_format = {
        "revoked": [
            {
                "sha256": e.sha256,
                "serial": e.serial,
                "participant": e.participant,
                "reason": e.reason,
                "revoked_at": e.revoked_at.isoformat(),
            }
            for e in entries
        ]
    }
    _write_atomic(workspace.root / SITE_EXPORT, json.dumps(site_format, indent=2) + "\n")
    return target


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _current_entries(workspace: Workspace, state: WorkspaceState) -> list[RevocationEntry]:
    revocations = load_revocation_list(workspace.kit_dir(state, state.server_name))
    return list(revocations.revoked) if revocations else []


def _entry(
    workspace: Workspace, state: WorkspaceState, site: str, *, scope: str, reason: str, actor: str
) -> RevocationEntry:
    cert = _load_certificate(certificate_file(workspace.kit_dir(state, site)))
    return RevocationEntry(
        participant=site,
        scope=scope,  # type: ignore[arg-type]
        sha256=fingerprint(cert),
        serial=format(cert.serial_number, "X"),
        reason=reason,
        revoked_at=datetime.now(UTC),
        revoked_by=actor,
    )


def revoke_site(
    workspace: Workspace,
    site: str,
    *,
    reason: str,
    actor: str,
    disconnect: Callable[[str], None] | None = None,
) -> RevocationEntry:
    """Revoke a site: sign it into the server's revocation list, audit it, and disconnect it when running.

    Args:
        workspace: the provisioned workspace.
        site: the site to revoke.
        reason: why, stored in the list and in the audit event.
        actor: who revoked it.
        disconnect: called with the site name to disconnect it from a running server (FLARE's
            ``disable_client``); None when the federation is down.

    Raises:
        RevocationError: when the site is unknown or already revoked.
    """
    state = workspace.load()
    entries = _current_entries(workspace, state)
    if any(e.participant == site and e.scope == "site" for e in entries):
        raise RevocationError(f"site {site!r} is already revoked; see {REVOCATION_FILE} in the server kit")
    if site not in state.sites:
        raise RevocationError(f"unknown site {site!r}: revoke one of {', '.join(state.sites) or 'no sites'}")
    if not reason.strip():
        raise RevocationError("the revocation reason is empty: pass --reason with why the site is revoked")
    entry = _entry(workspace, state, site, scope="site", reason=reason, actor=actor)
    write_revocation_list(workspace, state, [*entries, entry])
    state.sites = [name for name in state.sites if name != site]
    state.kit_dirs.setdefault(site, str(workspace.kit_dir(state, site)))
    workspace.save(state)
    payload = {"reason": reason, "revoked": True, "certificate_fingerprint": entry.sha256}
    record_event(workspace, state, make_envelope("site.left", job_id=None, site=site, actor=actor, payload=payload))
    if disconnect is not None:
        disconnect(site)
    return entry


@dataclass(frozen=True)
class RotatedSite:
    """The outcome of ``rotate_site``: the site's new kit and both certificates."""

    site: str
    kit_dir: Path
    old_sha256: str
    new_sha256: str


def rotate_site(workspace: Workspace, site: str, *, actor: str) -> RotatedSite:
    """Issue a new key and certificate for ``site`` and record its old certificate as revoked.

    Raises:
        RevocationError: when the site is unknown or the workspace uses HE.
        ProvisioningError: when FLARE fails or another participant's certificate changed.
    """
    state = workspace.load()
    if site not in state.sites:
        raise RevocationError(f"unknown site {site!r}: rotate one of {', '.join(state.sites) or 'no sites'}")
    if state.he:
        # HEBuilder creates new TenSEAL contexts on every run, which would split the sites' shared secret key.
        raise RevocationError("rotating a kit of an HE workspace is not supported: provision the workspace again")
    old_kit = workspace.kit_dir(state, site)
    old_entry = _entry(workspace, state, site, scope="certificate", reason="key rotated", actor=actor)
    before = existing_fingerprints(workspace, state)
    _, consortium = read_consortium_copy(workspace)

    state_file = cert_state_file(workspace, state)
    cert_state = json.loads(state_file.read_text(encoding="utf-8"))
    if cert_state.pop(site, None) is None:
        raise RevocationError(f"FLARE's certificate state {state_file} has no entry for {site!r}: provision again")
    _write_atomic(state_file, json.dumps(cert_state))
    kits_dir = provision_again(workspace, state, consortium)
    check_unchanged(before, kits_dir, except_for={site})

    new_kit = kits_dir / site
    if (old_kit / "data").is_dir() and not (new_kit / "data").exists():
        shutil.copytree(old_kit / "data", new_kit / "data")
    new_sha256 = fingerprint(_load_certificate(certificate_file(new_kit)))
    if new_sha256 == old_entry.sha256:
        raise ProvisioningError(f"FLARE reissued the same certificate for {site!r}; check {state_file}")
    write_revocation_list(workspace, state, [*_current_entries(workspace, state), old_entry])
    state.kit_dirs[site] = str(new_kit)
    workspace.save(state)
    payload = {
        "reason": old_entry.reason,
        "revoked": True,
        "scope": "certificate",
        "certificate_fingerprint": old_entry.sha256,
        "new_certificate_fingerprint": new_sha256,
    }
    record_event(workspace, state, make_envelope("site.left", job_id=None, site=site, actor=actor, payload=payload))
    return RotatedSite(site=site, kit_dir=new_kit, old_sha256=old_entry.sha256, new_sha256=new_sha256)


def record_event(workspace: Workspace, state: WorkspaceState, envelope: dict[str, Any]) -> str:
    """Post an audit event to the admin service, or spool it for the server's event forwarder when that fails.

    Returns:
        ``delivered``, or ``spooled:`` with the reason the post failed.
    """
    url = f"http://127.0.0.1:{state.api_port}/api/v1/events"
    try:
        token = workspace.read_secret(workspace.event_token_file)
        response = httpx.post(url, json=envelope, headers={"Authorization": f"Bearer {token}"}, timeout=EVENT_POST_TIMEOUT_S)
    except WorkspaceError as exc:
        reason = str(exc)
    except httpx.HTTPError as exc:
        reason = f"admin service unreachable ({type(exc).__name__})"
    else:
        if response.is_success:
            return "delivered"
        reason = f"admin service answered HTTP {response.status_code}"
    spool = spool_for_server(workspace.kit_dir(state, state.server_name))
    (spool or EventSpool(workspace.runtime_dir / "server" / "event-spool")).put(envelope)
    return f"spooled: {reason}"
