"""One provisioned 2-site workspace per test session, its signed kits, and helpers to alter kit zips.

Provisioning takes about a second and runs no FLARE process. Nothing listens on the workspace's admin service port,
so issuance events are spooled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import ssl
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from provisioning.kit_issuance import read_root_ca
from provisioning.kits import MANIFEST_NAME, SIGNATURE_NAME, build_kits
from provisioning.provision import free_port, provision
from provisioning.workspace import Workspace, WorkspaceState

EXAMPLE = Path(__file__).resolve().parents[3] / "provisioning" / "consortium.yml"


def small_consortium(folder: Path, **server: object) -> Path:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["project"] = "kits_unit"
    data["sites"] = data["sites"][:2]
    data["users"] = [u for u in data["users"] if u["org"] in ("consortium", "hospital_a", "hospital_b")]
    data.pop("demo_data", None)
    data["server"].update(server)
    path = folder / "consortium.yml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclass
class Provisioned:
    """A provisioned workspace and the kits built from it."""

    workspace: Workspace
    state: WorkspaceState
    kits: Path

    def kit_dir(self, name: str) -> Path:
        return self.workspace.kit_dir(self.state, name)

    def zip(self, name: str) -> Path:
        return self.kits / f"{name}.zip"


@pytest.fixture(scope="session")
def provisioned(tmp_path_factory) -> Provisioned:
    folder = tmp_path_factory.mktemp("kits")
    result = provision(small_consortium(folder), folder / "ws")
    site_data = result.workspace.kit_dir(result.state, "hospital-a") / "data"
    site_data.mkdir()
    (site_data / "train.csv").write_text("age,death\n70,1\n", encoding="utf-8")
    kits = folder / "zips"
    build_kits(result.workspace, kits, actor="tester")
    return Provisioned(result.workspace, result.state, kits)


@pytest.fixture(scope="session")
def root_key(provisioned):
    _, key, _ = read_root_ca(provisioned.workspace, provisioned.state)
    return key


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def write_zip(path: Path, entries: dict[str, bytes], modes: dict[str, int] | None = None) -> Path:
    modes = modes or {}
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = modes.get(name, 0o100644) << 16
            archive.writestr(info, content)
    return path


def resign(entries: dict[str, bytes], top: str, key, root_pem: bytes | None = None) -> dict[str, bytes]:
    """Rewrite the manifest hashes of ``entries`` and sign it with ``key``, as a CA holder could."""
    if root_pem is not None:
        entries[f"{top}/startup/rootCA.pem"] = root_pem
    manifest = json.loads(entries[f"{top}/{MANIFEST_NAME}"])
    skip = {f"{top}/{MANIFEST_NAME}", f"{top}/{SIGNATURE_NAME}"}
    manifest["files"] = {
        name.removeprefix(f"{top}/"): hashlib.sha256(content).hexdigest()
        for name, content in entries.items()
        if name not in skip
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    entries[f"{top}/{MANIFEST_NAME}"] = data
    entries[f"{top}/{SIGNATURE_NAME}"] = base64.b64encode(key.sign(data, pss, hashes.SHA256())) + b"\n"
    return entries


def make_ca(name: str = "foreign_ca") -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """Create a self-signed root CA unrelated to the workspace's."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def copy_kit(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def point_kit_at(kit: Path, port: int, host: str = "127.0.0.1") -> None:
    """Rewrite the server address in a site kit's ``fed_client.json``."""
    config_file = kit / "startup" / "fed_client.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["servers"][0]["service"]["target"] = f"{host}:{port}"
    config_file.write_text(json.dumps(config), encoding="utf-8")


@contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """Serve one connection on 127.0.0.1 with ``handle`` in a thread; yield the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            try:
                handle(conn)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=10)


def tls_handler(cert_file: Path, key_file: Path, ca_file: Path, hold_s: float = 4.0) -> Callable[[socket.socket], None]:
    """Return a handler that performs an mTLS handshake as a server and keeps the connection open."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca_file))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(cert_file), str(key_file))

    def handle(conn: socket.socket) -> None:
        conn.settimeout(hold_s)
        with context.wrap_socket(conn, server_side=True) as tls:
            try:
                tls.recv(1)
            except TimeoutError:
                pass

    return handle


@pytest.fixture
def closed_port() -> int:
    return free_port()
