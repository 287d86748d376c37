"""Site-local job policy: which jobs a site accepts, enforced by the site itself when a job is deployed to it.

Hand-written because FLARE 2.9 lets a site restrict custom code (the ``byoc`` right in ``authorization.json``) and
classes (the class allow-list), but not which jobs it takes part in. The policy lives in the site's own kit,
``local/consortia_policy.json``, so the site's data owner can tighten it without asking the consortium.

``SitePolicyGuard`` is a site component (site ``local/resources.json``) with two hooks:

- It is the site's app deployer: FLARE 2.9's ``ClientEngine.deploy_app`` hands the job's app (the zip the site is
  about to run) to the component whose id is ``app_deployer``. The guard reads the app's ``config_fed_server.json``
  and ``config_fed_client.json``, classifies each server workflow as an algorithm kind (``classify_workflow``), and
  returns a rejection when a kind is not in ``accepted_algorithms``; otherwise it calls FLARE's own ``AppDeployer``.
  Checking the deployed app rather than the job's name means a renamed job cannot slip past the policy.
- At ``AUTHORIZE_COMMAND_CHECK`` for the deployment (command ``submit_job``, with the job's meta in
  ``SECURITY_ITEMS``, but not the app) it rejects early when the policy file is invalid, when the policy lists
  ``accepted_job_names`` and the job's name is not among them, or when the guard is not the site's ``app_deployer``
  (a kit built before the guard read workflows), because then the workflow check would not run.

Either rejection makes the site reply to the deployment with an error, so FLARE's server records ``<site>: <reason>``
in the job's ``job_deploy_detail`` and does not start the job at that site. When fewer sites than the job's
``min_clients`` accept, FLARE ends the job FINISHED:FAILED_TO_RUN; otherwise the job runs without the site.

``SitePolicyAudit`` is a server component that turns those rejections into ``contribution.rejected`` audit events
(reason code ``site_policy``, round 0), because the admin service does not read ``job_deploy_detail``.

Privacy: the guard fails closed. A missing or invalid policy file rejects every job with a reason that names the file.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Annotated, Any

from nvflare.apis.app_deployer_spec import AppDeployerSpec
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace
from nvflare.private.fed.utils.app_deployer import AppDeployer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app_custom.flare.algorithm_kinds import UNKNOWN_KIND, WorkflowKind, classify_app
from app_custom.flare.event_forwarder import spool_event
from app_custom.flare.events import make_envelope

POLICY_FILE = "local/consortia_policy.json"
REJECTION_PREFIX = "consortia site policy"
# FLARE 2.9's ClientEngine.deploy_app deploys every job through the site component with this id.
SITE_POLICY_GUARD_ID = SystemComponents.APP_DEPLOYER
SITE_POLICY_AUDIT_ID = "consortia_site_policy_audit"
# FLARE 2.9 sends a job deployment to a site as the admin command ``submit_job`` (``job_runner._make_deploy_message``).
DEPLOY_COMMAND = "submit_job"


class PrivacyFilter(BaseModel):
    """A FLARE filter the site applies to every task result it sends, written into ``local/privacy.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    args: dict[str, Any] = Field(default_factory=dict)


class PrivacyBudget(BaseModel):
    """Total ``epsilon`` and ``delta`` the site allows DP jobs to spend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: Annotated[float, Field(gt=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]


class SitePolicy(BaseModel):
    """A site's policy, in the consortium file (``sites[].policy``) and in the kit (``local/consortia_policy.json``).

    Attributes:
        accepted_algorithms: algorithm kinds (``ALGORITHM_KINDS``, or ``unknown`` for a workflow class the guard
            cannot classify) the site takes part in; shell-style patterns such as ``dp_*`` are allowed. They are
            matched against the deployed job's server workflows, not its name. The default ``["*"]`` accepts every
            kind, because the class allow-list already limits what code a job can run.
        accepted_job_names: job names (``meta.json`` ``name``, patterns allowed) the site accepts in addition to the
            algorithm check; None (default) does not check names, since anyone who submits a job chooses its name.
        allow_custom_code: whether jobs may ship custom code (BYOC). False writes ``byoc: none`` for every role in
            the site's ``local/authorization.json``.
        privacy_filters: filters applied to every task result the site sends (``local/privacy.json``).
        privacy_budget: the site's DP budget; None keeps the provisioning default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    accepted_algorithms: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["*"])
    accepted_job_names: Annotated[list[str], Field(min_length=1)] | None = None
    allow_custom_code: bool = False
    privacy_filters: list[PrivacyFilter] = Field(default_factory=list)
    privacy_budget: PrivacyBudget | None = None

    @model_validator(mode="before")
    @classmethod
    def _reject_job_name_field(cls, data: Any) -> Any:
        if isinstance(data, dict) and "accepted_jobs" in data:
            raise ValueError(
                "accepted_jobs is no longer read because it matched job names, which a renamed job slips past: list "
                "algorithm kinds in accepted_algorithms, and job names in accepted_job_names only if names matter"
            )
        return data

    def name_rejection(self, job_name: str) -> str | None:
        """Return why this policy rejects a job named ``job_name``, or None when names are not checked or it matches."""
        if self.accepted_job_names is None:
            return None
        if any(fnmatch.fnmatchcase(job_name, pattern) for pattern in self.accepted_job_names):
            return None
        return (
            f"{REJECTION_PREFIX}: job {job_name!r} is not in this site's accepted_job_names "
            f"{self.accepted_job_names}; the site's data owner can add it to {POLICY_FILE}"
        )

    def algorithm_rejection(self, job_name: str, workflows: list[WorkflowKind]) -> str | None:
        """Return why this policy rejects a job with these server ``workflows``, or None when it accepts all."""
        if not workflows:
            workflows = [WorkflowKind(path="no server workflow in the deployed app", kind=UNKNOWN_KIND)]
        rejected = [w for w in workflows if not any(fnmatch.fnmatchcase(w.kind, p) for p in self.accepted_algorithms)]
        if not rejected:
            return None
        found = ", ".join(f"{w.kind} ({w.path})" for w in rejected)
        return (
            f"{REJECTION_PREFIX}: job {job_name!r} runs {found}, which is not in this site's accepted_algorithms "
            f"{self.accepted_algorithms}; the site's data owner can add it to {POLICY_FILE}"
        )


def load_site_policy(site_root: str | Path) -> SitePolicy:
    """Read ``local/consortia_policy.json`` of a site kit.

    Raises:
        ValueError: when the file is missing or invalid, naming the file and the fix.
    """
    path = Path(site_root) / POLICY_FILE
    try:
        return SitePolicy.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"site policy {path} is missing: restore it from the kit") from None
    except ValidationError as exc:
        raise ValueError(f"site policy {path} is invalid: {exc.errors()[0]['msg']}; fix or restore it") from None


class SitePolicyGuard(FLComponent, AppDeployerSpec):
    """Site component that rejects the deployment of a job this site's policy does not accept.

    Register it with the id ``app_deployer`` (``SITE_POLICY_GUARD_ID``), so FLARE deploys every job through it.
    """

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.AUTHORIZE_COMMAND_CHECK:
            return
        if fl_ctx.get_prop(FLContextKey.COMMAND_NAME) != DEPLOY_COMMAND:
            return
        items = fl_ctx.get_prop(FLContextKey.SECURITY_ITEMS) or {}
        meta = items.get(FLContextKey.JOB_META) or {}
        job_name = str(meta.get("name") or "")
        engine = fl_ctx.get_engine()
        try:
            if engine.get_component(SITE_POLICY_GUARD_ID) is not self:
                raise ValueError(
                    f"the site policy guard is not the {SITE_POLICY_GUARD_ID!r} component of local/resources.json, "
                    "so it cannot check the job's workflows; rebuild the kit or install its resources.json"
                )
            reason = load_site_policy(_site_root(fl_ctx)).name_rejection(job_name)
        except Exception as exc:  # noqa: BLE001 - any failure to check the policy rejects the job (fails closed)
            reason = f"{REJECTION_PREFIX}: {exc}"
        if reason is None:
            return
        self.logger.warning("rejected job %s (%s): %s", meta.get("job_id"), job_name, reason)
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_RESULT, False, sticky=False)
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_REASON, reason, sticky=False)

    def deploy(
        self, workspace: Workspace, job_id: str, job_meta: dict, app_name: str, app_data: bytes, fl_ctx: FLContext
    ) -> str:
        """Check the app's workflows against the policy, then deploy it with FLARE's ``AppDeployer``.

        Returns:
            The rejection reason, FLARE's deployment error, or "" when the app is deployed.
        """
        job_name = str((job_meta or {}).get("name") or "")
        try:
            policy = load_site_policy(workspace.get_root_dir())
            reason = policy.name_rejection(job_name) or policy.algorithm_rejection(job_name, classify_app(app_data))
        except Exception as exc:  # noqa: BLE001 - any failure to check the policy rejects the job (fails closed)
            reason = f"{REJECTION_PREFIX}: {exc}"
        if reason is not None:
            self.logger.warning("rejected job %s (%s): %s", job_id, job_name, reason)
            return reason
        error = AppDeployer().deploy(
            workspace=workspace,
            job_id=job_id,
            job_meta=job_meta,
            app_name=app_name,
            app_data=app_data,
            fl_ctx=fl_ctx,
        )
        return error or ""


def _site_root(fl_ctx: FLContext) -> str:
    """Return the site's kit folder: FLARE 2.9's ``ClientEngine`` has no ``get_workspace`` but keeps its start args."""
    engine = fl_ctx.get_engine()
    root = getattr(getattr(engine, "args", None), "workspace", None)
    return str(root) if root else str(engine.get_workspace().get_root_dir())


def policy_rejections(deploy_detail: list[str]) -> dict[str, str]:
    """Return ``{site: reason}`` for the entries of FLARE's ``job_deploy_detail`` that our site guard wrote."""
    rejections = {}
    for entry in deploy_detail:
        site, _, reply = str(entry).partition(": ")
        if REJECTION_PREFIX in reply:
            rejections[site] = reply[reply.index(REJECTION_PREFIX) :]
    return rejections


class SitePolicyAudit(FLComponent):
    """Server component that audits every job deployment a site rejected by its policy."""

    def __init__(self) -> None:
        super().__init__()
        self._audited: set[str] = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type not in (EventType.JOB_DEPLOYED, EventType.JOB_ABORTED):
            return
        job_id = fl_ctx.get_prop(FLContextKey.JOB_RUN_NUMBER)
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        if isinstance(data, dict) and data.get("job_id"):
            job_id = data["job_id"]
        if not job_id or job_id in self._audited:
            return
        detail = self._deploy_detail(job_id, fl_ctx)
        rejections = policy_rejections(detail)
        if not rejections:
            return
        self._audited.add(job_id)
        server_root = fl_ctx.get_engine().get_workspace().get_root_dir()
        for site, reason in sorted(rejections.items()):
            payload = {"reason_code": "site_policy", "reason": reason[:4000], "stage": "deploy"}
            envelope = make_envelope("contribution.rejected", job_id=job_id, site=site, round_number=0, payload=payload)
            try:
                spool_event(server_root, envelope)
            except OSError as exc:
                self.logger.error("failed to spool the policy rejection of %s for job %s: %s", site, job_id, exc)

    @staticmethod
    def _deploy_detail(job_id: str, fl_ctx: FLContext) -> list[str]:
        detail = fl_ctx.get_prop(FLContextKey.JOB_DEPLOY_DETAIL)
        if isinstance(detail, list) and detail:
            return [str(entry) for entry in detail]
        job_manager = getattr(fl_ctx.get_engine(), "job_def_manager", None)
        job = job_manager.get_job(job_id, fl_ctx) if job_manager else None
        stored = (job.meta if job else {}).get("job_deploy_detail") or []
        return [str(entry) for entry in stored] if isinstance(stored, list) else [json.dumps(stored)]
