"""Add a site to a provisioned, possibly running, consortium without re-issuing anyone else's kit.

FLARE's provisioner has no "add one participant" mode, but it keeps the root CA and every issued key and certificate
in ``provision/<project>/state/cert.json`` and reuses them when it runs again on the same provisioning workspace.
``add_site`` therefore adds the site to the workspace's copy of the consortium file, runs the provisioner again
(which writes a complete new ``prod_NN`` folder), checks that every existing participant's certificate in the new
folder is byte-for-byte the one it already has (same SHA-256 fingerprint), and records only the new site's kit
folder in ``state.json``. Existing participants keep running from their current kits; the server accepts the new
site without a restart because FLARE's server admits any site whose certificate the root CA signed.

Demo data: the original partitions are disjoint, and a new disjoint slice cannot be cut afterwards without moving
rows out of running sites. A site added later gets its own partition from the same partitioner, run over the old
sites plus the new one with a seed derived from the new site's name, so its rows are seeded and label-skewed like
the others but overlap with theirs.

Exceptions: ``provisioning.provision.ProvisioningError`` (wrapping FLARE failures and invalid requests) and
``provisioning.schema.ConsortiumFileError``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from pydantic import ValidationError

from provisioning.kit_manifest import fingerprint
from provisioning.provision import ProvisioningError, flare_project, run_flare_provisioner
from provisioning.schema import Consortium, ConsortiumFileError, load_consortium
from provisioning.workspace import Workspace, WorkspaceState

logger = logging.getLogger(__name__)

CONSORTIUM_COPY = "consortium.yml"


@dataclass(frozen=True)
class OnboardedSite:
    """A site added by ``add_site``: its kit folder, certificate fingerprint and data summary."""

    name: str
    org: str
    kit_dir: Path
    certificate_fingerprint: str
    unchanged_participants: int
    data_summary: dict[str, float] | None


def certificate_file(kit_dir: Path) -> Path:
    """Return the participant certificate of a kit (``server.crt`` for the server, ``client.crt`` otherwise)."""
    startup = Path(kit_dir) / "startup"
    server_cert = startup / "server.crt"
    return server_cert if server_cert.is_file() else startup / "client.crt"


def kit_fingerprint(kit_dir: Path) -> str:
    """Return the SHA-256 fingerprint of a kit's participant certificate.

    Raises:
        ProvisioningError: when the kit has no readable certificate.
    """
    path = certificate_file(kit_dir)
    try:
        return fingerprint(x509.load_pem_x509_certificate(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ProvisioningError(f"cannot read the certificate {path}: {exc}") from None


def participant_names(state: WorkspaceState) -> list[str]:
    """Return every participant with a FLARE kit: the server, the sites and the admin users."""
    users = [state.service_identity, *state.users]
    return [state.server_name, *state.sites, *users]


def existing_fingerprints(workspace: Workspace, state: WorkspaceState) -> dict[str, str]:
    """Return the certificate fingerprint of every participant whose kit is on disk."""
    found = {}
    for name in participant_names(state):
        kit = workspace.kit_dir(state, name)
        if certificate_file(kit).is_file():
            found[name] = kit_fingerprint(kit)
    return found


def read_consortium_copy(workspace: Workspace) -> tuple[dict[str, Any], Consortium]:
    """Read the workspace's copy of the consortium file as raw YAML and as the validated model."""
    path = workspace.root / CONSORTIUM_COPY
    consortium = load_consortium(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return raw, consortium


def validate_consortium(raw: dict[str, Any]) -> Consortium:
    """Validate an edited consortium file.

    Raises:
        ConsortiumFileError: naming each invalid field.
    """
    try:
        return Consortium.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConsortiumFileError(f"the updated consortium is invalid: {problems}") from None


def write_consortium_copy(workspace: Workspace, raw: dict[str, Any]) -> None:
    """Write ``raw`` atomically as the workspace's copy of the consortium file."""
    path = workspace.root / CONSORTIUM_COPY
    tmp = path.with_suffix(".yml.tmp")
    tmp.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def provision_again(workspace: Workspace, state: WorkspaceState, consortium: Consortium) -> Path:
    """Run FLARE's provisioner again with the recorded ports and return the new ``prod_NN`` folder.

    Raises:
        ProvisioningError: when FLARE fails.
    """
    project = flare_project(
        consortium,
        fed_learn_port=state.fed_learn_port,
        admin_port=state.admin_port,
        api_port=state.api_port,
        workspace=workspace,
        he=state.he,
    )
    return run_flare_provisioner(project, workspace)


def check_unchanged(before: dict[str, str], kits_dir: Path, *, except_for: set[str]) -> int:
    """Check that the new kits carry the same certificates as before; return how many were compared.

    Raises:
        ProvisioningError: naming the first participant whose certificate changed.
    """
    compared = 0
    for name, old in sorted(before.items()):
        if name in except_for:
            continue
        new = kit_fingerprint(kits_dir / name)
        if new != old:
            raise ProvisioningError(
                f"provisioning again changed the certificate of {name!r} ({old} -> {new}); the provisioning "
                f"state in {kits_dir.parent / 'state'} does not match the issued kits, so do not distribute {kits_dir}"
            )
        compared += 1
    return compared


def add_site(workspace: Workspace, name: str, org: str, *, policy: dict[str, Any] | None = None) -> OnboardedSite:
    """Provision a kit for a new site and record it, leaving every other kit as issued.

    Args:
        workspace: a provisioned workspace (the federation may be running).
        name: the new site's name, for example ``hospital-d``.
        org: the new site's organisation (letters, digits and ``_``).
        policy: the site's policy fields (``SitePolicy``); None gives the default policy.

    Raises:
        ProvisioningError: the name is taken, FLARE fails, or an existing certificate changed.
        ConsortiumFileError: the name, org or policy is invalid.
    """
    state = workspace.load()
    if name in participant_names(state):
        raise ProvisioningError(f"participant {name!r} already exists in {workspace.root}: choose another site name")
    raw, _ = read_consortium_copy(workspace)
    entry: dict[str, Any] = {"name": name, "org": org}
    if policy:
        entry["policy"] = policy
    raw.setdefault("sites", []).append(entry)
    consortium = validate_consortium(raw)
    before = existing_fingerprints(workspace, state)

    kits_dir = provision_again(workspace, state, consortium)
    compared = check_unchanged(before, kits_dir, except_for={name})
    write_consortium_copy(workspace, raw)

    kit_dir = kits_dir / name
    summary = write_new_site_data(consortium, state, kit_dir, name)
    state.sites.append(name)
    state.site_orgs[name] = org
    state.kit_dirs[name] = str(kit_dir)
    workspace.save(state)
    logger.info("added site %s (org %s) with kit %s; %d existing certificates unchanged", name, org, kit_dir, compared)
    return OnboardedSite(
        name=name,
        org=org,
        kit_dir=kit_dir,
        certificate_fingerprint=kit_fingerprint(kit_dir),
        unchanged_participants=compared,
        data_summary=summary,
    )


def new_site_seed(base_seed: int, site: str) -> int:
    """Return the partition seed of a site added after provisioning: stable per site name, distinct from the base."""
    digest = hashlib.sha256(f"{base_seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def write_new_site_data(
    consortium: Consortium, state: WorkspaceState, kit_dir: Path, name: str
) -> dict[str, float] | None:
    """Write a demo data partition for a site added later; None when the consortium has no demo data.

    The partition overlaps with the existing sites' rows (see the module docstring).
    """
    spec = consortium.demo_data
    if spec is None:
        return None
    from app_custom.data.tabular import write_site_partitions

    others = [site for site in state.sites if site != name]
    with tempfile.TemporaryDirectory() as scratch:
        site_dirs = {site: Path(scratch) / site for site in others}
        site_dirs[name] = kit_dir / "data"
        summary = write_site_partitions(
            site_dirs,
            seed=new_site_seed(spec.seed, name),
            label_skew_alpha=spec.label_skew_alpha,
            test_fraction=spec.test_fraction,
        )
        shutil.rmtree(scratch, ignore_errors=True)
    return summary[name]
