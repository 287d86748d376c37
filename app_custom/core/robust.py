"""Aggregation that limits the influence of a few bad or adversarial site updates.

- ``clip_update``: scales a site's update (``params - global_params``) down to a maximum L2 norm, the bound that
  DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models") applies to each
  user update before averaging.
- ``trimmed_mean`` and ``coordinate_median``: for each coordinate, drop the extremes across sites, or take the
  median, so that a minority of arbitrary values cannot move the result outside the range of the honest values.

The two coordinate-wise statistics are unweighted and need all contributions at once, so their memory is
O(number of sites x largest array), unlike the streaming ``WeightedFedAvg``.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from app_custom.core.errors import ContributionRejected, InvalidSetting, NoValidContributions
from app_custom.core.validation import update_l2_norm

__all__ = ["clip_update", "coordinate_median", "trimmed_mean"]

logger = logging.getLogger(__name__)


def clip_update(
    params: Mapping[str, np.ndarray],
    global_params: Mapping[str, np.ndarray],
    max_update_norm: float,
) -> tuple[dict[str, np.ndarray], float]:
    """Scale the site update ``params - global_params`` so its L2 norm is at most ``max_update_norm``.

    The norm is taken over all floating-point arrays together (flat clipping). Integer and boolean arrays are
    copied unchanged. Each returned array has the dtype of the corresponding ``params`` array.

    Args:
        params: The site model.
        global_params: The global model the site started from, with the same keys and shapes.
        max_update_norm: The L2 bound S; the update is multiplied by ``min(1, S / norm)``.

    Returns:
        The clipped site model as new arrays, and the norm of the update before clipping.

    Raises:
        InvalidSetting: If ``max_update_norm`` is not a finite number greater than zero.
        ContributionRejected: If keys or shapes of ``params`` and ``global_params`` differ.
    """
    _check_positive("max_update_norm", max_update_norm)
    _check_same_structure([global_params, params], names=("global_params", "params"))
    norm = update_l2_norm(params, global_params)
    scale = 1.0 if norm <= max_update_norm else max_update_norm / norm

    clipped: dict[str, np.ndarray] = {}
    for key, value in params.items():
        array = np.asarray(value)
        if array.dtype.kind not in "fc" or scale == 1.0:
            clipped[key] = array.copy()
            continue
        reference = np.asarray(global_params[key])
        delta = array.astype(np.float64) - reference
        clipped[key] = (reference + scale * delta).astype(array.dtype)
    return clipped, norm


def trimmed_mean(contributions: Sequence[Mapping[str, np.ndarray]], trim_fraction: float) -> dict[str, np.ndarray]:
    """Return the coordinate-wise trimmed mean of the site models.

    Coordinate-wise trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates"): for each coordinate, sort the n site values, drop the
    ``k = floor(trim_fraction * n)`` smallest and the k largest, and average the rest. Integer arrays use the same
    statistic, rounded to the nearest integer.

    Args:
        contributions: Site models with identical keys, shapes and dtypes.
        trim_fraction: beta in [0, 0.5), the fraction dropped at each end. 0 gives the plain unweighted mean.

    Raises:
        InvalidSetting: If ``trim_fraction`` is outside [0, 0.5), or is positive but too small for the number of
            contributions to drop at least one value at each end.
        NoValidContributions: If ``contributions`` is empty.
        ContributionRejected: If the contributions differ in keys, shapes or dtypes.
    """
    if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, numbers.Real):
        raise InvalidSetting(f"trim_fraction is {trim_fraction!r}; expected a number in [0, 0.5)")
    if not 0.0 <= trim_fraction < 0.5:
        raise InvalidSetting(
            f"trim_fraction is {trim_fraction!r}; expected a value in [0, 0.5) so that at least one value per "
            "coordinate remains after trimming both ends"
        )
    count = _check_contributions(contributions)
    trimmed = math.floor(trim_fraction * count)
    if trim_fraction > 0 and trimmed == 0:
        needed = math.ceil(1.0 / trim_fraction)
        raise InvalidSetting(
            f"trim_fraction {trim_fraction} drops nothing from {count} contribution(s), so the mean would not be "
            f"robust; wait for at least {needed} contributions or raise trim_fraction to at least {1.0 / count:.3g}"
        )

    def statistic(stacked: np.ndarray) -> np.ndarray:
        ordered = np.sort(stacked, axis=0)
        return ordered[trimmed : count - trimmed].mean(axis=0)

    logger.debug("trimmed mean over %d contributions, dropping %d at each end", count, trimmed)
    return _apply(contributions, statistic)


def coordinate_median(contributions: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the coordinate-wise median of the site models.

    Coordinate-wise median (Yin et al., ICML 2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
    Rates"). With an even number of sites the median is the mean of the two middle values. Integer arrays are
    rounded to the nearest integer.

    Raises:
        NoValidContributions: If ``contributions`` is empty.
        ContributionRejected: If the contributions differ in keys, shapes or dtypes.
    """
    count = _check_contributions(contributions)
    logger.debug("coordinate-wise median over %d contributions", count)
    return _apply(contributions, lambda stacked: np.median(stacked, axis=0))


def _apply(
    contributions: Sequence[Mapping[str, np.ndarray]], statistic: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    result: dict[str, np.ndarray] = {}
    for key, first in contributions[0].items():
        dtype = np.asarray(first).dtype
        work_dtype = np.result_type(dtype, np.float32) if dtype.kind in "fc" else np.float64
        stacked = np.stack([np.asarray(params[key], dtype=work_dtype) for params in contributions])
        value = statistic(stacked)
        if dtype.kind not in "fc":
            value = np.rint(value)
        result[key] = np.asarray(value).astype(dtype)
    return result


def _check_contributions(contributions: Sequence[Mapping[str, np.ndarray]]) -> int:
    if len(contributions) == 0:
        raise NoValidContributions("no contributions to aggregate; accept at least one site update first")
    _check_same_structure(contributions, names=None)
    return len(contributions)


def _check_same_structure(
    models: Sequence[Mapping[str, np.ndarray]], names: tuple[str, str] | None
) -> None:
    first = models[0]
    for index, other in enumerate(models[1:], start=1):
        label = names[index] if names else f"contribution {index}"
        first_label = names[0] if names else "contribution 0"
        missing = sorted(first.keys() - other.keys())
        if missing:
            raise ContributionRejected(
                "missing_key",
                f"{label} lacks key(s) {missing[:5]} that {first_label} has; every model must have the same keys",
                key=missing[0],
            )
        unexpected = sorted(other.keys() - first.keys())
        if unexpected:
            raise ContributionRejected(
                "unexpected_key",
                f"{label} has key(s) {unexpected[:5]} that {first_label} lacks; every model must have the same keys",
                key=unexpected[0],
            )
        for key, value in first.items():
            expected = np.asarray(value)
            found = np.asarray(other[key])
            if found.shape != expected.shape:
                raise ContributionRejected(
                    "shape_mismatch",
                    f"{label}[{key!r}] has shape {found.shape}; expected {expected.shape} as in {first_label}",
                    key=key,
                )
            if names is None and found.dtype != expected.dtype:
                raise ContributionRejected(
                    "dtype_mismatch",
                    f"{label}[{key!r}] has dtype {found.dtype}; expected {expected.dtype} as in {first_label}",
                    key=key,
                )


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidSetting(f"{name} is {value!r}; expected a finite number greater than zero")
