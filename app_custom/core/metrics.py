"""Evaluation metrics for binary classifiers on imbalanced data, and their weighted mean across sites.

A metric that is undefined on the data at hand is ``None``, never NaN, so JSON reports and site averages stay well
defined. Examples are ROC AUC when only one class is present, and F1 of a class that is neither present nor predicted.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
from sklearn.metrics import roc_auc_score

from app_custom.core.errors import InvalidSetting

__all__ = ["binary_metrics", "weighted_mean_defined"]

# Probabilities are clipped to [_EPS, 1 - _EPS] for the log loss, so a confident wrong prediction costs a large
# finite loss instead of infinity.
_EPS = 1e-15


def binary_metrics(
    y_true: Iterable[int], y_score: Iterable[float], threshold: float = 0.5
) -> dict[str, float | int | None]:
    """Return loss, accuracy, ROC AUC, balanced accuracy and minority-class F1 for binary predictions.

    Args:
        y_true: Labels in {0, 1}.
        y_score: Predicted probabilities of class 1, in [0, 1]; the same length as ``y_true``.
        threshold: Scores at or above it predict class 1; in (0, 1).

    Returns:
        A dict with keys:
            ``num_examples``;
            ``loss``: mean binary cross-entropy (log loss);
            ``accuracy``;
            ``roc_auc``: None when ``y_true`` contains a single class;
            ``balanced_accuracy``: the mean recall over the classes present in ``y_true``;
            ``minority_class``: the class with fewer examples in ``y_true`` (1 on a tie);
            ``minority_f1``: F1 of the minority class, None when it is neither present nor predicted;
            ``positive_rate``: the fraction of examples labelled 1.

    Raises:
        InvalidSetting: If the inputs are empty, of different lengths, or hold labels outside {0, 1}, scores
            outside [0, 1] or non-finite scores, or if ``threshold`` is outside (0, 1).
    """
    labels = np.asarray(list(y_true) if not isinstance(y_true, np.ndarray) else y_true)
    scores = np.asarray(list(y_score) if not isinstance(y_score, np.ndarray) else y_score, dtype=np.float64)
    _check_inputs(labels, scores, threshold)
    positive = labels.astype(bool)
    predicted = scores >= threshold

    clipped = np.clip(scores, _EPS, 1.0 - _EPS)
    loss = float(-np.mean(np.where(positive, np.log(clipped), np.log1p(-clipped))))
    accuracy = float(np.mean(predicted == positive))

    num_positive = int(positive.sum())
    num_negative = int(positive.size - num_positive)
    roc_auc = float(roc_auc_score(positive, scores)) if num_positive and num_negative else None

    recalls = []
    if num_positive:
        recalls.append(float(np.mean(predicted[positive])))
    if num_negative:
        recalls.append(float(np.mean(~predicted[~positive])))
    balanced_accuracy = float(np.mean(recalls))

    minority_class = 1 if num_positive <= num_negative else 0
    is_minority = positive if minority_class == 1 else ~positive
    predicted_minority = predicted if minority_class == 1 else ~predicted
    true_positives = int(np.sum(is_minority & predicted_minority))
    false_positives = int(np.sum(~is_minority & predicted_minority))
    false_negatives = int(np.sum(is_minority & ~predicted_minority))
    denominator = 2 * true_positives + false_positives + false_negatives
    minority_f1 = 2 * true_positives / denominator if denominator else None

    return {
        "num_examples": int(labels.size),
        "loss": loss,
        "accuracy": accuracy,
        "roc_auc": roc_auc,
        "balanced_accuracy": balanced_accuracy,
        "minority_class": minority_class,
        "minority_f1": minority_f1,
        "positive_rate": num_positive / labels.size,
    }


def weighted_mean_defined(values_and_weights: Iterable[tuple[float | None, float]]) -> float | None:
    """Return the weighted mean of the defined values, skipping None and NaN, or None if none is defined.

    Typical use: average a per-site metric with each site's ``num_examples`` as weight, where some sites cannot
    compute it (ROC AUC at a site with one class).

    Raises:
        InvalidSetting: If a weight is negative, not finite or not a number.
    """
    total = 0.0
    total_weight = 0.0
    for value, weight in values_and_weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight) or weight < 0:
            raise InvalidSetting(f"weight is {weight!r}; expected a finite number >= 0")
        if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
            continue
        total += float(value) * float(weight)
        total_weight += float(weight)
    if total_weight == 0.0:
        return None
    return total / total_weight


def _check_inputs(labels: np.ndarray, scores: np.ndarray, threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < threshold < 1.0:
        raise InvalidSetting(f"threshold is {threshold!r}; expected a value in (0, 1)")
    if labels.ndim != 1 or scores.ndim != 1:
        raise InvalidSetting(
            f"y_true has shape {labels.shape} and y_score has shape {scores.shape}; expected 1-D sequences"
        )
    if labels.size == 0:
        raise InvalidSetting("y_true is empty; expected at least one example")
    if labels.size != scores.size:
        raise InvalidSetting(f"y_true has {labels.size} values but y_score has {scores.size}; expected equal lengths")
    if not np.isin(labels, (0, 1)).all():
        raise InvalidSetting(f"y_true contains labels {sorted(set(labels.tolist()) - {0, 1})[:5]}; expected 0 or 1")
    if not np.isfinite(scores).all():
        raise InvalidSetting("y_score contains non-finite values; expected probabilities in [0, 1]")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise InvalidSetting(
            f"y_score ranges over [{scores.min():.4g}, {scores.max():.4g}]; expected probabilities in [0, 1] "
            "(apply a sigmoid to logits first)"
        )
