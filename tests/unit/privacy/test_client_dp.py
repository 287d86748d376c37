"""Tests for DP-FedAvg: clipping, the fixed-denominator estimator, Gaussian noise and its config."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from app_custom.core.privacy.client_dp import (
    ClientDPConfig,
    add_gaussian_noise,
    clip_update,
    noise_std,
    sum_clipped_updates,
)
from app_custom.core.privacy.errors import InvalidPrivacyInput, InvalidPrivacySetting

VALID = {"clip_norm": 1.0, "noise_multiplier": 1.0, "sample_rate": 1.0, "target_delta": 1e-5}


def _norm(update: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(array, dtype=np.float64))) for array in update.values()))


# --- clipping -------------------------------------------------------------------------------------------------


def test_clip_uses_global_norm():
    update = {"w": np.array([3.0, 0.0]), "b": np.array([4.0])}
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(5.0)
    assert _norm(clipped) <= 1.0
    assert _norm(clipped) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.0], rtol=1e-5)
    np.testing.assert_allclose(clipped["b"], [0.8], rtol=1e-5)


def test_clip_small_update_unchanged():
    update = {"w": np.array([0.3, 0.4], dtype=np.float32)}
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped["w"], update["w"])
    assert clipped["w"] is not update["w"]


def test_clip_leaves_input():
    update = {"w": np.full(4, 10.0)}
    clip_update(update, 1.0)
    np.testing.assert_array_equal(update["w"], np.full(4, 10.0))


@settings(max_examples=60, deadline=None)
@given(
    first=arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e4, 1e4, width=32)),
    second=arrays(np.float32, (3, 4), elements=st.floats(-1e4, 1e4, width=32)),
    clip_norm=st.floats(1e-3, 1e3),
)
def test_clip_norm_bound_property(first, second, clip_norm):
    clipped, _ = clip_update({"a": first, "b": second}, clip_norm)
    assert clipped["a"].dtype == np.float32
    assert _norm(clipped) <= clip_norm


@pytest.mark.parametrize(
    ("clip_norm", "fragment"),
    [(0.0, "clip_norm=0.0"), (-1.0, "clip_norm=-1.0"), (math.nan, "clip_norm=nan"), (math.inf, "clip_norm=inf")],
)
def test_clip_bad_norm(clip_norm, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        clip_update({"w": np.ones(2)}, clip_norm)


@pytest.mark.parametrize(
    ("update", "fragment"),
    [
        ({"w": np.array([1.0, np.nan])}, "update\\['w'\\] contains NaN"),
        ({"w": np.array([np.inf])}, "update\\['w'\\] contains NaN or infinity"),
        ({"n": np.array([3], dtype=np.int64)}, "dtype int64"),
        ({"w": [1.0, 2.0]}, "is list, expected a numpy array"),
        ({}, "non-empty mapping"),
    ],
)
def test_clip_bad_update(update, fragment):
    with pytest.raises(InvalidPrivacyInput, match=fragment):
        clip_update(update, 1.0)


# --- estimator and noise --------------------------------------------------------------------------------------


def test_fixed_denominator_not_count():
    updates = [{"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 4.0])}]
    # Four sites were expected (q * W = 4); two reported. The denominator stays 4.
    total = sum_clipped_updates(updates, 4.0)
    np.testing.assert_allclose(total["w"], [1.0, 1.5])


def test_estimator_sensitivity():
    rng = np.random.default_rng(0)
    clipped = [clip_update({"w": rng.normal(size=10) * 5}, 1.0)[0] for _ in range(5)]
    with_all = sum_clipped_updates(clipped, 5.0)
    without_one = sum_clipped_updates(clipped[1:], 5.0)
    assert _norm({"w": with_all["w"] - without_one["w"]}) <= 1.0 / 5.0 + 1e-12


def test_estimator_mismatch_raises():
    with pytest.raises(InvalidPrivacyInput, match="clipped_updates\\[1\\] differs"):
        sum_clipped_updates([{"w": np.ones(2)}, {"w": np.ones(3)}], 2.0)
    with pytest.raises(InvalidPrivacyInput, match="clipped_updates\\[1\\] differs"):
        sum_clipped_updates([{"w": np.ones(2)}, {"v": np.ones(2)}], 2.0)


def test_estimator_no_sites():
    assert sum_clipped_updates([], 3.0) == {}


def test_noise_std_formula():
    assert noise_std(1.2, 0.5, 4.0) == pytest.approx(1.2 * 0.5 / 4.0)


def test_noise_matches_sigma():
    aggregate = {"w": np.full(200_000, 0.25)}
    noised = add_gaussian_noise(aggregate, 2.0, 0.5, 10.0, np.random.default_rng(0))
    sigma = 2.0 * 0.5 / 10.0
    assert float(np.std(noised["w"])) == pytest.approx(sigma, rel=0.01)
    assert float(np.mean(noised["w"])) == pytest.approx(0.25, abs=3 * sigma / math.sqrt(200_000))


def test_noise_keeps_dtype_and_input():
    aggregate = {"w": np.zeros((3, 2), dtype=np.float32)}
    noised = add_gaussian_noise(aggregate, 1.0, 1.0, 2.0, np.random.default_rng(1))
    assert noised["w"].dtype == np.float32
    assert noised["w"].shape == (3, 2)
    assert np.all(aggregate["w"] == 0)
    assert np.any(noised["w"] != 0)


def test_noise_seeded_repeatable():
    aggregate = {"w": np.zeros(5)}
    first = add_gaussian_noise(aggregate, 1.0, 1.0, 2.0, np.random.default_rng(7))
    second = add_gaussian_noise(aggregate, 1.0, 1.0, 2.0, np.random.default_rng(7))
    np.testing.assert_array_equal(first["w"], second["w"])


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ((0.0, 1.0, 2.0), "noise_multiplier=0.0"),
        ((math.nan, 1.0, 2.0), "noise_multiplier=nan"),
        ((-1.0, 1.0, 2.0), "noise_multiplier=-1.0"),
        ((1.0, math.inf, 2.0), "clip_norm=inf"),
        ((1.0, 1.0, 0.0), "num_sampled_sites=0.0"),
        ((1.0, 1.0, -3.0), "num_sampled_sites=-3.0"),
    ],
)
def test_noise_bad_settings(arguments, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        add_gaussian_noise({"w": np.zeros(2)}, *arguments, rng=np.random.default_rng(0))


def test_noise_bad_aggregate():
    with pytest.raises(InvalidPrivacyInput, match="aggregate\\['w'\\] contains NaN"):
        add_gaussian_noise({"w": np.array([np.nan])}, 1.0, 1.0, 2.0, np.random.default_rng(0))


def test_noise_bad_rng():
    with pytest.raises(InvalidPrivacySetting, match="expected a numpy.random.Generator"):
        add_gaussian_noise({"w": np.zeros(2)}, 1.0, 1.0, 2.0, rng=42)  # type: ignore[arg-type]


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"clip_norm": math.nan}, "clip_norm=nan"),
        ({"clip_norm": math.inf}, "clip_norm=inf"),
        ({"clip_norm": 0.0}, "clip_norm=0.0"),
        ({"clip_norm": -1.0}, "clip_norm=-1.0"),
        ({"noise_multiplier": 0.0}, "noise_multiplier=0.0"),
        ({"noise_multiplier": math.nan}, "noise_multiplier=nan"),
        ({"noise_multiplier": -0.1}, "noise_multiplier=-0.1"),
        ({"noise_multiplier": True}, "noise_multiplier=True"),
        ({"sample_rate": 0.0}, "sample_rate=0.0"),
        ({"sample_rate": 1.5}, "sample_rate=1.5"),
        ({"target_delta": 1.0}, "target_delta=1.0"),
        ({"target_delta": 0.0}, "target_delta=0.0"),
        ({"sigma": 1.0}, "sigma=1.0: Extra inputs are not permitted"),
    ],
)
def test_config_rejects(change, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        ClientDPConfig(**{**VALID, **change})


def test_config_missing_field():
    with pytest.raises(InvalidPrivacySetting, match="noise_multiplier is missing"):
        ClientDPConfig(clip_norm=1.0, target_delta=1e-5)


def test_config_delta_against_sites():
    config = ClientDPConfig(**{**VALID, "target_delta": 0.2})
    with pytest.raises(InvalidPrivacySetting, match="below 1/num_sites = 0.2 for 5 sites"):
        config.check_num_sites(5)
    with pytest.raises(InvalidPrivacySetting, match="num_sites=0"):
        config.check_num_sites(0)


def test_config_expected_sites():
    config = ClientDPConfig(**{**VALID, "sample_rate": 0.5})
    assert config.expected_num_sites(10) == 5.0
