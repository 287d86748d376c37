"""Provision a consortium: validate the consortium file, run FLARE's provisioner, record the workspace state.

FLARE does the PKI (root CA, CA-signed server, site and admin certificates, mTLS configuration); this module only
translates our consortium file into a FLARE project, adds our builder (see ``provisioning.builders``) and chooses
free ports on 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvflare.lighter.constants import CtxKey
from nvflare.lighter.prov_utils import prepare_builders, prepare_packager
from nvflare.lighter.provision import prepare_project
from nvflare.lighter.provisioner import Provisioner

from provisioning.schema import Consortium, Port, load_consortium
from provisioning.workspace import Workspace, WorkspaceState

logger = logging.getLogger(__name__)

HE_PRESET = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40, "scheme": "CKKS"}


class ProvisioningError(RuntimeError):
    """Raised when FLARE's provisioner fails or the workspace cannot be written."""


@dataclass(frozen=True)
class ProvisionResult:
    """The workspace and state written by provisioning."""

    workspace: Workspace
    state: WorkspaceState


def free_port(host: str = "127.0.0.1", exclude: set[int] | None = None) -> int:
    """Return a TCP port that is free on ``host`` right now and not in ``exclude``."""
    exclude = exclude or set()
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in exclude:
            return port
    raise ProvisioningError(f"could not find a free TCP port on {host}")


def ensure_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raise ProvisioningError naming ``what`` when ``port`` is already in use on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a port whose old connections are in TIME_WAIT is free for them too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ProvisioningError(
                f"port {port} for the {what} is already in use on {host}: "
                "stop the program using it or set the port to 'auto' in the consortium file"
            ) from None


def _resolve_port(value: Port, what: str, taken: set[int]) -> int:
    if value == "auto":
        port = free_port(exclude=taken)
    else:
        ensure_port_free(value, what)
        port = value
    taken.add(port)
    return port


def flare_project(
    consortium: Consortium,
    *,
    fed_learn_port: int,
    admin_port: int,
    api_port: int,
    workspace: Workspace,
    he: bool = False,
) -> dict[str, Any]:
    """Translate a consortium into FLARE's project dictionary (api_version 3)."""
    server = consortium.server
    host_names = list(dict.fromkeys([server.name, *server.host_names, "localhost", "127.0.0.1"]))
    participants: list[dict[str, Any]] = [
        {
            "name": server.name,
            "type": "server",
            "org": server.org,
            "fed_learn_port": fed_learn_port,
            "admin_port": admin_port,
            "host_names": host_names,
            "default_host": server.name,
        }
    ]
    participants += [{"name": s.name, "type": "client", "org": s.org} for s in consortium.sites]
    participants += [{"name": u.name, "type": "admin", "org": u.org, "role": u.role} for u in consortium.flare_users]
    builders: list[dict[str, Any]] = [
        {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder", "args": {"template_file": "master_template.yml"}},
        {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
    ]
    if he:
        builders.append({"path": "nvflare.lighter.impl.he.HEBuilder", "args": dict(HE_PRESET)})
    builders += [
        {"path": "nvflare.lighter.impl.cert.CertBuilder"},
        {
            "path": "provisioning.builders.ConsortiaBuilder",
            "args": {
                "runtime_dir": str(workspace.runtime_dir / "server"),
                "event_url": f"http://127.0.0.1:{api_port}/api/v1/events",
                "event_token_file": str(workspace.event_token_file),
                "site_policies": {s.name: s.policy.model_dump(mode="json") for s in consortium.sites},
            },
        },
        {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
    ]
    return {
        "api_version": 3,
        "name": consortium.project,
        "description": consortium.description,
        "participants": participants,
        "builders": builders,
    }


def provision(
    consortium_file: str | Path,
    workspace_dir: str | Path,
    *,
    force: bool = False,
    he: bool = False,
) -> ProvisionResult:
    """Provision every participant of ``consortium_file`` into ``workspace_dir``.

    Args:
        consortium_file: path of the consortium file.
        workspace_dir: workspace folder (created if missing).
        force: replace an existing provisioned workspace; the old one is kept as ``<workspace>.previous`` (replacing
            an older copy) and restored if provisioning fails.
        he: also create TenSEAL CKKS contexts for homomorphic-encryption jobs.

    Raises:
        ConsortiumFileError: the consortium file is invalid.
        ProvisioningError: the workspace exists without ``force``, a fixed port is taken, or FLARE fails.
    """
    consortium = load_consortium(consortium_file)
    workspace = Workspace(workspace_dir)
    if workspace.exists() and not force:
        raise ProvisioningError(
            f"workspace {workspace.root} is already provisioned; use --force to replace it "
            f"(the old workspace is kept as {_backup_path(workspace)} until the next --force)"
        )
    if workspace.exists():
        _check_not_running(workspace)

    # Every check that can fail runs before the old workspace is touched.
    taken: set[int] = set()
    fed_learn_port = _resolve_port(consortium.server.fed_learn_port, "FLARE server (fed_learn_port)", taken)
    admin_port = _resolve_port(consortium.server.admin_port, "FLARE admin port", taken)
    api_port = _resolve_port(consortium.admin_service.port, "admin service", taken)

    backup = _move_aside(workspace) if workspace.exists() else None
    try:
        state = _provision_into(consortium, consortium_file, workspace, fed_learn_port, admin_port, api_port, he)
    except BaseException:
        if backup is not None:
            shutil.rmtree(workspace.root, ignore_errors=True)
            os.replace(backup, workspace.root)
            logger.error("provisioning failed; restored the previous workspace %s", workspace.root)
        raise
    return ProvisionResult(workspace=workspace, state=state)


def _provision_into(
    consortium: Consortium,
    consortium_file: str | Path,
    workspace: Workspace,
    fed_learn_port: int,
    admin_port: int,
    api_port: int,
    he: bool,
) -> WorkspaceState:
    workspace.root.mkdir(parents=True, exist_ok=True)
    for folder in (workspace.logs_dir, workspace.reports_dir, workspace.home_dir, workspace.runtime_dir):
        folder.mkdir(parents=True, exist_ok=True)

    workspace.write_new_secret(workspace.event_token_file)
    workspace.write_new_secret(workspace.api_token_file)

    project_dict = flare_project(
        consortium,
        fed_learn_port=fed_learn_port,
        admin_port=admin_port,
        api_port=api_port,
        workspace=workspace,
        he=he,
    )
    kits_dir = run_flare_provisioner(project_dict, workspace)
    shutil.copyfile(consortium_file, workspace.root / "consortium.yml")

    if consortium.demo_data is not None:
        _write_demo_data(consortium, kits_dir)

    leads = consortium.users_with_role("lead")
    state = WorkspaceState(
        project=consortium.project,
        server_name=consortium.server.name,
        fed_learn_port=fed_learn_port,
        admin_port=admin_port,
        api_port=api_port,
        kits_dir=str(kits_dir),
        sites=[s.name for s in consortium.sites],
        site_orgs={s.name: s.org for s in consortium.sites},
        users={u.name: u.role for u in consortium.users},
        service_identity=consortium.admin_service.identity,
        lead_user=leads[0].name if leads else None,
        he=he,
    )
    workspace.save(state)
    logger.info("provisioned project %s into %s", consortium.project, kits_dir)
    return state


def run_flare_provisioner(project_dict: dict[str, Any], workspace: Workspace) -> Path:
    """Run FLARE's provisioner on ``workspace.provision_dir`` and return the new ``prod_NN`` kit folder.

    FLARE keeps the root CA and every issued certificate in ``provision/<project>/state`` and reuses them on
    later runs, so running it again only creates keys and certificates for participants it has not seen.

    Raises:
        ProvisioningError: when FLARE fails or writes no kits.
    """
    try:
        project = prepare_project(project_dict)
        builders = prepare_builders(project_dict)
        packager = prepare_packager(project_dict)
        ctx = Provisioner(str(workspace.provision_dir), builders, packager).provision(project)
    except Exception as exc:  # FLARE raises bare Exceptions from builders; surface them with context.
        raise ProvisioningError(f"FLARE provisioning failed: {exc}") from exc
    if isinstance(ctx, dict) and ctx.get(CtxKey.BUILD_ERROR):
        errors = "; ".join(ctx.get(CtxKey.ERRORS, [])) or "see the provisioner log"
        raise ProvisioningError(f"FLARE provisioning failed: {errors}")
    project_root = workspace.provision_dir / project_dict["name"]
    prod_dirs = sorted(project_root.glob("prod_*"))
    if not prod_dirs:
        raise ProvisioningError(f"FLARE provisioning wrote no kits under {project_root}")
    return prod_dirs[-1]


def _write_demo_data(consortium: Consortium, kits_dir: Path) -> None:
    from app_custom.data.tabular import write_site_partitions

    spec = consortium.demo_data
    assert spec is not None
    site_dirs = {site.name: kits_dir / site.name / "data" for site in consortium.sites}
    summary = write_site_partitions(
        site_dirs, seed=spec.seed, label_skew_alpha=spec.label_skew_alpha, test_fraction=spec.test_fraction
    )
    for site, info in summary.items():
        logger.info("site %s: %s", site, info)


def _backup_path(workspace: Workspace) -> Path:
    return workspace.root.with_name(workspace.root.name + ".previous")


def _check_not_running(workspace: Workspace) -> None:
    state = workspace.load()
    if any(process.is_alive() for process in state.processes):
        raise ProvisioningError(
            f"the federation in {workspace.root} is still running: run 'consortia down' before provisioning again"
        )


def _move_aside(workspace: Workspace) -> Path:
    """Move the old workspace to ``<workspace>.previous`` (replacing an older one) so nothing recorded is lost."""
    backup = _backup_path(workspace)
    if backup.exists():
        shutil.rmtree(backup)
    os.replace(workspace.root, backup)
    logger.warning("kept the previous workspace as %s", backup)
    return backup
