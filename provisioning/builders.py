"""FLARE provisioning builder that hardens kits and wires in Consortia's components.

FLARE's provisioner calls every builder listed in the project file; this one runs after FLARE's
``StaticFileBuilder`` (which writes ``local/resources.json.default``) and before ``SignatureBuilder``, so HE kits
are signed with our changes included. It writes ``local/resources.json`` for every participant:

- **server**: the job store and snapshot store move from FLARE's host-wide defaults (``/tmp/nvflare/...``, shared by
  every server on the machine) into the provisioning workspace; the event forwarder that reports job lifecycle,
  rounds and contributions to the admin service is added as a server component.
- **sites and server**: the class allow-list is extended with our installed package (``app_custom``) and the few
  FLARE classes our jobs use, so jobs run without shipping custom code (BYOC).
- **sites**: ``local/consortia_site.json`` names the site's own data folder, which the training code reads only,
  and the site's privacy budget (``privacy_budget``), which caps the epsilon DP-SGD jobs may spend at the site.
- **site policy**: each site's policy (``provisioning.site_policy``) is written into its ``local`` folder and the
  site's ``SitePolicyGuard`` is added to its components as ``app_deployer``, the id FLARE deploys jobs through; a
  policy's ``privacy_budget`` replaces the default.
- **server**: ``RevocationGuard`` (revoked sites cannot register) and ``SitePolicyAudit`` (policy refusals are
  audited) are added as components.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nvflare.lighter.constants import ProvFileName
from nvflare.lighter.ctx import ProvisionContext
from nvflare.lighter.entity import Participant, Project
from nvflare.lighter.spec import Builder

from app_custom.flare.event_forwarder import EVENT_FORWARDER_ID
from app_custom.flare.revocation_guard import REVOCATION_GUARD_ID
from app_custom.flare.site_policy_guard import SITE_POLICY_AUDIT_ID, SITE_POLICY_GUARD_ID, SitePolicy
from provisioning.site_policy import write_policy_files

SITE_CONFIG_FILE = "consortia_site.json"

# FLARE classes our jobs reference that are not on FLARE 2.9's default class allow-list.
FLARE_CLASSES_USED = (
    "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
    "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
)
OUR_PACKAGE_PREFIX = "app_custom."
# Each DP job charges its delta once, so a delta budget of 1e-4 admits ten jobs at the usual delta of 1e-5.
DEFAULT_PRIVACY_BUDGET = {"epsilon": 10.0, "delta": 1e-4}


class ConsortiaBuilder(Builder):
    """Writes hardened ``local/resources.json`` files and site data settings into every kit.

    Args:
        runtime_dir: absolute folder for server state (job store, snapshots, event spool).
        event_url: the admin service's event endpoint, for example ``http://127.0.0.1:8443/api/v1/events``.
        event_token_file: absolute path of the file holding the bearer token for ``event_url``.
        site_data_dir: data folder of each site, relative to the site's kit root unless absolute.
        privacy_budget: each site's total ``epsilon`` and ``delta`` across DP jobs; None writes
            ``DEFAULT_PRIVACY_BUDGET``. A site's data owner may change it in the site's kit.
        site_policies: ``SitePolicy`` fields per site name; a site not listed gets the default policy.
    """

    def __init__(
        self,
        runtime_dir: str,
        event_url: str,
        event_token_file: str,
        site_data_dir: str = "data",
        privacy_budget: dict[str, float] | None = None,
        site_policies: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.event_url = event_url
        self.event_token_file = event_token_file
        self.site_data_dir = site_data_dir
        self.privacy_budget = dict(privacy_budget or DEFAULT_PRIVACY_BUDGET)
        self.site_policies = {name: SitePolicy.model_validate(p) for name, p in (site_policies or {}).items()}

    def build(self, project: Project, ctx: ProvisionContext) -> None:
        server = project.get_server()
        if server is not None:
            self._write_resources(ctx, server, self._harden_server)
        for site in project.get_clients():
            self._write_resources(ctx, site, self._harden_site)
            policy = self.site_policies.get(site.name, SitePolicy())
            budget = policy.privacy_budget.model_dump() if policy.privacy_budget else self.privacy_budget
            site_config = {"site": site.name, "data_dir": self.site_data_dir, "privacy_budget": budget}
            local_dir = Path(ctx.get_local_dir(site))
            write_policy_files(local_dir, policy)
            (local_dir / SITE_CONFIG_FILE).write_text(json.dumps(site_config, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def _write_resources(ctx: ProvisionContext, participant: Participant, harden: Any) -> None:
        local_dir = Path(ctx.get_local_dir(participant))
        default_file = local_dir / ProvFileName.RESOURCES_JSON_DEFAULT
        resources = json.loads(default_file.read_text(encoding="utf-8"))
        harden(resources, participant)
        target = local_dir / "resources.json"
        target.write_text(json.dumps(resources, indent=2) + "\n", encoding="utf-8")

    @staticmethod
    def _extend_allow_list(resources: dict[str, Any]) -> None:
        allow_list = list(resources.get("class_allow_list") or [])
        for entry in (OUR_PACKAGE_PREFIX, *FLARE_CLASSES_USED):
            if entry not in allow_list:
                allow_list.append(entry)
        resources["class_allow_list"] = allow_list
        resources["class_list_enforcement_mode"] = "enforce"

    def _harden_site(self, resources: dict[str, Any], site: Participant) -> None:
        self._extend_allow_list(resources)
        self._add_component(resources, SITE_POLICY_GUARD_ID, "app_custom.flare.site_policy_guard.SitePolicyGuard")

    @staticmethod
    def _add_component(resources: dict[str, Any], component_id: str, path: str, args: dict | None = None) -> None:
        components = [c for c in resources.get("components", []) if c.get("id") != component_id]
        components.append({"id": component_id, "path": path, "args": args or {}})
        resources["components"] = components

    def _harden_server(self, resources: dict[str, Any], server: Participant) -> None:
        self._extend_allow_list(resources)
        runtime = Path(self.runtime_dir)
        snapshot = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
        if snapshot is not None:
            snapshot["root_dir"] = str(runtime / "snapshot-storage")
        for component in resources.get("components", []):
            if component.get("id") == "job_manager":
                component.setdefault("args", {})["uri_root"] = str(runtime / "jobs-storage")
        resources["components"] = [c for c in resources.get("components", []) if c.get("id") != EVENT_FORWARDER_ID]
        resources["components"].append(
            {
                "id": EVENT_FORWARDER_ID,
                "path": "app_custom.flare.event_forwarder.EventForwarder",
                "args": {
                    "url": self.event_url,
                    "token_file": self.event_token_file,
                    "spool_dir": str(runtime / "event-spool"),
                },
            }
        )
        self._add_component(resources, REVOCATION_GUARD_ID, "app_custom.flare.revocation_guard.RevocationGuard")
        self._add_component(resources, SITE_POLICY_AUDIT_ID, "app_custom.flare.site_policy_guard.SitePolicyAudit")
        os.makedirs(runtime, exist_ok=True)
