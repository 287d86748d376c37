"""Tests for CKKS secure aggregation: preset checks, contexts, and encrypted weighted FedAvg."""

import math

import numpy as np
import pytest
import tenseal as ts

from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput, InvalidPrivacySetting
from app_custom.core.privacy.he import (
    CKKS_8192,
    CKKS_16384,
    PACKED_KEY,
    PRESETS,
    CKKSPreset,
    aggregate_encrypted,
    decrypt_params,
    encrypt_params,
    get_preset,
    load_context,
    make_contexts,
)

# Shapes of the demo MLP (8 inputs, two hidden layers of 64, 2 outputs) plus one layer of 10,000 values, which
# needs three ciphertexts of 4,096 slots.
SHAPES = {
    "fc1.weight": (64, 8),
    "fc1.bias": (64,),
    "fc2.weight": (64, 64),
    "fc2.bias": (64,),
    "out.weight": (2, 64),
    "out.bias": (2,),
    "big.weight": (100, 100),
}
WEIGHTS = [120.0, 300.0, 80.0]


@pytest.fixture(scope="module")
def contexts():
    secret_bytes, public_bytes = make_contexts(CKKS_8192)
    return load_context(secret_bytes, CKKS_8192), load_context(public_bytes, CKKS_8192)


@pytest.fixture(scope="module")
def site_params() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{key: rng.uniform(-10, 10, shape).astype(np.float32) for key, shape in SHAPES.items()} for _ in WEIGHTS]


def _fedavg(params: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {
        key: sum(w * p[key].astype(np.float64) for p, w in zip(params, weights, strict=True)) / total for key in SHAPES
    }


# --- presets --------------------------------------------------------------------------------------------------


def test_presets_self_check():
    assert CKKS_8192.self_check() <= CKKS_8192.atol
    assert CKKS_16384.self_check() <= CKKS_16384.atol


def test_flare_preset_values():
    assert CKKS_8192.poly_modulus_degree == 8192
    assert CKKS_8192.coeff_mod_bit_sizes == (60, 40, 40)
    assert CKKS_8192.scale_bits == 40
    assert CKKS_8192.slots == 4096
    assert get_preset("ckks_16384") is CKKS_16384
    assert set(PRESETS) == {"ckks_8192", "ckks_16384"}


def test_unknown_preset():
    with pytest.raises(HEConfigError, match="unknown CKKS preset 'ckks_1'"):
        get_preset("ckks_1")


BASE = {
    "name": "p",
    "poly_modulus_degree": 8192,
    "coeff_mod_bit_sizes": (60, 40, 40),
    "scale_bits": 40,
    "max_abs_value": 1e6,
    "atol": 1e-6,
}


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"poly_modulus_degree": 3000}, "poly_modulus_degree=3000 has no 128-bit security bound"),
        ({"coeff_mod_bit_sizes": (60, 60, 60, 60)}, "total 240 bits, above the 218 bits"),
        ({"poly_modulus_degree": 4096}, "total 140 bits, above the 109 bits"),
        ({"coeff_mod_bit_sizes": (60,)}, "at least two moduli"),
        ({"coeff_mod_bit_sizes": (61, 40, 40)}, "20..60 bits"),
        ({"scale_bits": 30}, "scale_bits=30 must equal every middle modulus"),
        ({"coeff_mod_bit_sizes": (45, 40, 40)}, "first modulus of 45 bits leaves under 10 bits"),
        ({"scale_bits": 70}, "scale_bits=70 must be in 20..60"),
        ({"max_abs_value": 1e15}, "max_abs_value=1e\\+15 summed over 1024 sites does not fit"),
        ({"max_abs_value": math.nan}, "max_abs_value=nan"),
        ({"atol": 0.0}, "atol=0.0"),
        ({"scheme": "BFV"}, "Extra inputs are not permitted"),
    ],
)
def test_preset_rejects(change, fragment):
    with pytest.raises(HEConfigError, match=fragment):
        CKKSPreset(**{**BASE, **change})


def test_self_check_catches_tight_atol():
    preset = CKKSPreset(**{**BASE, "name": "too_tight", "atol": 1e-15})
    with pytest.raises(HEConfigError, match="preset 'too_tight' decrypted a sum with error"):
        preset.self_check()


# --- contexts -------------------------------------------------------------------------------------------------


def test_public_context_has_no_secret(contexts):
    secret, public = contexts
    assert secret.is_private
    assert not public.is_private
    assert not public.context.has_secret_key()


def test_public_context_cannot_decrypt(contexts, site_params):
    secret, public = contexts
    encrypted = encrypt_params(site_params[0], public, 1.0)
    with pytest.raises(HEConfigError, match="public context contains no secret key"):
        decrypt_params(encrypted, public, SHAPES, 1.0)
    with pytest.raises(ValueError, match="doesn't hold a secret_key"):
        ts.ckks_vector_from(public.context, encrypted[PACKED_KEY][0]).decrypt()


def test_load_context_wrong_preset():
    secret_bytes, _ = make_contexts(CKKS_8192)
    with pytest.raises(HEConfigError, match="expects N=16384"):
        load_context(secret_bytes, CKKS_16384)


def test_load_context_garbage():
    with pytest.raises(HEConfigError, match="cannot load a CKKS context from 5 bytes"):
        load_context(b"hello", CKKS_8192)


# --- aggregation ----------------------------------------------------------------------------------------------


def test_aggregate_matches_fedavg(contexts, site_params):
    secret, public = contexts
    encrypted = [encrypt_params(p, secret, w) for p, w in zip(site_params, WEIGHTS, strict=True)]
    result = decrypt_params(aggregate_encrypted(encrypted, public), secret, SHAPES, sum(WEIGHTS))
    expected = _fedavg(site_params, WEIGHTS)
    for key in SHAPES:
        assert result[key].shape == SHAPES[key]
        np.testing.assert_allclose(result[key], expected[key], rtol=0, atol=1e-6)


def test_packed_fills_fewest_ciphertexts(contexts, site_params):
    secret, public = contexts
    encrypted = [encrypt_params(p, secret, w) for p, w in zip(site_params, WEIGHTS, strict=True)]
    total_values = sum(math.prod(shape) for shape in SHAPES.values())

    assert set(encrypted[0]) == {PACKED_KEY}
    assert len(encrypted[0][PACKED_KEY]) == math.ceil(total_values / CKKS_8192.slots)
    result = decrypt_params(aggregate_encrypted(encrypted, public), secret, SHAPES, sum(WEIGHTS))
    expected = _fedavg(site_params, WEIGHTS)
    assert list(result) == list(SHAPES)
    for key in SHAPES:
        assert result[key].shape == SHAPES[key]
        np.testing.assert_allclose(result[key], expected[key], rtol=0, atol=1e-6)


def test_packed_ignores_layer_order(contexts, site_params):
    secret, _ = contexts
    reordered = dict(reversed(list(site_params[0].items())))
    encrypted = encrypt_params(reordered, secret, 1.0)
    result = decrypt_params(encrypted, secret, SHAPES, 1.0)
    for key in SHAPES:
        np.testing.assert_allclose(result[key], site_params[0][key], rtol=0, atol=1e-6)


def test_packed_key_reserved(contexts):
    secret, _ = contexts
    with pytest.raises(InvalidPrivacyInput, match="the key of packed params"):
        encrypt_params({PACKED_KEY: np.ones(3)}, secret, 1.0)


def test_long_layer_chunks(contexts, site_params):
    secret, _ = contexts
    encrypted = encrypt_params(site_params[0], secret, 1.0, pack=False)
    assert len(encrypted["big.weight"]) == 3  # 10,000 values in ciphertexts of 4,096
    assert len(encrypted["fc2.weight"]) == 1  # exactly 4,096 values
    result = decrypt_params(encrypted, secret, SHAPES, 1.0)
    np.testing.assert_allclose(result["big.weight"], site_params[0]["big.weight"], rtol=0, atol=1e-6)


def test_missing_site_aggregates(contexts, site_params):
    secret, public = contexts
    present = [0, 2]
    encrypted = [encrypt_params(site_params[i], secret, WEIGHTS[i]) for i in present]
    total_weight = sum(WEIGHTS[i] for i in present)
    result = decrypt_params(aggregate_encrypted(encrypted, public), secret, SHAPES, total_weight)
    expected = _fedavg([site_params[i] for i in present], [WEIGHTS[i] for i in present])
    for key in SHAPES:
        np.testing.assert_allclose(result[key], expected[key], rtol=0, atol=1e-6)


def test_server_rejects_secret_context(contexts, site_params):
    secret, _ = contexts
    encrypted = [encrypt_params(site_params[0], secret, 1.0)]
    with pytest.raises(HEConfigError, match="give the server the public one"):
        aggregate_encrypted(encrypted, secret)


def test_aggregate_mismatch_raises(contexts):
    secret, public = contexts
    first = encrypt_params({"w": np.ones(10)}, secret, 1.0, pack=False)
    other_layer = encrypt_params({"v": np.ones(10)}, secret, 1.0, pack=False)
    longer = encrypt_params({"w": np.ones(5000)}, secret, 1.0, pack=False)
    shorter = encrypt_params({"w": np.ones(9)}, secret, 1.0, pack=False)
    with pytest.raises(InvalidPrivacyInput, match="contribution 1 differs from contribution 0"):
        aggregate_encrypted([first, other_layer], public)
    with pytest.raises(InvalidPrivacyInput, match="contribution 1 differs from contribution 0"):
        aggregate_encrypted([first, longer], public)
    with pytest.raises(InvalidPrivacyInput, match="contribution 1 layer 'w' chunk 0 has 9 values"):
        aggregate_encrypted([first, shorter], public)
    with pytest.raises(InvalidPrivacyInput, match="no encrypted contributions"):
        aggregate_encrypted([], public)


def test_aggregate_corrupt_bytes(contexts):
    secret, public = contexts
    first = encrypt_params({"w": np.ones(10)}, secret, 1.0, pack=False)
    with pytest.raises(InvalidPrivacyInput, match="contribution 1 layer 'w' is not a CKKS vector"):
        aggregate_encrypted([first, {"w": [b"not a ciphertext"]}], public)


@pytest.mark.parametrize(
    ("params", "weight", "error", "fragment"),
    [
        ({"w": np.array([1.0, np.nan])}, 1.0, InvalidPrivacyInput, "is not finite"),
        ({"w": np.array([2e6])}, 1.0, InvalidPrivacyInput, "above max_abs_value=1e\\+06"),
        ({"w": np.array([5.0])}, 3e5, InvalidPrivacyInput, "reaches 1.5e\\+06"),
        ({"w": np.array([1, 2])}, 1.0, InvalidPrivacyInput, "floating-point numpy array"),
        ({}, 1.0, InvalidPrivacyInput, "non-empty mapping"),
        ({"w": np.ones(2)}, 0.0, InvalidPrivacySetting, "aggregation_weight=0.0"),
        ({"w": np.ones(2)}, math.nan, InvalidPrivacySetting, "aggregation_weight=nan"),
        ({"w": np.ones(2)}, -2.0, InvalidPrivacySetting, "aggregation_weight=-2.0"),
    ],
)
def test_encrypt_rejects(contexts, params, weight, error, fragment):
    secret, _ = contexts
    with pytest.raises(error, match=fragment):
        encrypt_params(params, secret, weight)


def test_decrypt_rejects_packed_mismatch(contexts):
    secret, _ = contexts
    encrypted = encrypt_params({"a": np.ones(5000), "b": np.ones(3)}, secret, 1.0)
    with pytest.raises(InvalidPrivacyInput, match="has 2 chunks, expected 1"):
        decrypt_params(encrypted, secret, {"a": (100,), "b": (3,)}, 1.0)
    with pytest.raises(InvalidPrivacyInput, match="decrypted to 5003 values, expected 5004"):
        decrypt_params(encrypted, secret, {"a": (5000,), "b": (4,)}, 1.0)


def test_decrypt_rejects_mismatch(contexts):
    secret, _ = contexts
    encrypted = encrypt_params({"w": np.ones(5000)}, secret, 1.0, pack=False)
    with pytest.raises(InvalidPrivacyInput, match="differ from shapes"):
        decrypt_params(encrypted, secret, {"v": (5000,)}, 1.0)
    with pytest.raises(InvalidPrivacyInput, match="layer 'w' has 2 chunks, expected 1"):
        decrypt_params(encrypted, secret, {"w": (100,)}, 1.0)
    with pytest.raises(InvalidPrivacyInput, match="layer 'w' decrypted to 5000 values, expected 4100"):
        decrypt_params(encrypted, secret, {"w": (41, 100)}, 1.0)
    with pytest.raises(InvalidPrivacySetting, match="total_weight=0.0"):
        decrypt_params(encrypted, secret, {"w": (5000,)}, 0.0)
