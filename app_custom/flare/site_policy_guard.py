"""Site-local job policy: which jobs a site accepts, enforced by the site itself when a job is deployed to it.

Hand-written because FLARE 2.9 lets a site restrict custom code (the ``byoc`` right in ``authorization.json``) and
classes (the class allow-list), but not which jobs it takes part in. The policy lives in the site's own kit,
``local/consortia_policy.json``, so the site's data owner can tighten it without asking the consortium.

``SitePolicyGuard`` is a site component (site ``local/resources.json``). FLARE's site admin agent fires
``AUTHORIZE_COMMAND_CHECK`` for every command from the server, including the job deployment (command
``submit_job``, with the job's meta in ``SECURITY_ITEMS``). Setting ``AUTHORIZATION_RESULT`` to False there makes the
site answer the deployment with an error that carries ``AUTHORIZATION_REASON``, so FLARE's server records
``<site>: <reason>`` in the job's ``job_deploy_detail``. When fewer sites than the job's ``min_clients`` accept, FLARE
ends the job FINISHED:FAILED_TO_RUN.

``SitePolicyAudit`` is a server component that turns those rejections into ``contribution.rejected`` audit events
(reason code ``site_policy``, round 0), because the admin service does not read ``job_deploy_detail``.

Privacy: the guard fails closed. A missing or invalid policy file rejects every job with a reason that names the file.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Annotated, Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app_custom.flare.event_forwarder import spool_event
from app_custom.flare.events import make_envelope

POLICY_FILE = "local/consortia_policy.json"
REJECTION_PREFIX = "consortia site policy"
SITE_POLICY_GUARD_ID = "consortia_site_policy_guard"
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
        accepted_jobs: job names (``meta.json`` ``name``) the site accepts; shell-style patterns such as
            ``fedavg_*`` are allowed. The default ``["*"]`` accepts every job name, because the class allow-list
            already limits what code a job can run.
        allow_custom_code: whether jobs may ship custom code (BYOC). False writes ``byoc: none`` for every role in
            the site's ``local/authorization.json``.
        privacy_filters: filters applied to every task result the site sends (``local/privacy.json``).
        privacy_budget: the site's DP budget; None keeps the provisioning default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    accepted_jobs: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["*"])
    allow_custom_code: bool = False
    privacy_filters: list[PrivacyFilter] = Field(default_factory=list)
    privacy_budget: PrivacyBudget | None = None

    def rejection_reason(self, job_name: str) -> str | None:
        """Return why this policy rejects a job named ``job_name``, or None when it accepts it."""
        if any(fnmatch.fnmatchcase(job_name, pattern) for pattern in self.accepted_jobs):
            return None
        return (
            f"{REJECTION_PREFIX}: job {job_name!r} is not in this site's accepted_jobs {self.accepted_jobs}; "
            f"the site's data owner can add it to {POLICY_FILE}"
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


class SitePolicyGuard(FLComponent):
    """Site component that rejects the deployment of a job this site's policy does not accept."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.AUTHORIZE_COMMAND_CHECK:
            return
        if fl_ctx.get_prop(FLContextKey.COMMAND_NAME) != DEPLOY_COMMAND:
            return
        items = fl_ctx.get_prop(FLContextKey.SECURITY_ITEMS) or {}
        meta = items.get(FLContextKey.JOB_META) or {}
        job_name = str(meta.get("name") or "")
        job_id = meta.get("job_id")
        try:
            reason = load_site_policy(_site_root(fl_ctx)).rejection_reason(job_name)
        except Exception as exc:  # noqa: BLE001 - any failure to check the policy rejects the job (fails closed)
            reason = f"{REJECTION_PREFIX}: {exc}"
        if reason is None:
            return
        self.logger.warning("rejected job %s (%s): %s", job_id, job_name, reason)
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_RESULT, False, sticky=False)
        fl_ctx.set_prop(FLContextKey.AUTHORIZATION_REASON, reason, sticky=False)


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
