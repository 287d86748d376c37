import json
import shutil

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.kits import fingerprint
from provisioning.site_check import CheckStatus, SiteKitError, check_site, load_site_kit

from .conftest import copy_kit, make_ca, pem, point_kit_at, tcp_server, tls_handler


@pytest.fixture
def site_kit(provisioned, tmp_path):
    return copy_kit(provisioned.kit_dir("hospital-a"), tmp_path / "hospital-a")


def server_files(provisioned, name: str = "localhost") -> tuple:
    startup = provisioned.kit_dir(name) / "startup"
    cert = startup / ("server.crt" if name == "localhost" else "client.crt")
    key = startup / ("server.key" if name == "localhost" else "client.key")
    return cert, key, startup / "rootCA.pem"


def test_load_site_kit(provisioned):
    kit = load_site_kit(provisioned.kit_dir("hospital-a"))
    assert kit.participant == "hospital-a"
    assert kit.port == provisioned.state.fed_learn_port
    assert kit.server_identity == "localhost"
    assert kit.connection_security == "mtls"


def test_load_admin_kit(provisioned):
    kit = load_site_kit(provisioned.kit_dir("lead@hospital-a.org"))
    assert kit.participant == "lead@hospital-a.org"
    assert kit.port == provisioned.state.admin_port


def test_server_kit_rejected(provisioned):
    with pytest.raises(SiteKitError, match="is the server's kit"):
        load_site_kit(provisioned.kit_dir("localhost"))


def test_missing_kit(tmp_path):
    result = check_site(tmp_path)
    assert result.status == CheckStatus.KIT_INVALID
    assert "no startup/fed_client.json" in result.message


def test_missing_key_file(site_kit):
    (site_kit / "startup" / "client.key").unlink()
    result = check_site(site_kit)
    assert result.status == CheckStatus.KIT_INVALID
    assert "client.key is missing" in result.message


def test_key_not_matching_cert(provisioned, site_kit, closed_port):
    shutil.copy(provisioned.kit_dir("hospital-b") / "startup" / "client.key", site_kit / "startup" / "client.key")
    point_kit_at(site_kit, closed_port)
    result = check_site(site_kit)
    assert result.status == CheckStatus.KIT_INVALID
    assert "cannot load client.crt/client.key" in result.message


def test_unreachable_port(site_kit, closed_port):
    point_kit_at(site_kit, closed_port)
    result = check_site(site_kit)
    assert result.status == CheckStatus.UNREACHABLE
    assert result.status.value == 10
    assert f"server unreachable: connection to 127.0.0.1:{closed_port} refused" in result.message
    assert result.elapsed_s < 3


def test_plain_tcp_is_not_tls(site_kit):
    def answer_http(conn) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    with tcp_server(answer_http) as port:
        point_kit_at(site_kit, port)
        result = check_site(site_kit)
    assert result.status == CheckStatus.NOT_TLS
    assert "does not speak TLS" in result.message


def test_genuine_server_ok(provisioned, site_kit):
    with tcp_server(tls_handler(*server_files(provisioned))) as port:
        point_kit_at(site_kit, port)
        result = check_site(site_kit, read_timeout=0.5)
    assert result.status == CheckStatus.OK
    assert result.message.startswith("OK:")


def test_foreign_server(provisioned, site_kit):
    other_cert, other_key = make_ca("other_consortium")
    folder = site_kit.parent / "other"
    folder.mkdir()
    (folder / "ca.pem").write_bytes(pem(other_cert))
    (folder / "key.pem").write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with tcp_server(tls_handler(folder / "ca.pem", folder / "key.pem", folder / "ca.pem")) as port:
        point_kit_at(site_kit, port)
        result = check_site(site_kit)
    assert result.status == CheckStatus.FOREIGN_SERVER
    assert "this kit belongs to another consortium" in result.message


def test_other_participant_as_server(provisioned, site_kit):
    with tcp_server(tls_handler(*server_files(provisioned, "hospital-b"))) as port:
        point_kit_at(site_kit, port)
        result = check_site(site_kit)
    assert result.status == CheckStatus.SERVER_CERT_INVALID
    assert "is issued to 'hospital-b'" in result.message


def test_cert_rejected_by_alert(provisioned, site_kit):
    other_cert, _ = make_ca("server_trusts_other_ca")
    trusted = site_kit.parent / "trusted.pem"
    trusted.write_bytes(pem(other_cert))
    cert, key, _ = server_files(provisioned)
    with tcp_server(tls_handler(cert, key, trusted)) as port:
        point_kit_at(site_kit, port)
        result = check_site(site_kit)
    assert result.status == CheckStatus.CERT_REJECTED
    assert "this site's certificate is rejected by the server" in result.message


def revocation(kit, **entry) -> None:
    (kit / "local" / "revoked.json").write_text(json.dumps({"revoked": [entry]}), encoding="utf-8")


def test_revoked_by_fingerprint(site_kit, closed_port):
    cert = x509.load_pem_x509_certificate((site_kit / "startup" / "client.crt").read_bytes())
    revocation(site_kit, sha256=fingerprint(cert), reason="key compromised", revoked_at="2026-12-01T00:00:00Z")
    point_kit_at(site_kit, closed_port)
    result = check_site(site_kit)
    assert result.status == CheckStatus.REVOKED
    assert "revoked on 2026-12-01" in result.message
    assert "key compromised" in result.message


def test_revoked_by_serial(site_kit, closed_port):
    cert = x509.load_pem_x509_certificate((site_kit / "startup" / "client.crt").read_bytes())
    revocation(site_kit, serial=format(cert.serial_number, "x"))
    point_kit_at(site_kit, closed_port)
    assert check_site(site_kit).status == CheckStatus.REVOKED


def test_other_revocation_ignored(site_kit, closed_port):
    revocation(site_kit, serial="1234", participant="hospital-z")
    point_kit_at(site_kit, closed_port)
    assert check_site(site_kit).status == CheckStatus.UNREACHABLE


def test_invalid_revocation_list(site_kit):
    (site_kit / "local" / "revoked.json").write_text('{"revoked": [{"sha256": "xyz"}]}', encoding="utf-8")
    result = check_site(site_kit)
    assert result.status == CheckStatus.KIT_INVALID
    assert "revocation list" in result.message
    assert "invalid SHA-256 fingerprint 'xyz'" in result.message
