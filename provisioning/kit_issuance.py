"""What issuing a kit needs besides signing: the root CA, the kit's files, the hospital README and the audit record.

FLARE 2.9 has no API to read its own CA back, so the root certificate and key are read from the provisioner's state
file ``provision/<project>/state/cert.json`` (``root_cert`` and ``root_pri_key``, PEM strings, written by
``nvflare.lighter.impl.cert.CertBuilder``). That file also contains every participant's private key and must never be
copied into a kit.

Issuance is an audit event (``kit.issued``) posted to the admin service. When the service is down or rejects the
event, the event is written to the server's event spool, in the format of ``EventSpool.put``, so the server's event
forwarder delivers it later.

Errors are ``provisioning.kit_archive.KitBuildError``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from provisioning.kit_archive import KitBuildError, KitFiles
from provisioning.workspace import Workspace, WorkspaceError, WorkspaceState

KIT_FOLDERS = ("startup", "local")
KIT_TOP_FILES = ("readme.txt",)
SKIPPED_NAMES = ("__pycache__",)
KIT_ISSUED = "kit.issued"
EVENT_POST_TIMEOUT_S = 3.0


def cert_state_file(workspace: Workspace, state: WorkspaceState) -> Path:
    """Return the path of FLARE's provisioning state file, which contains the root CA key."""
    return workspace.provision_dir / state.project / "state" / "cert.json"


def read_root_ca(
    workspace: Workspace, state: WorkspaceState
) -> tuple[x509.Certificate, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, list[bytes]]:
    """Read the root CA certificate and private key from FLARE's provisioning state.

    Returns:
        The certificate, the private key, and byte strings that occur in any PEM or DER copy of that key (used to
        prove that no kit file contains it).

    Raises:
        KitBuildError: when the state file is missing or contains no usable root CA.
    """
    path = cert_state_file(workspace, state)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        cert = x509.load_pem_x509_certificate(content["root_cert"].encode("ascii"))
        key = serialization.load_pem_private_key(content["root_pri_key"].encode("ascii"), password=None)
    except FileNotFoundError:
        raise KitBuildError(f"root CA state not found at {path}: build kits on the machine that provisioned") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise KitBuildError(f"root CA state {path} is unreadable ({exc}): provision the workspace again") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KitBuildError(f"root CA key in {path} is a {type(key).__name__}; only RSA and EC keys can sign kits")
    return cert, key, _key_markers(key)


def _key_markers(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> list[bytes]:
    markers = []
    for key_format in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
        der = key.private_bytes(serialization.Encoding.DER, key_format, serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
        # The first base64 lines are the same for every key of a type, so only lines from the middle identify this key.
        lines = pem.splitlines()[1:-1]
        markers += [der, *lines[len(lines) // 3 : len(lines) // 3 + 2]]
    return markers


def kit_files(kit_dir: Path, participant: str) -> KitFiles:
    """Collect the files of a FLARE kit folder: ``readme.txt``, ``startup/`` and ``local/``, never ``data/``.

    Returns:
        Kit-relative POSIX path to (content, permission bits).

    Raises:
        KitBuildError: when the kit folder or its ``startup/`` is missing or a file is a symbolic link.
    """
    if not (kit_dir / "startup").is_dir():
        raise KitBuildError(f"kit of {participant} not found at {kit_dir}: run 'consortia provision' first")
    paths = [kit_dir / name for name in KIT_TOP_FILES if (kit_dir / name).exists()]
    for folder in KIT_FOLDERS:
        if (kit_dir / folder).is_dir():
            paths += sorted((kit_dir / folder).rglob("*"))
    files: KitFiles = {}
    for path in paths:
        relative = path.relative_to(kit_dir)
        if any(part in SKIPPED_NAMES for part in relative.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise KitBuildError(f"kit of {participant}: {relative} is a symbolic link; kits carry plain files only")
        if path.is_file():
            files[relative.as_posix()] = (path.read_bytes(), path.stat().st_mode & 0o777)
    return files


def _server_target(kit_dir: Path) -> str:
    try:
        config = json.loads((kit_dir / "startup" / "fed_client.json").read_text(encoding="utf-8"))
        return str(config["servers"][0]["service"]["target"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise KitBuildError(f"site kit {kit_dir} has no usable startup/fed_client.json ({exc})") from None


def hospital_readme(kit_dir: Path, site: str, state: WorkspaceState, issued_at: datetime) -> str:
    """Write the short hospital IT guide that goes into a site's kit zip."""
    host = _server_target(kit_dir).rsplit(":", 1)[0]
    try:
        data_dir = json.loads((kit_dir / "local" / "consortia_site.json").read_text(encoding="utf-8"))["data_dir"]
    except (OSError, ValueError, KeyError):
        data_dir = "data"
    return f"""# Consortia site kit: {site}

Project `{state.project}`, issued {issued_at.isoformat()}. The full runbook is `docs/hospital-it.md` in Consortia.

1. **Verify the zip before unpacking it.** Ask the consortium for its root CA fingerprint by phone or another
   channel you trust, never from this kit or the e-mail that carried it:
   `consortia kit verify {site}.zip --ca-fingerprint <announced fingerprint> --extract .`
2. **Firewall.** This site connects out to the server; it needs no inbound port. Allow outbound TCP from this host to
   `{host}` port **{state.fed_learn_port}** (federated learning). Admin console users of your organisation also need
   port **{state.admin_port}** on the same host.
3. **Data.** Put `train.csv` and `test.csv` in `{data_dir}` (the `data_dir` of `local/consortia_site.json`, relative
   to this folder unless absolute), then run `consortia site data check --kit {site}`. Nothing is sent anywhere.
4. **Reach the server.** `consortia site check --kit {site}` performs a TLS handshake with the server and reports
   what is wrong and how to fix it. It does not register this site, so it is safe while the site runs.
5. **Start.** `cd {site} && ./startup/start.sh` (restarts the site if it dies) or `./startup/sub_start.sh --once`.

`startup/client.key` is this site's private key: keep it readable by the account that runs the site only.
"""


def kit_issued_event(manifest: dict[str, Any], *, actor: str) -> dict[str, Any]:
    """Build the ``kit.issued`` audit event for a signed manifest (event schema version 1)."""
    certificate = manifest["certificate"]
    return {
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "type": KIT_ISSUED,
        "occurred_at": manifest["issued_at"],
        "job_id": None,
        "site": manifest["participant"] if manifest["role"] == "site" else None,
        "round": None,
        "actor": actor,
        "payload": {
            "participant": manifest["participant"],
            "role": manifest["role"],
            "certificate_fingerprint": certificate["sha256_fingerprint"],
            "expires_at": certificate["not_valid_after"],
        },
    }


def record_issuance(
    workspace: Workspace, state: WorkspaceState, manifest: dict[str, Any], *, actor: str
) -> tuple[str, Path | None]:
    """Post a ``kit.issued`` event to the admin service, or spool it for the server's event forwarder.

    Returns:
        How the event was recorded (``delivered``, or ``spooled:`` and the reason) and the spool file, if any.
    """
    event = kit_issued_event(manifest, actor=actor)
    url = f"http://127.0.0.1:{state.api_port}/api/v1/events"
    try:
        token = workspace.read_secret(workspace.event_token_file)
        response = httpx.post(
            url, json=event, headers={"Authorization": f"Bearer {token}"}, timeout=EVENT_POST_TIMEOUT_S
        )
    except WorkspaceError as exc:
        reason = str(exc)
    except httpx.HTTPError as exc:
        reason = f"admin service unreachable ({type(exc).__name__})"
    else:
        if response.is_success:
            return "delivered", None
        reason = f"admin service answered HTTP {response.status_code}"
    return f"spooled: {reason}", _spool_event(workspace, state, event)


def _spool_event(workspace: Workspace, state: WorkspaceState, event: dict[str, Any]) -> Path:
    from app_custom.flare.event_forwarder import EventSpool, spool_for_server

    spool = spool_for_server(workspace.kit_dir(state, state.server_name))
    if spool is None:
        spool = EventSpool(workspace.runtime_dir / "server" / "event-spool")
    return spool.put(event)
