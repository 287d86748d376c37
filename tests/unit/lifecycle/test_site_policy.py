"""Site policy model, the files provisioning writes from it, and the deploy-detail parser of the audit component."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app_custom.flare.algorithm_kinds import WorkflowKind
from app_custom.flare.site_policy_guard import SitePolicy, load_site_policy, policy_rejections
from provisioning.site_policy import authorization_with_byoc, privacy_config


def test_default_policy_accepts_any_job():
    policy = SitePolicy()
    assert policy.name_rejection("fedavg_clinical") is None
    assert policy.algorithm_rejection("x", [WorkflowKind(path="some.Workflow", kind="unknown")]) is None
    assert policy.allow_custom_code is False


def test_policy_rejects_unlisted_job_name():
    policy = SitePolicy(accepted_job_names=["fedavg_*", "catfedavg_clinical"])
    assert policy.name_rejection("fedavg_clinical") is None
    reason = policy.name_rejection("unapproved_study")
    assert reason is not None
    assert "job 'unapproved_study' is not in this site's accepted_job_names" in reason
    assert "consortia_policy.json" in reason


def test_policy_rejects_unlisted_algorithm():
    policy = SitePolicy(accepted_algorithms=["fedavg", "dp_*"])
    assert policy.algorithm_rejection("a", [WorkflowKind(path="p", kind="dp_sgd")]) is None
    reason = policy.algorithm_rejection("fedavg_study", [WorkflowKind(path="p.ConsortiaFedAvg", kind="catfedavg")])
    assert reason is not None
    assert "job 'fedavg_study' runs catfedavg (p.ConsortiaFedAvg)" in reason
    assert "accepted_algorithms ['fedavg', 'dp_*']" in reason


def test_policy_rejects_app_without_workflow():
    reason = SitePolicy(accepted_algorithms=["fedavg"]).algorithm_rejection("a", [])
    assert reason is not None
    assert "unknown (no server workflow in the deployed app)" in reason


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"accepted_algorithms": []}, "at least 1 item"),
        ({"accepted_job_names": []}, "at least 1 item"),
        ({"accepted_jobs": ["fedavg_*"]}, "accepted_jobs is no longer read because it matched job names"),
        ({"privacy_budget": {"epsilon": 0, "delta": 1e-5}}, "greater than 0"),
        ({"privacy_budget": {"epsilon": 1, "delta": 1}}, "less than 1"),
        ({"byoc": True}, "Extra inputs are not permitted"),
    ],
)
def test_policy_bad_input(fields, message):
    with pytest.raises(ValidationError, match=message):
        SitePolicy.model_validate(fields)


def test_kit_policy_files(workspace):
    state = workspace.load()
    local = workspace.kit_dir(state, "hospital-b") / "local"
    policy = load_site_policy(local.parent)
    assert policy.accepted_algorithms == ["fedavg", "fedprox"]
    assert policy.accepted_job_names is None
    site_config = json.loads((local / "consortia_site.json").read_text())
    assert site_config["privacy_budget"] == {"epsilon": 3.0, "delta": 1e-5}
    authorization = json.loads((local / "authorization.json").read_text())
    assert {role: rights["byoc"] for role, rights in authorization["permissions"].items()} == {
        "project_admin": "none",
        "org_admin": "none",
        "lead": "none",
        "member": "none",
    }
    assert not (local / "privacy.json").exists()


def test_missing_policy_file(tmp_path):
    with pytest.raises(ValueError, match="consortia_policy.json is missing: restore it from the kit"):
        load_site_policy(tmp_path)


def test_invalid_policy_file(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "consortia_policy.json").write_text('{"accepted_algorithms": []}')
    with pytest.raises(ValueError, match="consortia_policy.json is invalid"):
        load_site_policy(tmp_path)


def test_byoc_allowed_keeps_defaults():
    default = {"permissions": {"project_admin": "any", "lead": {"submit_job": "any", "byoc": "any"}}}
    assert authorization_with_byoc(default, allow_custom_code=True) == default


def test_byoc_off_expands_string_roles():
    default = {"permissions": {"project_admin": "any", "lead": {"submit_job": "any", "byoc": "any"}}}
    result = authorization_with_byoc(default, allow_custom_code=False)
    assert result["permissions"]["project_admin"] == {"submit_job": "any", "byoc": "none"}
    assert result["permissions"]["lead"] == {"submit_job": "any", "byoc": "none"}
    assert default["permissions"]["project_admin"] == "any"


def test_privacy_config_from_filters():
    policy = SitePolicy(
        privacy_filters=[{"path": "nvflare.app_common.filters.ExcludeVars", "args": {"exclude_vars": ["x"]}}]
    )
    config = privacy_config(policy)
    assert config == {
        "scopes": [
            {
                "name": "consortia",
                "task_result_filters": [
                    {"path": "nvflare.app_common.filters.ExcludeVars", "args": {"exclude_vars": ["x"]}}
                ],
            }
        ],
        "default_scope": "consortia",
    }
    assert privacy_config(SitePolicy()) is None


def test_policy_rejections_parsed():
    detail = [
        "server: OK",
        "hospital-a: OK",
        "hospital-b: consortia site policy: job 'x' is not in this site's accepted_jobs ['fedavg_*']",
        "hospital-c: NVFLARE_ERROR: BYOC not permitted",
    ]
    assert policy_rejections(detail) == {
        "hospital-b": "consortia site policy: job 'x' is not in this site's accepted_jobs ['fedavg_*']"
    }
