"""The site policy guard as FLARE's app deployer: algorithm kinds of real job apps, renamed jobs, and fail-closed paths.

Apps are zipped with FLARE's ``zip_directory_to_bytes``, as the server's job manager sends them to a site.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace as FlareWorkspace
from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes

from app_custom.flare.algorithm_kinds import UNKNOWN_KIND, classify_app, classify_workflow
from app_custom.flare.site_policy_guard import DEPLOY_COMMAND, REJECTION_PREFIX, SITE_POLICY_GUARD_ID, SitePolicyGuard
from consortia.jobs import job_path

EXPECTED_KINDS = {
    "fedavg_clinical": "fedavg",
    "fedprox_clinical": "fedprox",
    "fed_focal_clinical": "fed_focal",
    "catfedavg_clinical": "catfedavg",
    "dp_sgd_clinical": "dp_sgd",
    "dp_fedavg_clinical": "dp_fedavg",
    "he_fedavg_clinical": "he_fedavg",
    "dp_he_fedavg_clinical": "dp_he_fedavg",
}


def app_bytes(job: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        # Leave out signature files that a submission from this checkout may have written next to the configs.
        app = shutil.copytree(job_path(job) / "app", Path(folder) / "app", ignore=shutil.ignore_patterns(".__nvfl_*"))
        return zip_directory_to_bytes(str(app), "")


@pytest.mark.parametrize(("job", "kind"), sorted(EXPECTED_KINDS.items()))
def test_job_kind(job, kind):
    workflows = classify_app(app_bytes(job))
    assert [w.kind for w in workflows] == [kind]
    assert workflows[0].path.startswith("app_custom.flare.")


def test_other_workflow_class_unknown():
    workflow = {"path": "nvflare.app_common.workflows.fedavg.FedAvg", "args": {}}
    assert classify_workflow(workflow, {}) == UNKNOWN_KIND


def test_fedprox_mu_zero_is_fedavg():
    workflow = {"path": "app_custom.flare.controller.ConsortiaFedAvg", "args": {}}
    client = {"executors": [{"executor": {"args": {"script_args": "--fedprox-mu 0"}}}]}
    assert classify_workflow(workflow, client) == "fedavg"


def test_app_without_server_config(tmp_path):
    shutil.copytree(job_path("fedavg_clinical") / "app", tmp_path / "app", ignore=shutil.ignore_patterns(".__nvfl_*"))
    (tmp_path / "app" / "config" / "config_fed_server.json").unlink()
    assert classify_app(zip_directory_to_bytes(str(tmp_path / "app"), "")) == []


def test_invalid_server_config(tmp_path):
    shutil.copytree(job_path("fedavg_clinical") / "app", tmp_path / "app", ignore=shutil.ignore_patterns(".__nvfl_*"))
    (tmp_path / "app" / "config" / "config_fed_server.json").write_text("{not json")
    with pytest.raises(ValueError, match="config_fed_server.json of the deployed app is not valid JSON"):
        classify_app(zip_directory_to_bytes(str(tmp_path / "app"), ""))


@pytest.fixture
def site(workspace):
    """hospital-b's kit (its policy accepts fedavg and fedprox) as FLARE's site workspace."""
    state = workspace.load()
    root = workspace.kit_dir(state, "hospital-b")
    return FlareWorkspace(root_dir=str(root), site_name="hospital-b")


def deploy(site: FlareWorkspace, job: str, *, name: str, app_data: bytes | None = None) -> str:
    meta = {"name": name, "job_id": "job-1"}
    data = app_bytes(job) if app_data is None else app_data
    return SitePolicyGuard().deploy(site, "job-1", meta, "app", data, FLContext())


def test_accepted_job_deployed(site):
    assert deploy(site, "fedprox_clinical", name="fedprox_clinical") == ""
    config = Path(site.get_app_dir("job-1")) / "config" / "config_fed_server.json"
    assert json.loads(config.read_text())["workflows"][0]["path"] == "app_custom.flare.controller.ConsortiaFedAvg"


def test_renamed_job_rejected(site):
    reason = deploy(site, "dp_sgd_clinical", name="fedavg_clinical")
    assert reason.startswith(REJECTION_PREFIX)
    assert "job 'fedavg_clinical' runs dp_sgd (app_custom.flare.privacy.PrivateFedAvg)" in reason
    assert "accepted_algorithms ['fedavg', 'fedprox']" in reason
    assert not Path(site.get_run_dir("job-1")).exists()


def test_unreadable_app_rejected(site):
    reason = deploy(site, "fedavg_clinical", name="fedavg_clinical", app_data=b"not a zip")
    assert "the deployed app is not a readable zip" in reason


def test_missing_policy_rejects_deploy(site):
    (Path(site.get_root_dir()) / "local" / "consortia_policy.json").unlink()
    reason = deploy(site, "fedavg_clinical", name="fedavg_clinical")
    assert "consortia_policy.json is missing" in reason


def test_job_name_checked_when_listed(site):
    policy_file = Path(site.get_root_dir()) / "local" / "consortia_policy.json"
    policy = json.loads(policy_file.read_text())
    policy["accepted_job_names"] = ["study_*"]
    policy_file.write_text(json.dumps(policy))
    reason = deploy(site, "fedavg_clinical", name="fedavg_clinical")
    assert "job 'fedavg_clinical' is not in this site's accepted_job_names ['study_*']" in reason
    assert deploy(site, "fedavg_clinical", name="study_1") == ""


def authorize(guard: SitePolicyGuard, site: FlareWorkspace, components: dict) -> FLContext:
    engine = SimpleNamespace(args=SimpleNamespace(workspace=site.get_root_dir()), get_component=components.get)
    fl_ctx = FLContext()
    fl_ctx.put(key=ReservedKey.ENGINE, value=engine, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.COMMAND_NAME, DEPLOY_COMMAND, sticky=False)
    items = {FLContextKey.JOB_META: {"name": "fedavg_clinical", "job_id": "job-1"}}
    fl_ctx.set_prop(FLContextKey.SECURITY_ITEMS, items, sticky=False)
    guard.handle_event(EventType.AUTHORIZE_COMMAND_CHECK, fl_ctx)
    return fl_ctx


def test_authorize_passes_registered_guard(site):
    guard = SitePolicyGuard()
    fl_ctx = authorize(guard, site, {SITE_POLICY_GUARD_ID: guard})
    assert fl_ctx.get_prop(FLContextKey.AUTHORIZATION_RESULT) is None


def test_authorize_rejects_unregistered_guard(site):
    guard = SitePolicyGuard()
    fl_ctx = authorize(guard, site, {"consortia_site_policy_guard": guard})
    assert fl_ctx.get_prop(FLContextKey.AUTHORIZATION_RESULT) is False
    reason = fl_ctx.get_prop(FLContextKey.AUTHORIZATION_REASON)
    assert "is not the 'app_deployer' component of local/resources.json" in reason
