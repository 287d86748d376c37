"""Tests for contribution checks."""

import math

import numpy as np
import pytest

from app_custom.core.errors import ContributionRejected, InvalidSetting
from app_custom.core.validation import check_contribution, check_num_examples, update_l2_norm


def _global() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros((2, 3), dtype=np.float32),
        "b": np.zeros(3, dtype=np.float32),
        "bn.num_batches_tracked": np.array(10, dtype=np.int64),
    }


def _reject(params, **kwargs) -> ContributionRejected:
    kwargs.setdefault("global_params", _global())
    kwargs.setdefault("num_examples", 10)
    with pytest.raises(ContributionRejected) as caught:
        check_contribution(params, **kwargs)
    return caught.value


def test_valid_passes():
    params = _global()
    params["w"] = params["w"] + 0.5
    check_contribution(params, global_params=_global(), num_examples=5, max_update_norm=10.0)


def test_valid_without_global():
    check_contribution(_global(), global_params=None, num_examples=1.5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite(value):
    params = _global()
    params["w"][1, 2] = value
    error = _reject(params)
    assert error.reason_code == "non_finite"
    assert error.key == "w"
    assert "params['w'] contains 1 non-finite value(s)" in error.detail
    assert "at index (1, 2)" in error.detail
    assert "expected only finite values" in error.detail


def test_non_finite_without_global():
    params = _global()
    params["b"][0] = np.nan
    error = _reject(params, global_params=None)
    assert error.reason_code == "non_finite"
    assert "params['b']" in error.detail


def test_non_finite_large_array():
    big = np.zeros(300_000, dtype=np.float32)
    big[250_000] = np.inf
    big[299_999] = np.nan
    error = _reject({"x": big}, global_params=None)
    assert error.reason_code == "non_finite"
    assert "contains 2 non-finite" in error.detail
    assert "first inf at index (250000,)" in error.detail


def test_shape_mismatch():
    params = _global()
    params["w"] = np.zeros((3, 2), dtype=np.float32)
    error = _reject(params)
    assert error.reason_code == "shape_mismatch"
    assert error.key == "w"
    assert "shape (3, 2); expected (2, 3)" in error.detail


def test_dtype_mismatch():
    params = _global()
    params["b"] = np.zeros(3, dtype=np.float64)
    error = _reject(params)
    assert error.reason_code == "dtype_mismatch"
    assert "dtype float64; expected float32" in error.detail


def test_dtype_object_without_global():
    error = _reject({"w": np.array(["a", "b"])}, global_params=None)
    assert error.reason_code == "dtype_mismatch"
    assert "expected a boolean, integer or floating-point array" in error.detail


def test_missing_key():
    params = _global()
    del params["b"]
    error = _reject(params)
    assert error.reason_code == "missing_key"
    assert error.key == "b"
    assert "lacks 1 key(s)" in error.detail


def test_unexpected_key():
    params = {**_global(), "head.weight": np.zeros(2, dtype=np.float32)}
    error = _reject(params)
    assert error.reason_code == "unexpected_key"
    assert error.key == "head.weight"
    assert "'head.weight'" in error.detail


@pytest.mark.parametrize(
    ("num_examples", "fragment"),
    [
        (None, "num_examples is missing"),
        (0, "num_examples is 0;"),
        (-3, "num_examples is -3;"),
        (float("nan"), "num_examples is nan;"),
        (float("inf"), "num_examples is inf;"),
        (True, "of type bool"),
        ("12", "of type str"),
    ],
)
def test_bad_num_examples(num_examples, fragment):
    error = _reject(_global(), num_examples=num_examples)
    assert error.reason_code == "bad_num_examples"
    assert fragment in error.detail


def test_num_examples_numpy_ok():
    assert check_num_examples(np.int64(7)) == 7.0
    assert check_num_examples(np.float32(2.5)) == 2.5


def test_norm_exceeded():
    params = _global()
    params["w"] = np.full((2, 3), 1.0, dtype=np.float32)
    params["bn.num_batches_tracked"] = np.array(10_000, dtype=np.int64)
    error = _reject(params, max_update_norm=2.0)
    assert error.reason_code == "norm_exceeded"
    assert "is 2.44949; expected at most 2" in error.detail


def test_norm_at_limit_passes():
    params = _global()
    params["b"] = np.array([3.0, 4.0, 0.0], dtype=np.float32)
    check_contribution(params, global_params=_global(), num_examples=1, max_update_norm=5.0)


def test_norm_ignores_integers():
    params = _global()
    params["bn.num_batches_tracked"] = np.array(10**9, dtype=np.int64)
    assert update_l2_norm(params, _global()) == 0.0


def test_norm_large_array():
    rng = np.random.default_rng(0)
    a = rng.normal(size=150_001).astype(np.float32)
    b = rng.normal(size=150_001).astype(np.float32)
    expected = math.sqrt(float(np.sum((a.astype(np.float64) - b) ** 2)))
    assert update_l2_norm({"x": a}, {"x": b}) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("bound", [0.0, -1.0, float("nan"), float("inf"), True])
def test_bad_max_update_norm(bound):
    with pytest.raises(InvalidSetting, match="max_update_norm is"):
        check_contribution(_global(), global_params=_global(), num_examples=1, max_update_norm=bound)


def test_norm_needs_global():
    with pytest.raises(InvalidSetting, match="global_params is None"):
        check_contribution(_global(), global_params=None, num_examples=1, max_update_norm=1.0)


def test_structure_checked_before_values():
    params = _global()
    params["w"] = np.full((3, 3), np.nan, dtype=np.float32)
    assert _reject(params).reason_code == "shape_mismatch"
