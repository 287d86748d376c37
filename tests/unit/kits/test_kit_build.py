import hashlib
import http.server
import json
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from app_custom.flare.event_forwarder import EventSpool
from provisioning.kit_issuance import cert_state_file, read_root_ca, record_issuance
from provisioning.kits import MANIFEST_NAME, SIGNATURE_NAME, KitBuildError, build_kits

from .conftest import read_zip

PARTICIPANTS = {
    "localhost",
    "hospital-a",
    "hospital-b",
    "service@consortium.org",
    "admin@consortium.org",
    "lead@hospital-a.org",
    "it@hospital-a.org",
    "it@hospital-b.org",
}


def test_build_one_zip_per_participant(provisioned):
    assert {path.stem for path in provisioned.kits.glob("*.zip")} == PARTICIPANTS


def test_zip_never_holds_root_key(provisioned):
    _, _, markers = read_root_ca(provisioned.workspace, provisioned.state)
    state_file = json.loads(cert_state_file(provisioned.workspace, provisioned.state).read_text())
    root_key_pem = state_file["root_pri_key"].encode()
    for path in provisioned.kits.glob("*.zip"):
        for name, content in read_zip(path).items():
            assert not name.endswith("cert.json"), name
            assert root_key_pem not in content, name
            assert b"root_pri_key" not in content, name
            assert not any(marker in content for marker in markers), name


def test_zip_holds_kit_but_not_data(provisioned):
    names = set(read_zip(provisioned.zip("hospital-a")))
    assert "hospital-a/startup/client.crt" in names
    assert "hospital-a/startup/fed_client.json" in names
    assert "hospital-a/local/consortia_site.json" in names
    assert "hospital-a/local/resources.json" in names
    assert not any("/data/" in name for name in names)


def test_manifest_hashes_every_file(provisioned):
    entries = read_zip(provisioned.zip("hospital-a"))
    manifest = json.loads(entries[f"hospital-a/{MANIFEST_NAME}"])
    listed = {f"hospital-a/{name}" for name in manifest["files"]}
    assert listed == set(entries) - {f"hospital-a/{MANIFEST_NAME}", f"hospital-a/{SIGNATURE_NAME}"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(entries[f"hospital-a/{name}"]).hexdigest() == digest, name


def test_manifest_records_identity(provisioned):
    manifest = json.loads(read_zip(provisioned.zip("hospital-a"))[f"hospital-a/{MANIFEST_NAME}"])
    assert manifest["participant"] == "hospital-a"
    assert manifest["role"] == "site"
    assert manifest["project"] == "kits_unit"
    assert manifest["issued_by"] == "tester"
    assert manifest["signature_algorithm"] == "RSASSA-PSS-SHA256"
    assert manifest["certificate"]["subject_cn"] == "hospital-a"
    assert len(manifest["certificate"]["sha256_fingerprint"].split(":")) == 32


def test_server_kit_has_server_cert(provisioned):
    manifest = json.loads(read_zip(provisioned.zip("localhost"))[f"localhost/{MANIFEST_NAME}"])
    assert manifest["role"] == "server"
    assert manifest["certificate"]["file"] == "startup/server.crt"


def test_site_readme_names_ports(provisioned):
    readme = read_zip(provisioned.zip("hospital-a"))["hospital-a/README-HOSPITAL-IT.md"].decode()
    assert str(provisioned.state.fed_learn_port) in readme
    assert str(provisioned.state.admin_port) in readme
    assert "`data`" in readme
    assert "consortia site check --kit hospital-a" in readme
    assert "README-HOSPITAL-IT.md" not in {Path(n).name for n in read_zip(provisioned.zip("localhost"))}


def test_key_keeps_private_mode(provisioned):
    import zipfile

    with zipfile.ZipFile(provisioned.zip("hospital-a")) as archive:
        key_mode = archive.getinfo("hospital-a/startup/client.key").external_attr >> 16
        script_mode = archive.getinfo("hospital-a/startup/start.sh").external_attr >> 16
    assert key_mode & 0o777 == 0o600
    assert script_mode & 0o100


def test_issuance_spooled_when_service_down(provisioned):
    spool = EventSpool(provisioned.workspace.runtime_dir / "server" / "event-spool")
    events = [json.loads(path.read_text()) for path in spool.pending()]
    issued = {event["payload"]["participant"]: event for event in events if event["type"] == "kit.issued"}
    assert set(issued) >= PARTICIPANTS
    site_event = issued["hospital-a"]
    assert site_event["site"] == "hospital-a"
    assert site_event["actor"] == "tester"
    assert site_event["schema_version"] == 1
    assert site_event["job_id"] is None
    assert set(site_event["payload"]) == {"participant", "role", "certificate_fingerprint", "expires_at"}
    assert issued["localhost"]["site"] is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    status: ClassVar[int] = 201
    requests: ClassVar[list] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, self.headers["Authorization"], json.loads(body)))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def admin_service():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Recorder.requests = []
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _manifest(provisioned) -> dict:
    return json.loads(read_zip(provisioned.zip("hospital-b"))[f"hospital-b/{MANIFEST_NAME}"])


def test_issuance_posted_with_token(provisioned, admin_service):
    _Recorder.status = 201
    state = replace(provisioned.state, api_port=admin_service.server_address[1])
    outcome, spool_file = record_issuance(provisioned.workspace, state, _manifest(provisioned), actor="tester")
    assert outcome == "delivered"
    assert spool_file is None
    path, authorization, event = _Recorder.requests[0]
    token = provisioned.workspace.read_secret(provisioned.workspace.event_token_file)
    assert path == "/api/v1/events"
    assert authorization == f"Bearer {token}"
    assert event["type"] == "kit.issued"
    assert event["payload"]["participant"] == "hospital-b"


def test_issuance_spooled_on_422(provisioned, admin_service):
    _Recorder.status = 422
    state = replace(provisioned.state, api_port=admin_service.server_address[1])
    outcome, spool_file = record_issuance(provisioned.workspace, state, _manifest(provisioned), actor="tester")
    assert outcome == "spooled: admin service answered HTTP 422"
    assert json.loads(spool_file.read_text())["type"] == "kit.issued"
    spool_file.unlink()


def test_build_unknown_participant(provisioned, tmp_path):
    with pytest.raises(KitBuildError, match=r"no FLARE kit for \['nobody'\]"):
        build_kits(provisioned.workspace, tmp_path, participants=["nobody"], actor="tester")


def test_build_rejects_root_key_in_kit(provisioned, tmp_path):
    leak = provisioned.kit_dir("hospital-b") / "local" / "backup.json"
    leak.write_text(cert_state_file(provisioned.workspace, provisioned.state).read_text())
    try:
        with pytest.raises(KitBuildError, match="local/backup.json contains root CA key material"):
            build_kits(provisioned.workspace, tmp_path, participants=["hospital-b"], actor="tester")
    finally:
        leak.unlink()
    assert not (tmp_path / "hospital-b.zip").exists()


def test_build_rejects_symlink(provisioned, tmp_path):
    link = provisioned.kit_dir("hospital-b") / "local" / "link.json"
    os.symlink("/etc/hostname", link)
    try:
        with pytest.raises(KitBuildError, match="local/link.json is a symbolic link"):
            build_kits(provisioned.workspace, tmp_path, participants=["hospital-b"], actor="tester")
    finally:
        link.unlink()


def test_build_without_ca_state(provisioned, tmp_path):
    from provisioning.workspace import Workspace

    elsewhere = Workspace(tmp_path / "ws")
    elsewhere.root.mkdir()
    elsewhere.state_file.write_text(provisioned.workspace.state_file.read_text())
    with pytest.raises(KitBuildError, match="root CA state not found"):
        build_kits(elsewhere, tmp_path / "out", actor="tester")
