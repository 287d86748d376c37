"""CKKS secure aggregation adapters: site filters, the server's encrypted round and the kit context loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tenseal as ts
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext

from app_custom.core.aggregation import WeightedFedAvg
from app_custom.core.errors import ContributionRejected, NoValidContributions
from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput
from app_custom.core.privacy.he import CKKS_8192, PACKED_KEY, HEContext, encrypt_params, load_context
from app_custom.flare import he_filters
from app_custom.flare.he_aggregator import EncryptedRoundAggregator, shapes_of
from app_custom.flare.he_context import load_kit_context

# CKKS at scale 2**40 decrypts a sum of three weighted models to about 1e-8 absolute error. Dividing by the total
# weight shrinks that error further, so the FedAvg error stays far below this bound.
TOLERANCE = 1e-5


def symmetric_contexts() -> tuple[HEContext, HEContext]:
    """Return (site, server) contexts built as FLARE 2.9's HEBuilder builds them: symmetric, relin keys only."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS, poly_modulus_degree=8192, coeff_mod_bit_sizes=[60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.generate_relin_keys()
    context.global_scale = 2**40
    site = context.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=True)
    server = context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=True)
    return load_context(site, CKKS_8192), load_context(server, CKKS_8192)


@pytest.fixture(scope="module")
def contexts() -> tuple[HEContext, HEContext]:
    return symmetric_contexts()


def site_models(num_sites: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    # "big" spans two ciphertexts of 4,096 slots, so chunking is exercised.
    return [
        {"big": rng.normal(size=(70, 80)).astype(np.float32), "bias": rng.normal(size=(3,)).astype(np.float32)}
        for _ in range(num_sites)
    ]


def plaintext_fedavg(models: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    stream = WeightedFedAvg()
    for model, weight in zip(models, weights, strict=True):
        stream.add(model, weight)
    return stream.result()


def encrypted_result(site: HEContext, model: dict[str, np.ndarray], num_examples: int) -> DXO:
    dxo = DXO(DataKind.WEIGHTS, data=dict(model), meta={"num_examples": num_examples})
    encrypt = he_filters.EncryptParams()
    encrypt._context = site
    return from_shareable(encrypt.process(dxo.to_shareable(), FLContext()))


def decrypt_on_site(site: HEContext, aggregator: EncryptedRoundAggregator) -> dict[str, np.ndarray]:
    dxo = DXO(DataKind.WEIGHTS, data=aggregator.result(), meta=aggregator.result_meta())
    decrypt = he_filters.DecryptAggregate()
    decrypt._context = site
    return from_shareable(decrypt.process(dxo.to_shareable(), FLContext())).data


def run_round(contexts, models, weights) -> EncryptedRoundAggregator:
    site, server = contexts
    aggregator = EncryptedRoundAggregator(server)
    aggregator.start_round(shapes_of(models[0]))
    for index, (model, weight) in enumerate(zip(models, weights, strict=True)):
        dxo = encrypted_result(site, model, weight)
        aggregator.add(f"site-{index}", dxo.data, dxo.get_meta_prop("num_examples"), dxo.get_meta_prop("he_shapes"))
    return aggregator


def test_decrypted_aggregate_matches_fedavg(contexts):
    models, weights = site_models(3), [100, 250, 40]
    aggregator = run_round(contexts, models, weights)
    decrypted = decrypt_on_site(contexts[0], aggregator)
    expected = plaintext_fedavg(models, weights)
    assert aggregator.total_weight == 390
    for key, value in expected.items():
        assert decrypted[key].dtype == np.float32
        assert decrypted[key].shape == value.shape
        assert np.max(np.abs(decrypted[key] - value)) < TOLERANCE


def test_dropped_site_averages_present_sites(contexts):
    models, weights = site_models(3, seed=1), [100, 250, 40]
    aggregator = run_round(contexts, models[:2], weights[:2])
    decrypted = decrypt_on_site(contexts[0], aggregator)
    expected = plaintext_fedavg(models[:2], weights[:2])
    assert aggregator.count == 2
    assert aggregator.total_weight == 350
    assert max(np.max(np.abs(decrypted[key] - expected[key])) for key in expected) < TOLERANCE


def test_encrypted_result_carries_no_plaintext(contexts):
    model = site_models(1)[0]
    dxo = encrypted_result(contexts[0], model, 10)
    assert dxo.get_meta_prop("he_encrypted") is True
    assert dxo.get_meta_prop("he_shapes") == {"big": [70, 80], "bias": [3]}
    assert list(dxo.data) == [PACKED_KEY]
    assert len(dxo.data[PACKED_KEY]) == math.ceil(5603 / 4096)
    assert all(isinstance(chunk, bytes) for chunks in dxo.data.values() for chunk in chunks)


def test_unpacked_filter_one_vector_per_layer(contexts):
    dxo = DXO(DataKind.WEIGHTS, data=site_models(1)[0], meta={"num_examples": 10})
    encrypt = he_filters.EncryptParams(pack=False)
    encrypt._context = contexts[0]
    data = from_shareable(encrypt.process(dxo.to_shareable(), FLContext())).data
    assert [len(data[key]) for key in ("big", "bias")] == [math.ceil(5600 / 4096), 1]


def test_packed_wrong_length_rejected(contexts):
    site, server = contexts
    model = site_models(1)[0]
    aggregator = EncryptedRoundAggregator(server)
    aggregator.start_round(shapes_of(model))
    encrypted = encrypt_params(model, site, 5.0)
    encrypted[PACKED_KEY] = encrypted[PACKED_KEY][:1] + [ts.ckks_vector(site.context, [1.0]).serialize()]
    with pytest.raises(ContributionRejected, match="chunk 1 holds 1 values, expected 1507"):
        aggregator.add("s", encrypted, 5, {"big": [70, 80], "bias": [3]})


def test_mixed_layouts_rejected(contexts):
    site, server = contexts
    model = site_models(1)[0]
    aggregator = EncryptedRoundAggregator(server)
    aggregator.start_round(shapes_of(model))
    aggregator.add("a", encrypt_params(model, site, 5.0), 5, {"big": [70, 80], "bias": [3]})
    with pytest.raises(ContributionRejected, match="shape_mismatch"):
        aggregator.add("b", encrypt_params(model, site, 5.0, pack=False), 5, {"big": [70, 80], "bias": [3]})


def test_server_context_cannot_decrypt(contexts):
    _, server = contexts
    assert server.is_private is False
    aggregator = run_round(contexts, site_models(2), [1, 1])
    decrypt = he_filters.DecryptAggregate()
    decrypt._context = server
    dxo = DXO(DataKind.WEIGHTS, data=aggregator.result(), meta=aggregator.result_meta())
    with pytest.raises(HEConfigError, match="needs the secret context"):
        decrypt.process(dxo.to_shareable(), FLContext())


def test_aggregator_rejects_secret_context(contexts):
    with pytest.raises(HEConfigError, match="contains the secret key"):
        EncryptedRoundAggregator(contexts[0])


def test_metrics_result_passes_encrypt_filter(contexts):
    dxo = DXO(DataKind.METRICS, data={"global_roc_auc": 0.7}, meta={"refused": "privacy_budget_exhausted"})
    encrypt = he_filters.EncryptParams()
    encrypt._context = contexts[0]
    assert from_shareable(encrypt.process(dxo.to_shareable(), FLContext())).data == {"global_roc_auc": 0.7}


def test_weight_diff_result_rejected(contexts):
    dxo = DXO(DataKind.WEIGHT_DIFF, data=site_models(1)[0], meta={"num_examples": 5})
    encrypt = he_filters.EncryptParams()
    encrypt._context = contexts[0]
    with pytest.raises(InvalidPrivacyInput, match="encrypts full weights only"):
        encrypt.process(dxo.to_shareable(), FLContext())


@pytest.mark.parametrize("num_examples", [None, "10", True, float("nan")])
def test_encrypt_filter_rejects_bad_weight(contexts, num_examples):
    dxo = DXO(DataKind.WEIGHTS, data=site_models(1)[0], meta={"num_examples": num_examples})
    encrypt = he_filters.EncryptParams()
    encrypt._context = contexts[0]
    with pytest.raises((InvalidPrivacyInput, ValueError), match="num_examples|aggregation_weight"):
        encrypt.process(dxo.to_shareable(), FLContext())


def test_plaintext_initial_model_passes_decrypt_filter(contexts):
    model = site_models(1)[0]
    decrypt = he_filters.DecryptAggregate()
    decrypt._context = contexts[0]
    data = from_shareable(decrypt.process(DXO(DataKind.WEIGHTS, data=model).to_shareable(), FLContext())).data
    assert np.array_equal(data["big"], model["big"])


@pytest.fixture
def started(contexts) -> tuple[EncryptedRoundAggregator, dict[str, list[bytes]], dict[str, list[int]]]:
    site, server = contexts
    model = site_models(1)[0]
    aggregator = EncryptedRoundAggregator(server)
    aggregator.start_round(shapes_of(model))
    return aggregator, encrypt_params(model, site, 5.0, pack=False), {"big": [70, 80], "bias": [3]}


def test_missing_layer_rejected(started):
    aggregator, encrypted, shapes = started
    del encrypted["bias"]
    with pytest.raises(ContributionRejected, match="missing_key"):
        aggregator.add("s", encrypted, 5, shapes)


def test_unexpected_layer_rejected(started):
    aggregator, encrypted, shapes = started
    encrypted["extra"] = encrypted["bias"]
    with pytest.raises(ContributionRejected, match="unexpected_key"):
        aggregator.add("s", encrypted, 5, shapes)


def test_wrong_ciphertext_count_rejected(started):
    aggregator, encrypted, shapes = started
    encrypted["big"] = encrypted["big"][:1]
    with pytest.raises(ContributionRejected, match="has 1 ciphertexts, expected 2"):
        aggregator.add("s", encrypted, 5, shapes)


def test_wrong_vector_length_rejected(contexts, started):
    aggregator, encrypted, shapes = started
    encrypted["bias"] = [ts.ckks_vector(contexts[0].context, [1.0, 2.0]).serialize()]
    with pytest.raises(ContributionRejected, match="holds 2 values, expected 3"):
        aggregator.add("s", encrypted, 5, shapes)


def test_garbage_ciphertext_rejected(started):
    aggregator, encrypted, shapes = started
    encrypted["bias"] = [b"not a ciphertext"]
    with pytest.raises(ContributionRejected, match="dtype_mismatch"):
        aggregator.add("s", encrypted, 5, shapes)


def test_declared_shapes_must_match(started):
    aggregator, encrypted, _ = started
    with pytest.raises(ContributionRejected, match="shape_mismatch"):
        aggregator.add("s", encrypted, 5, {"big": [80, 70], "bias": [3]})


@pytest.mark.parametrize("num_examples", [None, 0, -3, float("inf"), "5", True])
def test_bad_num_examples_rejected(started, num_examples):
    aggregator, encrypted, shapes = started
    with pytest.raises(ContributionRejected, match="bad_num_examples"):
        aggregator.add("s", encrypted, num_examples, shapes)


def test_empty_round_has_no_result(started):
    aggregator, _, _ = started
    with pytest.raises(NoValidContributions, match="no valid encrypted contribution"):
        aggregator.result()


def test_kit_context_needs_security_service():
    with pytest.raises(HEConfigError, match="cannot load the CKKS context server_context.tenseal"):
        load_kit_context("server_context.tenseal", "ckks_8192", secret=False)


def test_kit_context_rejects_unknown_preset():
    with pytest.raises(HEConfigError, match="unknown CKKS preset 'ckks_1'"):
        load_kit_context("server_context.tenseal", "ckks_1", secret=False)
