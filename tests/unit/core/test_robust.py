"""Tests for update clipping, trimmed mean and coordinate-wise median."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app_custom.core.errors import ContributionRejected, InvalidSetting, NoValidContributions
from app_custom.core.robust import clip_update, coordinate_median, trimmed_mean
from app_custom.core.validation import update_l2_norm


def _sites(*values: float) -> list[dict[str, np.ndarray]]:
    return [{"w": np.full(3, v, dtype=np.float32), "n": np.array(int(v), dtype=np.int64)} for v in values]


def test_clip_scales_to_bound():
    global_params = {"w": np.zeros(2, np.float32), "n": np.array(1)}
    params = {"w": np.array([3.0, 4.0], np.float32), "n": np.array(9)}
    clipped, norm = clip_update(params, global_params, 1.0)
    assert norm == pytest.approx(5.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
    assert clipped["w"].dtype == np.float32
    assert clipped["n"] == 9
    assert update_l2_norm(clipped, global_params) == pytest.approx(1.0, rel=1e-6)


def test_clip_below_bound_unchanged():
    global_params = {"w": np.ones(2)}
    params = {"w": np.array([1.5, 1.0])}
    clipped, norm = clip_update(params, global_params, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped["w"], params["w"])
    assert clipped["w"] is not params["w"]


def test_clip_relative_to_global():
    global_params = {"w": np.array([10.0, 10.0])}
    params = {"w": np.array([13.0, 14.0])}
    clipped, _ = clip_update(params, global_params, 2.5)
    np.testing.assert_allclose(clipped["w"], [11.5, 12.0])


@pytest.mark.parametrize("bound", [0, -1.0, math.inf, math.nan, None])
def test_clip_bad_bound(bound):
    with pytest.raises(InvalidSetting, match="max_update_norm is"):
        clip_update({"w": np.zeros(1)}, {"w": np.zeros(1)}, bound)


def test_clip_shape_mismatch():
    with pytest.raises(ContributionRejected, match=r"expected \(2,\)") as caught:
        clip_update({"w": np.zeros(3)}, {"w": np.zeros(2)}, 1.0)
    assert caught.value.reason_code == "shape_mismatch"


def test_clip_missing_key():
    with pytest.raises(ContributionRejected, match="lacks key") as caught:
        clip_update({"w": np.zeros(2)}, {"w": np.zeros(2), "b": np.zeros(1)}, 1.0)
    assert caught.value.reason_code == "missing_key"


def test_trimmed_mean_drops_outliers():
    result = trimmed_mean(_sites(1.0, 2.0, 3.0, 4.0, 1000.0), 0.2)
    np.testing.assert_allclose(result["w"], 3.0)
    assert result["w"].dtype == np.float32
    assert result["n"] == 3
    assert result["n"].dtype == np.int64


def test_trimmed_mean_zero_is_mean():
    result = trimmed_mean(_sites(1.0, 2.0, 6.0), 0.0)
    np.testing.assert_allclose(result["w"], 3.0)


def test_trimmed_mean_too_few():
    with pytest.raises(InvalidSetting, match="wait for at least 5 contributions"):
        trimmed_mean(_sites(1.0, 2.0, 3.0), 0.2)


@pytest.mark.parametrize("fraction", [-0.1, 0.5, 0.7, math.nan, True, "0.1"])
def test_trimmed_mean_bad_fraction(fraction):
    with pytest.raises(InvalidSetting, match="trim_fraction is"):
        trimmed_mean(_sites(1.0, 2.0), fraction)


def test_trimmed_mean_empty():
    with pytest.raises(NoValidContributions, match="no contributions"):
        trimmed_mean([], 0.1)


def test_median_odd_and_even():
    np.testing.assert_allclose(coordinate_median(_sites(1.0, 5.0, 100.0))["w"], 5.0)
    np.testing.assert_allclose(coordinate_median(_sites(1.0, 5.0, 7.0, 100.0))["w"], 6.0)


def test_median_dtype_mismatch():
    sites = _sites(1.0, 2.0)
    sites[1]["w"] = sites[1]["w"].astype(np.float64)
    with pytest.raises(ContributionRejected, match=r"contribution 1\['w'\] has dtype float64") as caught:
        coordinate_median(sites)
    assert caught.value.reason_code == "dtype_mismatch"


def test_median_unexpected_key():
    sites = _sites(1.0, 2.0)
    sites[1]["extra"] = np.zeros(1)
    with pytest.raises(ContributionRejected, match="'extra'") as caught:
        coordinate_median(sites)
    assert caught.value.reason_code == "unexpected_key"


def test_median_empty():
    with pytest.raises(NoValidContributions):
        coordinate_median([])


_matrix = st.integers(min_value=1, max_value=9).flatmap(
    lambda sites: st.lists(
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=4, max_size=4), min_size=sites, max_size=sites
    )
)


def _as_sites(rows):
    return [{"x": np.array(row, dtype=np.float32)} for row in rows]


@settings(max_examples=60, deadline=None)
@given(_matrix, st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]))
def test_prop_trimmed_within_range(rows, fraction):
    if fraction > 0 and math.floor(fraction * len(rows)) == 0:
        return
    stacked = np.array(rows, dtype=np.float32)
    result = trimmed_mean(_as_sites(rows), fraction)["x"]
    assert (result >= stacked.min(axis=0) - 1e-3).all()
    assert (result <= stacked.max(axis=0) + 1e-3).all()


@settings(max_examples=60, deadline=None)
@given(_matrix, st.randoms(use_true_random=False))
def test_prop_median_permutation(rows, random):
    shuffled = list(rows)
    random.shuffle(shuffled)
    np.testing.assert_array_equal(
        coordinate_median(_as_sites(shuffled))["x"], coordinate_median(_as_sites(rows))["x"]
    )


@settings(max_examples=40, deadline=None)
@given(_matrix)
def test_prop_median_single_site(rows):
    np.testing.assert_array_equal(coordinate_median(_as_sites(rows[:1]))["x"], np.array(rows[0], np.float32))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=3, max_value=9), st.floats(-10, 10), st.floats(1e6, 1e9))
def test_prop_median_resists_minority(honest_count, honest_value, attack_value):
    # A minority of arbitrary values cannot pull the median outside the honest range.
    attackers = (honest_count - 1) // 2
    rows = [[honest_value] * 4] * honest_count + [[attack_value] * 4] * attackers
    result = coordinate_median(_as_sites(rows))["x"]
    np.testing.assert_allclose(result, np.float32(honest_value), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=1, max_size=8),
    st.lists(st.floats(-100, 100), min_size=1, max_size=8),
    st.floats(1e-3, 1e3),
)
def test_prop_clip_norm_bounded(update, start, bound):
    size = min(len(update), len(start))
    global_params = {"w": np.array(start[:size])}
    params = {"w": np.array(start[:size]) + np.array(update[:size])}
    clipped, _ = clip_update(params, global_params, bound)
    assert update_l2_norm(clipped, global_params) <= bound * (1 + 1e-9) + 1e-12
