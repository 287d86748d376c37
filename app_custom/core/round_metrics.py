"""Per-round metric summaries reported by the server: JSON-safe site metrics and their weighted mean."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

METRIC_KEYS = ("loss", "roc_auc", "accuracy", "balanced_accuracy")


def weighted_site_mean(site_metrics: Mapping[str, Mapping[str, Any]], prefix: str) -> dict[str, float | None]:
    """Average ``<prefix>_<metric>`` over sites, weighted by ``num_test_examples``, skipping undefined values.

    A metric that is undefined at a site (None, for example ROC AUC on a one-class held-out split) is left out of
    the mean rather than averaged as NaN; a metric undefined at every site is None.
    """
    result: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        total = 0.0
        weight = 0.0
        for metrics in site_metrics.values():
            value = metrics.get(f"{prefix}_{key}")
            size = float(metrics.get("num_test_examples") or 0.0)
            if value is None or size <= 0 or not np.isfinite(value):
                continue
            total += float(value) * size
            weight += size
        result[key] = total / weight if weight > 0 else None
    return result


def clean_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Keep JSON-safe scalar metrics; NaN and infinities become None (undefined), other types are dropped."""
    cleaned: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, np.bool_)):
            cleaned[key] = bool(value)
        elif isinstance(value, (int, float, np.integer, np.floating)):
            cleaned[key] = float(value) if np.isfinite(value) else None
        elif value is None:
            cleaned[key] = None
    return cleaned
