"""A freshly provisioned 2-site workspace per test (about 1 s each); no FLARE process is started."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from provisioning.provision import provision
from provisioning.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[3] / "provisioning" / "consortium.yml"


def small_consortium(folder: Path, *, demo_data: bool = False, policies: dict | None = None) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["project"] = "lifecycle_unit"
    data["sites"] = data["sites"][:2]
    for site in data["sites"]:
        if policies and site["name"] in policies:
            site["policy"] = policies[site["name"]]
    data["users"] = [u for u in data["users"] if u["org"] in ("consortium", "hospital_a", "hospital_b")]
    if not demo_data:
        data.pop("demo_data", None)
    path = folder / "consortium.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    policies = {
        "hospital-b": {"accepted_algorithms": ["fedavg", "fedprox"], "privacy_budget": {"epsilon": 3.0, "delta": 1e-5}}
    }
    return provision(small_consortium(tmp_path, policies=policies), tmp_path / "ws").workspace
