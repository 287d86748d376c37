import json
import socket
from pathlib import Path

import pytest
import yaml

from provisioning.provision import ProvisioningError, provision
from provisioning.schema import load_consortium

EXAMPLE = Path(__file__).resolve().parents[3] / "provisioning" / "consortium.yml"


def small_consortium(tmp_path: Path, **server) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["sites"] = data["sites"][:2]
    data["users"] = [u for u in data["users"] if u["org"] in ("consortium", "hospital_a", "hospital_b")]
    data["server"].update(server)
    path = tmp_path / "consortium.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("prov")
    return provision(small_consortium(tmp_path), tmp_path / "ws")


def test_kits_for_every_participant(provisioned):
    kits = Path(provisioned.state.kits_dir)
    for name in ("localhost", "hospital-a", "hospital-b", "service@consortium.org", "lead@hospital-a.org"):
        assert (kits / name / "startup" / "rootCA.pem").is_file(), name
    assert not (kits / "compliance@consortium.org").exists()


def test_server_state_stays_in_workspace(provisioned):
    kits = Path(provisioned.state.kits_dir)
    resources = json.loads((kits / "localhost" / "local" / "resources.json").read_text())
    job_manager = next(c for c in resources["components"] if c["id"] == "job_manager")
    assert job_manager["args"]["uri_root"].startswith(str(provisioned.workspace.root))
    assert "/tmp/nvflare" not in json.dumps(resources)


def test_event_forwarder_wired_into_server(provisioned):
    kits = Path(provisioned.state.kits_dir)
    resources = json.loads((kits / "localhost" / "local" / "resources.json").read_text())
    forwarder = next(c for c in resources["components"] if c["id"] == "consortia_event_forwarder")
    assert forwarder["args"]["url"] == f"http://127.0.0.1:{provisioned.state.api_port}/api/v1/events"


def test_sites_allow_our_package(provisioned):
    kits = Path(provisioned.state.kits_dir)
    resources = json.loads((kits / "hospital-a" / "local" / "resources.json").read_text())
    assert "app_custom." in resources["class_allow_list"]
    assert resources["class_list_enforcement_mode"] == "enforce"


def test_server_bound_to_loopback(provisioned):
    kits = Path(provisioned.state.kits_dir)
    fed_server = json.loads((kits / "localhost" / "startup" / "fed_server.json").read_text())
    target = fed_server["servers"][0]["service"]["target"]
    assert target.split(":")[0] == "localhost"


def test_site_data_partitions_disjoint(provisioned):
    import pandas as pd

    kits = Path(provisioned.state.kits_dir)
    frames = [pd.read_csv(kits / site / "data" / "train.csv") for site in provisioned.state.sites]
    assert all(len(frame) >= 100 for frame in frames)
    assert "chapter" not in frames[0].columns
    keys = [set(map(tuple, frame.to_numpy().tolist())) for frame in frames]
    assert len(keys[0] & keys[1]) < 5  # identical rows only by chance, never shared partitions


def test_secrets_private(provisioned):
    token_file = provisioned.workspace.event_token_file
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert len(token_file.read_text().strip()) >= 32


def test_existing_workspace_needs_force(provisioned, tmp_path):
    with pytest.raises(ProvisioningError, match="--force"):
        provision(EXAMPLE, provisioned.workspace.root)


def test_port_in_use_is_named(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ProvisioningError) as excinfo:
            provision(small_consortium(tmp_path, fed_learn_port=port), tmp_path / "ws")
    assert f"port {port}" in str(excinfo.value)
    assert "auto" in str(excinfo.value)


def test_example_consortium_loads():
    assert load_consortium(EXAMPLE).project == "consortia_demo"


def test_failed_force_keeps_workspace(tmp_path):
    first = provision(small_consortium(tmp_path), tmp_path / "ws")
    ca_state = sorted((first.workspace.provision_dir).rglob("cert.json"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ProvisioningError, match=f"port {port}"):
            provision(small_consortium(tmp_path, fed_learn_port=port), tmp_path / "ws", force=True)
    assert first.workspace.state_file.is_file()
    assert sorted(first.workspace.provision_dir.rglob("cert.json")) == ca_state


def test_force_keeps_previous_copy(tmp_path):
    first = provision(small_consortium(tmp_path), tmp_path / "ws")
    marker = first.workspace.reports_dir / "job-1.json"
    marker.write_text("{}")
    provision(small_consortium(tmp_path), tmp_path / "ws", force=True)
    assert (tmp_path / "ws.previous" / "reports" / "job-1.json").is_file()
    assert not marker.exists()
