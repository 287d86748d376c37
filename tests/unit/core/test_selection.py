"""Tests for loss-weighted selection (Fed-Focal) and category-coverage selection (CatFedAvg)."""

import math

import pytest

from app_custom.core.errors import InvalidSetting
from app_custom.core.selection import (
    catfedavg_upload_bytes,
    loss_weighted_aggregation_weights,
    select_by_category_coverage,
)

_EXAMPLES = {"a": 100.0, "b": 300.0, "c": 600.0}
_LOSSES = {"a": 2.0, "b": 0.5, "c": 1.0}


def test_beta_zero_is_fedavg():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, _LOSSES)
    assert weights == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})


def test_beta_one_weights_by_loss():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, _LOSSES, beta=1.0)
    raw = {"a": 200.0, "b": 150.0, "c": 600.0}
    total = sum(raw.values())
    assert weights == pytest.approx({site: value / total for site, value in raw.items()})


def test_top_fraction_keeps_highest_loss():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, _LOSSES, top_fraction=0.5)
    assert set(weights) == {"a", "c"}
    assert weights == pytest.approx({"a": 100 / 700, "c": 600 / 700})


def test_top_fraction_keeps_one():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, _LOSSES, top_fraction=0.01)
    assert weights == {"a": 1.0}


def test_large_beta_no_overflow():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, {"a": 1e300, "b": 1.0, "c": 1.0}, beta=50.0)
    assert weights["a"] == pytest.approx(1.0)
    assert all(math.isfinite(value) for value in weights.values())


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"beta": math.nan}, "beta is nan"),
        ({"top_fraction": 0.0}, "top_fraction is 0.0"),
        ({"top_fraction": 1.5}, "top_fraction is 1.5"),
        ({"local_losses": {"a": 1.0, "b": -1.0, "c": 1.0}}, "local_losses['b'] is -1.0"),
        ({"local_losses": {"a": 1.0, "b": 0.0, "c": 1.0}, "beta": 1.0}, "greater than zero when beta is not 0"),
        ({"local_losses": {"a": 1.0, "b": 1.0}}, "only in num_examples: ['c']"),
        ({"num_examples": {"a": 0.0, "b": 1.0, "c": 1.0}}, "num_examples['a'] is 0.0"),
        ({"num_examples": {}, "local_losses": {}}, "num_examples is empty"),
    ],
)
def test_loss_weights_bad_input(kwargs, fragment):
    arguments = {"num_examples": _EXAMPLES, "local_losses": _LOSSES, **kwargs}
    with pytest.raises(InvalidSetting) as caught:
        loss_weighted_aggregation_weights(**arguments)
    assert fragment in str(caught.value)


def test_zero_loss_allowed_beta_zero():
    weights = loss_weighted_aggregation_weights(_EXAMPLES, {"a": 0.0, "b": 0.0, "c": 0.0})
    assert weights["c"] == pytest.approx(0.6)


_HISTOGRAMS = {
    "s1": [50, 50, 0, 0, 0],
    "s2": [0, 0, 40, 40, 0],
    "s3": [10, 0, 0, 0, 5],
    "s4": [30, 30, 30, 0, 0],
    "s5": [0, 0, 0, 0, 0],
}


def test_full_coverage_covers_all():
    selected = select_by_category_coverage(_HISTOGRAMS, variant="full_coverage")
    covered = {c for site in selected for c, count in enumerate(_HISTOGRAMS[site]) if count}
    assert covered == {0, 1, 2, 3, 4}
    assert len(selected) == 3
    assert selected[0] == "s4"


def test_full_coverage_greedy_order():
    # s4 covers 3 classes, then s2 adds class 3 and s3 adds class 4 (one new class each).
    assert select_by_category_coverage(_HISTOGRAMS, variant="full_coverage") == ["s4", "s2", "s3"]


def test_budget_limits_count():
    selected = select_by_category_coverage(_HISTOGRAMS, variant="budget", budget=2)
    assert len(selected) == 2
    assert selected[0] == "s4"


def test_budget_fills_after_coverage():
    selected = select_by_category_coverage(_HISTOGRAMS, variant="budget", budget=4)
    assert selected[:3] == ["s4", "s2", "s3"]
    assert selected[3] == "s1"


def test_budget_above_site_count():
    selected = select_by_category_coverage(_HISTOGRAMS, variant="budget", budget=50)
    assert sorted(selected) == sorted(_HISTOGRAMS)


def test_min_count_needs_more_sites():
    selected = select_by_category_coverage(_HISTOGRAMS, variant="full_coverage", min_count=60)
    totals = [sum(_HISTOGRAMS[site][c] for site in selected) for c in range(5)]
    all_totals = [sum(row[c] for row in _HISTOGRAMS.values()) for c in range(5)]
    for c in range(5):
        assert totals[c] >= min(60, all_totals[c])


def test_rare_classes_break_ties():
    histograms = {"big": [100, 0], "rare": [0, 3], "other": [0, 50]}
    # After "big", both "rare" and "other" cover class 1; "other" has more examples of the still-rare class.
    assert select_by_category_coverage(histograms, variant="full_coverage") == ["big", "other"]


def test_seed_breaks_exact_ties():
    histograms = {f"s{i}": [5, 5] for i in range(8)}
    firsts = {select_by_category_coverage(histograms, variant="budget", budget=1, seed=seed)[0] for seed in range(20)}
    assert len(firsts) > 1
    for seed in range(5):
        first_run = select_by_category_coverage(histograms, variant="budget", budget=3, seed=seed)
        assert select_by_category_coverage(histograms, variant="budget", budget=3, seed=seed) == first_run


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"variant": "greedy"}, "variant is 'greedy'"),
        ({"variant": "budget"}, "budget is None"),
        ({"variant": "budget", "budget": 0}, "budget is 0"),
        ({"variant": "full_coverage", "budget": 3}, "pass budget=None"),
        ({"variant": "full_coverage", "min_count": 0}, "min_count is 0"),
        ({"variant": "full_coverage", "class_counts": {}}, "class_counts is empty"),
        ({"variant": "full_coverage", "class_counts": {"a": [1, 2], "b": [1]}}, "has 1 classes; expected 2"),
        ({"variant": "full_coverage", "class_counts": {"a": [1, -2]}}, "expected counts >= 0"),
        ({"variant": "full_coverage", "class_counts": {"a": [1.5, 2]}}, "expected integer counts"),
    ],
)
def test_coverage_bad_input(kwargs, fragment):
    arguments = {"class_counts": _HISTOGRAMS, **kwargs}
    with pytest.raises(InvalidSetting) as caught:
        select_by_category_coverage(**arguments)
    assert fragment in str(caught.value)


def test_upload_bytes():
    assert catfedavg_upload_bytes(num_selected=3, num_sites=10, num_params=1000, num_classes=10) == (3000 + 100) * 4


def test_upload_bytes_bad():
    with pytest.raises(InvalidSetting, match="expected at most num_sites"):
        catfedavg_upload_bytes(num_selected=11, num_sites=10, num_params=1, num_classes=1)
