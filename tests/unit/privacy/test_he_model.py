"""Tests for the server's encrypted copy of an HE job's global model and its decryption with a site kit."""

import json
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.fl_model import FLModel

from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput
from app_custom.core.privacy.he import CKKS_8192, encrypt_params, load_context, make_contexts
from app_custom.core.privacy.he_model import (
    ENCRYPTED_MODEL_FILE,
    EncryptedModel,
    decrypt_model,
    decrypt_model_file,
    load_encrypted_model,
    main,
    save_encrypted_model,
)
from app_custom.flare import he_filters
from app_custom.flare.he_aggregator import EncryptedRoundAggregator, shapes_of
from app_custom.flare.privacy import PrivateFedAvg

SHAPES = {"net.0.weight": (64, 9), "net.0.bias": (64,), "net.3.weight": (1, 64), "net.3.bias": (1,)}
WEIGHTS = [120, 300, 80]


@pytest.fixture(scope="module")
def context_bytes() -> tuple[bytes, bytes]:
    return make_contexts(CKKS_8192)


@pytest.fixture
def site_kit(tmp_path, context_bytes) -> Path:
    startup = tmp_path / "hospital-a" / "startup"
    startup.mkdir(parents=True)
    (startup / "client_context.tenseal").write_bytes(context_bytes[0])
    return startup.parent


@pytest.fixture(scope="module")
def he_round(context_bytes) -> EncryptedRoundAggregator:
    """Return an aggregator after one round of three sites' encrypted params."""
    secret, public = (load_context(data, CKKS_8192) for data in context_bytes)
    rng = np.random.default_rng(0)
    aggregator = EncryptedRoundAggregator(public)
    aggregator.start_round(SHAPES)
    for index, weight in enumerate(WEIGHTS):
        params = {key: rng.normal(size=shape).astype(np.float32) for key, shape in SHAPES.items()}
        aggregator.add(f"site-{index}", encrypt_params(params, secret, weight), weight, shapes_of(params))
    return aggregator


def sent_to_sites(he_round: EncryptedRoundAggregator, context_bytes) -> dict[str, np.ndarray]:
    """Return what a site's decrypt filter makes of the aggregate the server sends."""
    dxo = DXO(DataKind.WEIGHTS, data=he_round.result(), meta=he_round.result_meta())
    decrypt = he_filters.DecryptAggregate()
    decrypt._context = load_context(context_bytes[0], CKKS_8192)
    return from_shareable(decrypt.process(dxo.to_shareable(), FLContext())).data


def save_with_workflow(he_round: EncryptedRoundAggregator, server_dir: Path) -> PrivateFedAvg:
    workflow = PrivateFedAvg(secure_aggregation={"preset": "ckks_8192"}, num_rounds=1)
    workflow._he = he_round
    workflow.fl_ctx = FLContext()
    workflow.fl_ctx.set_prop(FLContextKey.APP_ROOT, str(server_dir), private=True, sticky=False)
    workflow.save_model(FLModel(params=he_round.result(), meta=he_round.result_meta()))
    return workflow


def test_saved_model_matches_sites(tmp_path, site_kit, he_round, context_bytes):
    server_dir = tmp_path / "server" / "app_server"
    server_dir.mkdir(parents=True)
    save_with_workflow(he_round, server_dir)

    recovered = decrypt_model_file(server_dir / ENCRYPTED_MODEL_FILE, site_kit)
    received = sent_to_sites(he_round, context_bytes)

    assert list(recovered) == list(SHAPES)
    for key in SHAPES:
        assert recovered[key].dtype == np.float32
        assert np.array_equal(recovered[key], received[key])


def test_server_dir_has_no_secret_key(tmp_path, he_round, context_bytes):
    server_dir = tmp_path / "server" / "app_server"
    server_dir.mkdir(parents=True)
    save_with_workflow(he_round, server_dir)

    files = [path for path in (tmp_path / "server").rglob("*") if path.is_file()]
    assert [path.name for path in files] == [ENCRYPTED_MODEL_FILE]
    document = json.loads(files[0].read_text(encoding="utf-8"))
    assert set(document) == {"format", "version", "preset", "round", "total_weight", "shapes", "ciphertexts"}
    assert document["total_weight"] == sum(WEIGHTS)
    for path in files:
        try:
            context = ts.context_from(path.read_bytes())
        except (ValueError, TypeError, RuntimeError):
            continue  # not a TenSEAL context at all
        assert not context.is_private()


def test_public_context_cannot_decrypt(tmp_path, he_round, context_bytes):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    public = load_context(context_bytes[1], CKKS_8192)
    with pytest.raises(HEConfigError, match="needs the secret context"):
        decrypt_model(load_encrypted_model(path), public)


def _model(he_round: EncryptedRoundAggregator) -> EncryptedModel:
    return EncryptedModel(
        preset="ckks_8192",
        round=2,
        total_weight=he_round.total_weight,
        shapes=dict(SHAPES),
        ciphertexts=he_round.result(),
    )


def test_round_trip_keeps_fields(tmp_path, he_round):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    loaded = load_encrypted_model(path)
    assert loaded == _model(he_round)
    assert not (tmp_path / (ENCRYPTED_MODEL_FILE + ".partial")).exists()


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"format": "other"}, "expected format"),
        ({"version": 9}, "has version 9"),
        ({"total_weight": 0}, "total_weight is 0"),
        ({"total_weight": "5"}, "field 'total_weight'"),
        ({"round": None}, "field 'round'"),
        ({"shapes": {"w": [-1]}}, "shape of layer 'w'"),
        ({"ciphertexts": {"w": ["@@not base64@@"]}}, "ciphertexts of 'w'"),
    ],
)
def test_load_rejects(tmp_path, he_round, change, fragment):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    document = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**document, **change}), encoding="utf-8")
    with pytest.raises(InvalidPrivacyInput, match=fragment):
        load_encrypted_model(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(InvalidPrivacyInput, match="not found"):
        load_encrypted_model(tmp_path / "absent.json")


def test_cli_writes_npz(tmp_path, site_kit, he_round, context_bytes):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    output = tmp_path / "global.npz"

    assert main([str(path), "--kit", str(site_kit), "--output", str(output)]) == 0

    with np.load(output) as saved:
        received = sent_to_sites(he_round, context_bytes)
        assert sorted(saved.files) == sorted(SHAPES)
        for key in SHAPES:
            assert np.array_equal(saved[key], received[key])


def test_cli_rejects_server_kit(tmp_path, he_round, context_bytes, capsys):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    server_kit = tmp_path / "server"
    (server_kit / "startup").mkdir(parents=True)
    (server_kit / "startup" / "client_context.tenseal").write_bytes(context_bytes[1])

    assert main([str(path), "--kit", str(server_kit), "--output", str(tmp_path / "out.npz")]) == 1
    assert "needs the secret context" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()


def test_cli_missing_kit(tmp_path, he_round, capsys):
    path = tmp_path / ENCRYPTED_MODEL_FILE
    save_encrypted_model(path, _model(he_round))
    assert main([str(path), "--kit", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out.npz")]) == 1
    assert "cannot read the secret CKKS context" in capsys.readouterr().err
