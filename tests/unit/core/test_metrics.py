"""Tests for binary metrics and the weighted mean of defined values."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss, roc_auc_score

from app_custom.core.errors import InvalidSetting
from app_custom.core.metrics import binary_metrics, weighted_mean_defined


def test_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = (rng.random(200) < 0.2).astype(int)
    y_score = np.clip(0.3 * y_true + rng.random(200) * 0.7, 0, 1)
    metrics = binary_metrics(y_true, y_score)
    predicted = (y_score >= 0.5).astype(int)
    assert metrics["loss"] == pytest.approx(log_loss(y_true, y_score))
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == y_true))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y_true, y_score))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, predicted))
    assert metrics["minority_class"] == 1
    assert metrics["minority_f1"] == pytest.approx(f1_score(y_true, predicted, pos_label=1))
    assert metrics["num_examples"] == 200
    assert metrics["positive_rate"] == pytest.approx(y_true.mean())


def test_minority_is_negative_class():
    y_true = [1, 1, 1, 0]
    y_score = [0.9, 0.8, 0.2, 0.1]
    metrics = binary_metrics(y_true, y_score)
    assert metrics["minority_class"] == 0
    assert metrics["minority_f1"] == pytest.approx(f1_score(y_true, [1, 1, 0, 0], pos_label=0))


def test_one_class_auc_none():
    metrics = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert metrics["roc_auc"] is None
    assert metrics["balanced_accuracy"] == pytest.approx(2 / 3)
    assert metrics["minority_class"] == 1
    assert metrics["minority_f1"] == 0.0


def test_one_class_f1_undefined():
    metrics = binary_metrics([0, 0], [0.1, 0.2])
    assert metrics["roc_auc"] is None
    assert metrics["minority_f1"] is None
    assert not any(isinstance(value, float) and math.isnan(value) for value in metrics.values())


def test_confident_wrong_loss_finite():
    metrics = binary_metrics([1, 0], [0.0, 1.0])
    assert math.isfinite(metrics["loss"])
    assert metrics["loss"] > 30


def test_threshold_applies():
    assert binary_metrics([1, 0], [0.6, 0.4], threshold=0.7)["accuracy"] == 0.5


@pytest.mark.parametrize(
    ("y_true", "y_score", "kwargs", "fragment"),
    [
        ([], [], {}, "y_true is empty"),
        ([0, 1], [0.5], {}, "y_true has 2 values but y_score has 1"),
        ([0, 2], [0.5, 0.5], {}, "y_true contains labels [2]"),
        ([0, 1], [0.5, 1.5], {}, "apply a sigmoid to logits first"),
        ([0, 1], [0.5, math.nan], {}, "non-finite"),
        ([0, 1], [0.5, 0.5], {"threshold": 1.0}, "threshold is 1.0"),
        ([[0, 1]], [[0.5, 0.5]], {}, "expected 1-D"),
    ],
)
def test_bad_input(y_true, y_score, kwargs, fragment):
    with pytest.raises(InvalidSetting) as caught:
        binary_metrics(y_true, y_score, **kwargs)
    assert fragment in str(caught.value)


def test_weighted_mean_skips_undefined():
    assert weighted_mean_defined([(0.8, 100), (None, 50), (math.nan, 10), (0.6, 300)]) == pytest.approx(0.65)


def test_weighted_mean_all_undefined():
    assert weighted_mean_defined([(None, 1), (math.nan, 2)]) is None
    assert weighted_mean_defined([]) is None


def test_weighted_mean_zero_weight():
    assert weighted_mean_defined([(0.5, 0)]) is None


@pytest.mark.parametrize("weight", [-1, math.inf, math.nan, None])
def test_weighted_mean_bad_weight(weight):
    with pytest.raises(InvalidSetting, match="weight is"):
        weighted_mean_defined([(0.5, weight)])
