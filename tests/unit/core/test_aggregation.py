"""Tests for streaming weighted FedAvg."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from app_custom.core.aggregation import WeightedFedAvg, weighted_fedavg
from app_custom.core.errors import ContributionRejected, InvalidSetting, NoValidContributions


def _model(value: float, dtype=np.float32) -> dict[str, np.ndarray]:
    return {
        "w": np.full((3, 4), value, dtype=dtype),
        "b": np.full((4,), -value, dtype=dtype),
        "bn.num_batches_tracked": np.array(int(abs(value)), dtype=np.int64),
    }


def test_mean_matches_formula():
    rng = np.random.default_rng(0)
    models = [{"w": rng.normal(size=(5, 7)).astype(np.float64)} for _ in range(4)]
    weights = [1.0, 10.0, 3.5, 100.0]
    expected = sum(w * m["w"] for m, w in zip(models, weights)) / sum(weights)
    aggregator = WeightedFedAvg()
    for model, weight in zip(models, weights):
        aggregator.add(model, weight)
    np.testing.assert_allclose(aggregator.result()["w"], expected, rtol=1e-12)
    assert aggregator.count == 4
    assert aggregator.total_weight == pytest.approx(114.5)


def test_large_array_chunks():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200_003).astype(np.float32)
    b = rng.normal(size=200_003).astype(np.float32)
    result = weighted_fedavg([({"x": a}, 1.0), ({"x": b}, 3.0)])
    np.testing.assert_allclose(result["x"], (a + 3 * b) / 4, rtol=1e-5, atol=1e-6)


def test_result_dtype_first():
    aggregator = WeightedFedAvg()
    aggregator.add(_model(1.0, np.float16), 1)
    aggregator.add(_model(2.0, np.float16), 1)
    result = aggregator.result()
    assert result["w"].dtype == np.float16
    assert result["bn.num_batches_tracked"].dtype == np.int64
    np.testing.assert_allclose(result["w"], 1.5)


def test_integer_arrays_take_max():
    aggregator = WeightedFedAvg()
    aggregator.add(_model(3.0), 100)
    aggregator.add(_model(7.0), 1)
    aggregator.add(_model(5.0), 1)
    assert aggregator.result()["bn.num_batches_tracked"] == 7


def test_bool_arrays_take_or():
    aggregator = WeightedFedAvg()
    aggregator.add({"mask": np.array([True, False, False])}, 1)
    aggregator.add({"mask": np.array([False, False, True])}, 1)
    np.testing.assert_array_equal(aggregator.result()["mask"], [True, False, True])


def test_no_input_references():
    model = _model(1.0)
    aggregator = WeightedFedAvg()
    aggregator.add(model, 1)
    model["w"][:] = 99.0
    aggregator.add(_model(3.0), 1)
    np.testing.assert_allclose(aggregator.result()["w"], 2.0)


def test_inputs_unchanged():
    first, second = _model(1.0), _model(3.0)
    aggregator = WeightedFedAvg()
    aggregator.add(first, 1)
    aggregator.add(second, 2)
    np.testing.assert_array_equal(first["w"], 1.0)
    np.testing.assert_array_equal(second["w"], 3.0)


def test_result_is_copy():
    aggregator = WeightedFedAvg()
    aggregator.add(_model(1.0, np.float64), 1)
    result = aggregator.result()
    result["w"][:] = 5.0
    np.testing.assert_array_equal(aggregator.result()["w"], 1.0)


def test_empty_raises():
    with pytest.raises(NoValidContributions, match="no contribution was added"):
        WeightedFedAvg().result()


def test_reset_clears():
    aggregator = WeightedFedAvg()
    aggregator.add(_model(1.0), 2)
    aggregator.reset()
    assert aggregator.count == 0
    assert aggregator.total_weight == 0.0
    with pytest.raises(NoValidContributions):
        aggregator.result()
    aggregator.add({"other": np.zeros(2)}, 1)
    assert set(aggregator.result()) == {"other"}


def test_huge_weights_no_overflow():
    aggregator = WeightedFedAvg()
    aggregator.add({"w": np.full(3, 1e30, dtype=np.float32)}, 1e30)
    aggregator.add({"w": np.full(3, 3e30, dtype=np.float32)}, 1e30)
    result = aggregator.result()["w"]
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, 2e30, rtol=1e-6)


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), True, "3", None])
def test_bad_weight(weight):
    aggregator = WeightedFedAvg()
    with pytest.raises(InvalidSetting, match="aggregation_weight"):
        aggregator.add(_model(1.0), weight)
    assert aggregator.count == 0


@pytest.mark.parametrize(
    ("second", "code", "fragment"),
    [
        ({"w": np.zeros((3, 4), np.float32)}, "missing_key", "lacks 2 key(s)"),
        ({**_model(1.0), "extra": np.zeros(1)}, "unexpected_key", "'extra'"),
        ({**_model(1.0), "w": np.zeros((4, 3), np.float32)}, "shape_mismatch", "expected (3, 4)"),
        ({**_model(1.0), "w": np.zeros((3, 4), np.float64)}, "dtype_mismatch", "expected float32"),
    ],
)
def test_bad_structure_leaves_state(second, code, fragment):
    aggregator = WeightedFedAvg()
    aggregator.add(_model(1.0), 1)
    with pytest.raises(ContributionRejected) as caught:
        aggregator.add(second, 5)
    assert caught.value.reason_code == code
    assert fragment in caught.value.detail
    assert aggregator.count == 1
    assert aggregator.total_weight == 1.0
    np.testing.assert_array_equal(aggregator.result()["w"], 1.0)


def test_object_dtype_rejected():
    with pytest.raises(ContributionRejected, match="dtype object") as caught:
        WeightedFedAvg().add({"w": np.array([None, 1])}, 1)
    assert caught.value.reason_code == "dtype_mismatch"


# Property tests. Finite, moderately sized values keep rounding errors far below the tolerances.
_values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
_weights = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False, allow_infinity=False)


@st.composite
def _contributions(draw, min_sites=1, max_sites=8):
    size = draw(st.integers(min_value=1, max_value=6))
    sites = draw(st.integers(min_value=min_sites, max_value=max_sites))
    params = [
        np.array(draw(st.lists(_values, min_size=size, max_size=size)), dtype=np.float32) for _ in range(sites)
    ]
    weights = draw(st.lists(_weights, min_size=sites, max_size=sites))
    return params, weights


def _aggregate(params, weights):
    return weighted_fedavg(({"x": p}, w) for p, w in zip(params, weights))["x"]


@settings(max_examples=60, deadline=None)
@given(_contributions(), st.randoms(use_true_random=False))
def test_prop_permutation_invariant(contributions, random):
    params, weights = contributions
    order = list(range(len(params)))
    random.shuffle(order)
    shuffled = _aggregate([params[i] for i in order], [weights[i] for i in order])
    np.testing.assert_allclose(shuffled, _aggregate(params, weights), rtol=1e-4, atol=1e-3)


@settings(max_examples=40, deadline=None)
@given(_contributions(max_sites=1))
def test_prop_single_site_exact(contributions):
    params, weights = contributions
    np.testing.assert_array_equal(_aggregate(params, weights), params[0])


@settings(max_examples=60, deadline=None)
@given(_contributions(), st.floats(min_value=1e-3, max_value=1e3))
def test_prop_weight_scale_invariant(contributions, scale):
    params, weights = contributions
    scaled = _aggregate(params, [w * scale for w in weights])
    np.testing.assert_allclose(scaled, _aggregate(params, weights), rtol=1e-4, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(_contributions())
def test_prop_within_min_max(contributions):
    params, weights = contributions
    result = _aggregate(params, weights)
    stacked = np.stack(params)
    slack = 1e-5 * np.maximum(1.0, np.abs(stacked).max(axis=0))
    assert (result >= stacked.min(axis=0) - slack).all()
    assert (result <= stacked.max(axis=0) + slack).all()


@settings(max_examples=60, deadline=None)
@given(_contributions(min_sites=2))
def test_prop_matches_float64_formula(contributions):
    params, weights = contributions
    stacked = np.stack(params).astype(np.float64)
    expected = (np.asarray(weights)[:, None] * stacked).sum(axis=0) / sum(weights)
    np.testing.assert_allclose(_aggregate(params, weights), expected, rtol=1e-4, atol=1e-3)


def test_read_only_input():
    first = np.arange(6, dtype=np.float32)
    second = np.full(6, 10.0, dtype=np.float32)
    second.setflags(write=False)
    result = weighted_fedavg([({"x": first}, 1.0), ({"x": second}, 1.0)])
    np.testing.assert_allclose(result["x"], (first + 10.0) / 2)


def test_non_contiguous_input():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    first = base[:, ::2]
    second = np.ascontiguousarray(base[:, 1::2])
    result = weighted_fedavg([({"x": first}, 3.0), ({"x": second}, 1.0)])
    np.testing.assert_allclose(result["x"], (3 * first + second) / 4)


def test_equal_weights_path():
    rng = np.random.default_rng(5)
    models = [rng.normal(size=70_001).astype(np.float32) for _ in range(5)]
    result = weighted_fedavg(({"x": model}, 7.0) for model in models)["x"]
    expected = np.mean(np.stack(models).astype(np.float64), axis=0)
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)


def test_dwarfing_weight_no_overflow():
    aggregator = WeightedFedAvg()
    aggregator.add({"w": np.full(3, 1.0, dtype=np.float32)}, 1.0)
    aggregator.add({"w": np.full(3, 3e30, dtype=np.float32)}, 1e30)
    aggregator.add({"w": np.full(3, 1e30, dtype=np.float32)}, 1e30)
    result = aggregator.result()["w"]
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, 2e30, rtol=1e-5)


def test_many_uneven_weights():
    rng = np.random.default_rng(3)
    models = [rng.normal(size=50) for _ in range(200)]
    weights = [10.0 ** rng.uniform(-3, 9) for _ in range(200)]
    expected = sum(w * m for m, w in zip(models, weights)) / sum(weights)
    result = weighted_fedavg(({"x": m}, w) for m, w in zip(models, weights))["x"]
    np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-12)


def test_complex_arrays():
    first = {"z": np.array([1 + 1j], np.complex64)}
    second = {"z": np.array([3 - 1j], np.complex64)}
    result = weighted_fedavg([(first, 1), (second, 3)])
    np.testing.assert_allclose(result["z"], [2.5 - 0.5j])
    assert result["z"].dtype == np.complex64


def test_big_endian_input():
    first = np.arange(4, dtype=">f4")
    second = np.full(4, 4.0, dtype=">f4")
    result = weighted_fedavg([({"x": first}, 1), ({"x": second}, 1)])
    np.testing.assert_allclose(result["x"], (np.arange(4) + 4) / 2)
    assert result["x"].dtype == np.dtype(">f4")


def test_float16_scaled_in_float32():
    first = np.full(4, 1000.0, dtype=np.float16)
    second = np.full(4, 1001.0, dtype=np.float16)
    aggregator = WeightedFedAvg()
    aggregator.add({"x": first}, 1.0)
    aggregator.add({"x": second}, 3.0)
    np.testing.assert_allclose(aggregator._buffers["x"], 1000.0 + 3 * 1001.0, rtol=1e-7)
    assert aggregator.result()["x"].dtype == np.float16


def test_read_only_input_no_warning():
    first = np.zeros(6, dtype=np.float32)
    second = np.ones(6, dtype=np.float32)
    second.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = weighted_fedavg([({"x": first}, 1.0), ({"x": second}, 3.0)])
    np.testing.assert_allclose(result["x"], 0.75)


@pytest.mark.parametrize("num_threads", [0, -1, 1.5, True, "2"])
def test_bad_num_threads(num_threads):
    with pytest.raises(InvalidSetting) as caught:
        WeightedFedAvg(num_threads=num_threads)
    assert "num_threads" in str(caught.value)


def test_thread_count_restored():
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    aggregator = WeightedFedAvg(num_threads=wanted)
    aggregator.add({"x": np.ones(8, dtype=np.float32)}, 1.0)
    aggregator.add({"x": np.full(8, 3.0, dtype=np.float32)}, 3.0)
    assert torch.get_num_threads() == before
    np.testing.assert_allclose(aggregator.result()["x"], 2.5)


def test_fold_within_error_bound():
    rng = np.random.default_rng(7)
    models = [rng.standard_normal(10_000).astype(np.float32) for _ in range(20)]
    weights = [float(w) for w in rng.uniform(1.0, 900.0, size=20)]
    result = weighted_fedavg(({"x": m}, w) for m, w in zip(models, weights))["x"].astype(np.float64)
    stacked = np.stack(models).astype(np.float64)
    column = np.asarray(weights)[:, None]
    exact = (column * stacked).sum(axis=0) / sum(weights)
    bound = (len(models) + 3) * 2.0**-24 * (column * np.abs(stacked)).sum(axis=0) / sum(weights)
    assert (np.abs(result - exact) <= bound).all()


def test_result_without_copy():
    rng = np.random.default_rng(11)
    models = [{"w": rng.normal(size=(4, 5)).astype(np.float32)} for _ in range(3)]
    weights = [2.0, 5.0, 1.0]
    copied = weighted_fedavg(zip(models, weights))["w"]
    aggregator = WeightedFedAvg()
    for model, weight in zip(models, weights):
        aggregator.add(model, weight)
    handed_over = aggregator.result(copy=False)["w"]
    np.testing.assert_allclose(handed_over, copied, rtol=1e-6)
    assert handed_over.dtype == np.float32
    assert aggregator.count == 3


def test_released_sum_blocks_reuse():
    aggregator = WeightedFedAvg()
    aggregator.add({"w": np.ones(3, dtype=np.float32)}, 1.0)
    aggregator.add({"w": np.full(3, 3.0, dtype=np.float32)}, 1.0)
    handed_over = aggregator.result(copy=False)["w"]
    with pytest.raises(InvalidSetting, match="call reset"):
        aggregator.add({"w": np.ones(3, dtype=np.float32)}, 1.0)
    with pytest.raises(InvalidSetting, match="call reset"):
        aggregator.result()
    aggregator.reset()
    aggregator.add({"w": np.full(3, 7.0, dtype=np.float32)}, 1.0)
    aggregator.add({"w": np.full(3, 9.0, dtype=np.float32)}, 1.0)
    np.testing.assert_allclose(aggregator.result()["w"], 8.0)
    np.testing.assert_allclose(handed_over, 2.0)
