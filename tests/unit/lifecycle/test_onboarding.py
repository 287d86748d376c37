"""Adding a site re-runs FLARE's provisioner without re-issuing any existing certificate."""

from __future__ import annotations

import json

import pytest
import yaml

from provisioning.onboarding import add_site, existing_fingerprints, kit_fingerprint, new_site_seed
from provisioning.provision import ProvisioningError
from provisioning.schema import ConsortiumFileError
from provisioning.workspace import Workspace


def test_add_site_keeps_existing_certificates(workspace):
    state = workspace.load()
    before = existing_fingerprints(workspace, state)
    old_kits = state.kits_dir

    site = add_site(workspace, "hospital-d", "hospital_d")

    state = workspace.load()
    assert existing_fingerprints(workspace, state) == {**before, "hospital-d": site.certificate_fingerprint}
    assert site.unchanged_participants == len(before)
    assert state.kits_dir == old_kits
    assert "hospital-d" in state.sites
    assert state.site_orgs["hospital-d"] == "hospital_d"
    assert workspace.kit_dir(state, "hospital-d") == site.kit_dir
    assert site.kit_dir.parent.name == "prod_01"
    assert workspace.kit_dir(state, "hospital-a").parent.name == "prod_00"
    assert site.data_summary is None


def test_add_site_writes_kit_and_policy(workspace):
    site = add_site(workspace, "hospital-d", "hospital_d")
    local = site.kit_dir / "local"
    assert (site.kit_dir / "startup" / "client.crt").is_file()
    policy = json.loads((local / "consortia_policy.json").read_text())
    assert policy["accepted_algorithms"] == ["*"]
    assert policy["allow_custom_code"] is False
    resources = json.loads((local / "resources.json").read_text())
    guards = [c["id"] for c in resources["components"] if c["path"].endswith("site_policy_guard.SitePolicyGuard")]
    assert guards == ["app_deployer"]
    consortium = yaml.safe_load((workspace.root / "consortium.yml").read_text())
    assert {"name": "hospital-d", "org": "hospital_d"} in consortium["sites"]


def test_add_site_same_ca(workspace):
    state = workspace.load()
    site = add_site(workspace, "hospital-d", "hospital_d")
    old_ca = (workspace.kit_dir(state, "hospital-a") / "startup" / "rootCA.pem").read_bytes()
    assert (site.kit_dir / "startup" / "rootCA.pem").read_bytes() == old_ca


def test_add_site_duplicate_name(workspace):
    with pytest.raises(ProvisioningError, match="participant 'hospital-a' already exists"):
        add_site(workspace, "hospital-a", "hospital_a")


def test_add_site_invalid_org(workspace):
    with pytest.raises(ConsortiumFileError, match="invalid site org 'hospital-d'"):
        add_site(workspace, "hospital-d", "hospital-d")
    assert "hospital-d" not in workspace.load().sites


def test_add_site_unprovisioned(tmp_path):
    from provisioning.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="run 'consortia provision' first"):
        add_site(Workspace(tmp_path / "none"), "hospital-d", "hospital_d")


def test_add_site_demo_data(tmp_path):
    from provisioning.provision import provision

    from .conftest import small_consortium

    workspace = provision(small_consortium(tmp_path, demo_data=True), tmp_path / "ws").workspace
    site = add_site(workspace, "hospital-d", "hospital_d")
    assert site.data_summary is not None
    assert site.data_summary["train_rows"] > 0
    assert (site.kit_dir / "data" / "train.csv").is_file()
    assert (site.kit_dir / "data" / "test.csv").is_file()


def test_new_site_seed_stable():
    assert new_site_seed(1, "hospital-d") == new_site_seed(1, "hospital-d")
    assert new_site_seed(1, "hospital-d") != new_site_seed(1, "hospital-e")
    assert new_site_seed(1, "hospital-d") != 1


def test_old_state_file_loads(workspace):
    data = json.loads(workspace.state_file.read_text())
    data.pop("kit_dirs")
    workspace.state_file.write_text(json.dumps(data))
    state = workspace.load()
    assert state.kit_dirs == {}
    assert kit_fingerprint(workspace.kit_dir(state, "hospital-a"))
