"""Revocation by certificate: the guard's wrapper around FLARE's identity verifier, with real kit certificates.

FLARE's own ``ClientManager`` and ``IdentityVerifier`` run here; only the server engine is a stand-in, because the
wrapper needs nothing from it but ``client_manager`` and the workspace folder.
"""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from types import SimpleNamespace

import nvflare
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, SecureTrainConst
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotAuthenticated
from nvflare.private.fed.server.client_manager import ClientManager
from nvflare.private.fed.utils.identity_utils import IdentityAsserter, InvalidCNSignature

from app_custom.flare.revocation_guard import (
    CERTIFICATE_CHECK_ERROR_FILE,
    REVOCATION_FILE,
    ROOT_CA_FILE,
    CertificateCheckUnavailable,
    CertificateRevoked,
    RevocationGuard,
    certificate_check_error,
    install_certificate_check,
)
from provisioning.revocation import revoke_site, rotate_site


class Engine(SimpleNamespace):
    """The parts of FLARE's ServerEngine that the guard uses."""

    def get_workspace(self):
        return SimpleNamespace(get_root_dir=lambda: str(self.root))

    def disable_clients(self, names):
        self.disabled.extend(names)


def server_root(workspace) -> Path:
    state = workspace.load()
    return workspace.kit_dir(state, state.server_name)


def copy_startup(workspace, site: str, target: Path) -> Path:
    """Keep a site's current key and certificate, as a site that missed a rotation still has them."""
    state = workspace.load()
    shutil.copytree(workspace.kit_dir(state, site) / "startup", target)
    return target


def server_context(workspace, engine: Engine) -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.put(key=ReservedKey.ENGINE, value=engine, private=True, sticky=False)
    config = [{SecureTrainConst.SSL_ROOT_CERT: str(server_root(workspace) / ROOT_CA_FILE)}]
    fl_ctx.set_prop(FLContextKey.SERVER_CONFIG, config, private=True, sticky=False)
    return fl_ctx


def register(client_manager: ClientManager, fl_ctx: FLContext, startup: Path, *, wrong_nonce: bool = False) -> bool:
    """Run FLARE's common-name challenge the way ``authenticated_client`` does, with the kit's key and certificate."""
    asserter = IdentityAsserter(str(startup / "client.key"), str(startup / "client.crt"))
    nonce = secrets.token_hex(8)
    signature = asserter.sign_common_name("other" if wrong_nonce else nonce)
    verifier = client_manager._get_id_verifier(fl_ctx)
    return verifier.verify_common_name(
        asserted_cn=asserter.cn,
        nonce=nonce,
        asserter_cert=asserter.cert,
        signature=signature,
        intermediate_certs=[],
        expected_eku=ExtendedKeyUsageOID.CLIENT_AUTH,
    )


@pytest.fixture
def server(workspace):
    client_manager = ClientManager(project_name="lifecycle_unit")
    engine = Engine(client_manager=client_manager, root=server_root(workspace), disabled=[])
    install_certificate_check(engine, engine.root)
    return client_manager, server_context(workspace, engine)


def test_rotated_old_certificate_rejected(workspace, server, tmp_path):
    client_manager, fl_ctx = server
    old = copy_startup(workspace, "hospital-a", tmp_path / "old")
    rotated = rotate_site(workspace, "hospital-a", actor="tester")
    with pytest.raises(CertificateRevoked, match="certificate of site 'hospital-a'") as caught:
        register(client_manager, fl_ctx, old)
    assert rotated.old_sha256 in str(caught.value)
    assert "key rotated" in str(caught.value)
    assert isinstance(caught.value, NotAuthenticated)
    assert register(client_manager, fl_ctx, rotated.kit_dir / "startup") is True


def test_revoked_site_certificate_rejected(workspace, server, tmp_path):
    client_manager, fl_ctx = server
    startup = copy_startup(workspace, "hospital-b", tmp_path / "b")
    assert register(client_manager, fl_ctx, startup) is True
    entry = revoke_site(workspace, "hospital-b", reason="left the study", actor="tester")
    with pytest.raises(CertificateRevoked, match=f"serial {entry.serial}"):
        register(client_manager, fl_ctx, startup)


def test_unrevoked_site_delegates_to_flare(workspace, server, tmp_path):
    client_manager, fl_ctx = server
    rotate_site(workspace, "hospital-a", actor="tester")
    startup = copy_startup(workspace, "hospital-b", tmp_path / "b")
    assert register(client_manager, fl_ctx, startup) is True
    with pytest.raises(InvalidCNSignature):
        register(client_manager, fl_ctx, startup, wrong_nonce=True)


def test_edited_list_rejects_every_certificate(workspace, server, tmp_path):
    client_manager, fl_ctx = server
    rotate_site(workspace, "hospital-a", actor="tester")
    path = server_root(workspace) / REVOCATION_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["revoked"][0]["reason"] = "edited"
    path.write_text(json.dumps(data), encoding="utf-8")
    startup = copy_startup(workspace, "hospital-b", tmp_path / "b")
    with pytest.raises(CertificateRevoked, match="signature does not verify"):
        register(client_manager, fl_ctx, startup)


def test_install_twice_wraps_once(workspace, server):
    client_manager, _ = server
    getter = client_manager.cred_keeper.get_id_verifier
    install_certificate_check(SimpleNamespace(client_manager=client_manager), server_root(workspace))
    assert client_manager.cred_keeper.get_id_verifier is getter


def test_install_without_cred_keeper(workspace):
    engine = SimpleNamespace(client_manager=SimpleNamespace())
    with pytest.raises(CertificateCheckUnavailable, match=f"FLARE {nvflare.__version__} has no"):
        install_certificate_check(engine, server_root(workspace))


def test_install_changed_registration_path(workspace):
    class OtherClientManager:
        def __init__(self):
            self.cred_keeper = SimpleNamespace(get_id_verifier=lambda fl_ctx: None)

        def _get_id_verifier(self, fl_ctx):
            return None

        def authenticated_client(self, request, fl_ctx, client_type):
            return None

    engine = SimpleNamespace(client_manager=OtherClientManager())
    with pytest.raises(CertificateCheckUnavailable, match="no longer verifies certificates"):
        install_certificate_check(engine, server_root(workspace))


def registration_context(workspace, engine: Engine, site: str) -> FLContext:
    fl_ctx = server_context(workspace, engine)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    fl_ctx.set_peer_context(peer)
    return fl_ctx


def test_guard_fails_closed_without_check(workspace):
    engine = Engine(client_manager=None, root=server_root(workspace), disabled=[])
    guard = RevocationGuard()
    guard.handle_event(EventType.SYSTEM_START, server_context(workspace, engine))
    message = certificate_check_error(engine.root)
    assert message is not None
    assert f"FLARE {nvflare.__version__}" in message
    assert "rejecting every site registration" in message

    fl_ctx = registration_context(workspace, engine, "hospital-a")
    guard.handle_event(EventType.CLIENT_REGISTER_RECEIVED, fl_ctx)
    exceptions = fl_ctx.get_prop(FLContextKey.EXCEPTIONS)
    assert isinstance(exceptions[guard.name], NotAuthenticated)
    assert "certificate revocation cannot be enforced" in str(exceptions[guard.name])


def test_guard_installs_check(workspace):
    client_manager = ClientManager(project_name="lifecycle_unit")
    engine = Engine(client_manager=client_manager, root=server_root(workspace), disabled=[])
    (engine.root / CERTIFICATE_CHECK_ERROR_FILE).write_text("stale\n", encoding="utf-8")
    guard = RevocationGuard()
    fl_ctx = registration_context(workspace, engine, "hospital-a")
    guard.handle_event(EventType.CLIENT_REGISTER_RECEIVED, fl_ctx)
    assert fl_ctx.get_prop(FLContextKey.EXCEPTIONS) is None
    assert certificate_check_error(engine.root) is None
    verifier = client_manager._get_id_verifier(server_context(workspace, engine))
    assert type(verifier).__name__ == "RevocationCheckingVerifier"
    assert isinstance(verifier.delegate.root_cert, x509.Certificate)
