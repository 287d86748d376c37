"""``check_site`` against a real FLARE 2.9 server on 127.0.0.1, and proof that it does not disturb a running site.

Two workspaces are provisioned from one consortium file with fixed ports, so each has its own root CA and both sets
of kits point at the same address. Only the first workspace's server (and later one of its sites) runs.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from consortia import federation
from provisioning.provision import ProvisionResult, free_port, provision
from provisioning.site_check import CheckStatus, check_site

from .conftest import two_site_consortium

pytestmark = pytest.mark.integration


@dataclass
class TwoConsortia:
    ours: ProvisionResult
    other: ProvisionResult
    scratch: Path

    def kit(self, result: ProvisionResult, name: str) -> Path:
        return result.workspace.kit_dir(result.state, name)


def fixed_port_consortium(folder: Path) -> Path:
    path = two_site_consortium(folder)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    fed_learn_port = free_port()
    data["server"]["fed_learn_port"] = fed_learn_port
    data["server"]["admin_port"] = free_port(exclude={fed_learn_port})
    data.pop("demo_data", None)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def consortia(tmp_path_factory) -> Iterator[TwoConsortia]:
    folder = tmp_path_factory.mktemp("site_check")
    consortium_file = fixed_port_consortium(folder)
    ours = provision(consortium_file, folder / "ours")
    other = provision(consortium_file, folder / "other")
    server = federation.start_flare_participant(ours.workspace, ours.state, ours.state.server_name)
    try:
        federation.wait_server_ready(ours.state, server)
        yield TwoConsortia(ours, other, folder)
    finally:
        federation.stop_process(server)


def test_genuine_kit_ok(consortia):
    result = check_site(consortia.kit(consortia.ours, "hospital-a"))
    assert result.status == CheckStatus.OK, result.message
    assert result.warnings == []


def test_other_consortium_kit(consortia):
    result = check_site(consortia.kit(consortia.other, "hospital-a"))
    assert result.status == CheckStatus.FOREIGN_SERVER
    assert "server certificate not from this kit's CA (this kit belongs to another consortium)" in result.message
    assert result.elapsed_s < 5


def test_foreign_client_cert(consortia):
    kit = consortia.scratch / "mixed-hospital-a"
    if not kit.exists():
        shutil.copytree(consortia.kit(consortia.ours, "hospital-a"), kit)
        for name in ("client.crt", "client.key"):
            shutil.copy(consortia.kit(consortia.other, "hospital-a") / "startup" / name, kit / "startup" / name)
    result = check_site(kit)
    assert result.status == CheckStatus.CERT_REJECTED
    assert "this site's certificate is rejected by the server" in result.message
    assert "was not issued by this kit's rootCA.pem" in result.message
    assert result.elapsed_s < 5


def test_unreachable_server(consortia):
    kit = consortia.scratch / "moved-hospital-a"
    shutil.copytree(consortia.kit(consortia.ours, "hospital-a"), kit)
    config = kit / "startup" / "fed_client.json"
    port = free_port(exclude={consortia.ours.state.fed_learn_port, consortia.ours.state.admin_port})
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(f":{consortia.ours.state.fed_learn_port}", f":{port}"), encoding="utf-8")
    result = check_site(kit)
    assert result.status == CheckStatus.UNREACHABLE
    assert "server unreachable" in result.message
    assert result.elapsed_s < 5


def registered(consortia: TwoConsortia) -> list[str]:
    ours = consortia.ours
    with federation.flare_session(ours.workspace, ours.state, ours.state.service_identity, timeout=20) as session:
        return federation.registered_sites(session)


def wait_registered(consortia: TwoConsortia, site: str, timeout: float = 60.0) -> list[str]:
    deadline = time.monotonic() + timeout
    sites: list[str] = []
    while time.monotonic() < deadline:
        sites = registered(consortia)
        if site in sites:
            return sites
        time.sleep(1.0)
    return sites


def test_running_site_not_evicted(consortia):
    ours = consortia.ours
    site = federation.start_flare_participant(ours.workspace, ours.state, "hospital-a")
    try:
        assert "hospital-a" in wait_registered(consortia, "hospital-a"), federation.log_tail(site.log_file)
        result = check_site(consortia.kit(ours, "hospital-a"))
        assert result.status == CheckStatus.OK, result.message
        time.sleep(10)
        assert site.is_alive()
        assert "hospital-a" in registered(consortia)
        log = Path(site.log_file).read_text(encoding="utf-8", errors="replace")
        assert "already registered with another token" not in log
    finally:
        federation.stop_process(site)
