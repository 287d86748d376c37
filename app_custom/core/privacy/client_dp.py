"""Client-level differential privacy: DP-FedAvg.

McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent Language Models" (ICLR),
Algorithm 1. Each site clips its model update to L2 norm ``S``. The server computes the fixed-denominator
estimator with uniform site weights (every w_k = 1)::

    aggregate = sum_{k in C} clip(update_k, S) / (q * W)

where C is the set of sites that reported this round, W the number of sites in the federation and q the
probability that a site is sampled (q = 1 when every site is asked every round). Adding or removing one site
changes that sum by at most ``S / (q * W)``, so the server adds Gaussian noise with standard deviation
``sigma = z * S / (q * W)`` to each coordinate, where z is the noise multiplier. The denominator ``q * W`` is fixed
in advance and must not be replaced by the number of sites that actually reported: that is a different
estimator (the paper's clipped ratio estimator) with a different sensitivity.

The protected unit is a whole site: the guarantee holds for everything one site contributes, against anyone who
sees the noised aggregate or later global models. The server that adds the noise sees the clipped updates, so it
must be trusted with them unless the updates are also encrypted. ``accounting.epsilon_after`` gives the epsilon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field, FiniteFloat

from app_custom.core.privacy._validation import PrivacyConfigModel, check_positive_finite
from app_custom.core.privacy.errors import InvalidPrivacyInput, InvalidPrivacySetting

__all__ = ["ClientDPConfig", "add_gaussian_noise", "clip_update", "noise_std", "sum_clipped_updates"]

logger = logging.getLogger(__name__)

# Clipped arrays are scaled by (1 - _CLIP_MARGIN) below the exact factor, so casting back to float32 or float16
# cannot round the update's norm above the clip norm that the noise was calibrated for.
_CLIP_MARGIN = 1e-6


class ClientDPConfig(PrivacyConfigModel):
    """Settings of DP-FedAvg for one job.

    Privacy: protects each site's whole contribution against other sites and anyone who sees global models.
    Construction raises ``InvalidPrivacySetting`` for a NaN, infinite, zero or negative value, an unknown key or
    a value of the wrong type, so a job never starts with a setting that would weaken or disable the noise.

    Attributes:
        clip_norm: L2 norm S each site update is clipped to, > 0.
        noise_multiplier: z, the noise standard deviation in units of the per-site sensitivity, > 0.
        sample_rate: q, the probability that a site is sampled in a round, in (0, 1].
        target_delta: Delta at which epsilon is reported, in (0, 1) and below 1 / number of sites.
    """

    clip_norm: FiniteFloat = Field(gt=0)
    noise_multiplier: FiniteFloat = Field(gt=0)
    sample_rate: FiniteFloat = Field(default=1.0, gt=0, le=1)
    target_delta: FiniteFloat = Field(gt=0, lt=1)

    _hints: ClassVar[dict[str, str]] = {
        "clip_norm": "Set clip_norm to a finite L2 norm > 0, for example the median update norm of a trial run.",
        "noise_multiplier": "Set noise_multiplier to a finite value > 0, for example 1.0.",
        "sample_rate": "Set sample_rate in (0, 1]: 1.0 when every site trains every round.",
        "target_delta": "Set target_delta in (0, 1), below 1 / number of sites, for example 1e-5.",
    }

    def check_num_sites(self, num_sites: int) -> None:
        """Check that ``target_delta`` is below 1 / ``num_sites``.

        Privacy: a delta of 1/W or more allows a mechanism that publishes one whole site's update in the clear.

        Raises:
            InvalidPrivacySetting: ``num_sites`` is not a positive integer or ``target_delta`` >= 1 / num_sites.
        """
        if not isinstance(num_sites, int) or isinstance(num_sites, bool) or num_sites < 1:
            raise InvalidPrivacySetting(f"invalid num_sites={num_sites!r}: expected an integer >= 1")
        if self.target_delta >= 1.0 / num_sites:
            raise InvalidPrivacySetting(
                f"invalid target_delta={self.target_delta!r}: it must be below 1/num_sites = {1.0 / num_sites:.3g} "
                f"for {num_sites} sites. Set target_delta to at most {0.01 / num_sites:.1e}."
            )

    def expected_num_sites(self, num_sites: int) -> float:
        """Return q * W, the fixed denominator of the estimator, for a federation of ``num_sites`` sites."""
        self.check_num_sites(num_sites)
        return self.sample_rate * num_sites


def _check_update(update: Mapping[str, np.ndarray], name: str) -> None:
    if not isinstance(update, Mapping) or not update:
        raise InvalidPrivacyInput(f"{name} must be a non-empty mapping of parameter name to array, got {update!r:.80}")
    for key, array in update.items():
        if not isinstance(array, np.ndarray):
            raise InvalidPrivacyInput(f"{name}[{key!r}] is {type(array).__name__}, expected a numpy array")
        if not np.issubdtype(array.dtype, np.floating):
            raise InvalidPrivacyInput(
                f"{name}[{key!r}] has dtype {array.dtype}; DP-FedAvg can only protect floating-point arrays. "
                "Leave integer buffers such as BatchNorm counters out of the update."
            )
        if not np.all(np.isfinite(array)):
            raise InvalidPrivacyInput(f"{name}[{key!r}] contains NaN or infinity; it cannot be clipped or sent")


def _global_norm(update: Mapping[str, np.ndarray]) -> float:
    squares = [float(np.sum(np.square(array, dtype=np.float64))) for array in update.values()]
    return math.sqrt(math.fsum(squares))


def clip_update(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Scale a site update so that its global L2 norm over all arrays is at most ``clip_norm``.

    The norm is taken over all arrays together, as in DP-FedAvg. An update already within the norm is returned
    unchanged (copied). Larger updates are scaled by ``clip_norm / norm`` (less a 1e-6 relative margin against
    rounding), so the direction is kept. Inputs are not modified.

    Privacy: bounds one site's influence on the aggregate, which is the sensitivity the noise is calibrated for.
    A non-finite update, a non-float array or an invalid ``clip_norm`` raises before anything is returned.

    Args:
        update: Parameter name to floating-point array (a model delta, not full weights).
        clip_norm: S, a finite value > 0.

    Returns:
        The clipped update (arrays in their original dtypes) and the original global L2 norm.

    Raises:
        InvalidPrivacySetting: ``clip_norm`` is not a finite number > 0.
        InvalidPrivacyInput: The update is empty, contains a non-float array, or contains NaN or infinity.
    """
    clip_norm = check_positive_finite("clip_norm", clip_norm, "Set clip_norm to a finite L2 norm > 0.")
    _check_update(update, "update")
    norm = _global_norm(update)
    if norm <= clip_norm:
        return {key: array.copy() for key, array in update.items()}, norm
    factor = clip_norm / norm * (1.0 - _CLIP_MARGIN)
    clipped = {key: (array.astype(np.float64) * factor).astype(array.dtype) for key, array in update.items()}
    return clipped, norm


def noise_std(noise_multiplier: float, clip_norm: float, num_sampled_sites: float) -> float:
    """Return sigma = z * S / (q * W), the noise standard deviation of the fixed-denominator estimator.

    Raises:
        InvalidPrivacySetting: An argument is not a finite number > 0.
    """
    noise_multiplier = check_positive_finite(
        "noise_multiplier", noise_multiplier, "Zero noise gives no differential privacy; use for example 1.0."
    )
    clip_norm = check_positive_finite("clip_norm", clip_norm, "Pass the clip norm the sites clipped to.")
    num_sampled_sites = check_positive_finite(
        "num_sampled_sites", num_sampled_sites, "Pass q * W, the expected number of sampled sites."
    )
    return noise_multiplier * clip_norm / num_sampled_sites


def sum_clipped_updates(
    clipped_updates: Sequence[Mapping[str, np.ndarray]], num_sampled_sites: float
) -> dict[str, np.ndarray]:
    """Compute the fixed-denominator estimator sum_k update_k / (q * W) over clipped site updates, in float64.

    Privacy: produces the pre-noise aggregate whose sensitivity ``add_gaussian_noise`` assumes. It does not clip:
    pass updates returned by ``clip_update``. Mismatched keys or shapes raise, so no site is silently dropped.

    Args:
        clipped_updates: One clipped update per site that reported; may be empty (every site dropped out).
        num_sampled_sites: q * W, fixed before the round; not the number of updates received.

    Returns:
        Parameter name to float64 array. With no updates the result is empty.

    Raises:
        InvalidPrivacySetting: ``num_sampled_sites`` is not a finite number > 0.
        InvalidPrivacyInput: Updates differ in keys or shapes, or contain NaN, infinity or non-float arrays.
    """
    num_sampled_sites = check_positive_finite(
        "num_sampled_sites", num_sampled_sites, "Pass q * W, the expected number of sampled sites."
    )
    if not clipped_updates:
        return {}
    first = clipped_updates[0]
    for index, update in enumerate(clipped_updates):
        _check_update(update, f"clipped_updates[{index}]")
        if set(update) != set(first) or any(update[key].shape != first[key].shape for key in first):
            raise InvalidPrivacyInput(
                f"clipped_updates[{index}] differs from clipped_updates[0] in keys or shapes; "
                "every site must send the same parameters"
            )
    total = {key: np.zeros(array.shape, dtype=np.float64) for key, array in first.items()}
    for update in clipped_updates:
        for key, array in update.items():
            total[key] += array
    return {key: array / num_sampled_sites for key, array in total.items()}


def add_gaussian_noise(
    aggregate: Mapping[str, np.ndarray],
    noise_multiplier: float,
    clip_norm: float,
    num_sampled_sites: float,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Add N(0, sigma^2) noise with sigma = z * S / (q * W) to every coordinate of the fixed-denominator estimate.

    ``aggregate`` must be ``sum_clipped_updates(...)``: the sum of updates clipped to ``clip_norm`` divided by
    ``num_sampled_sites`` = q * W. Results keep each array's dtype.

    Privacy: makes each round a Gaussian mechanism with noise multiplier z with respect to one whole site, whose
    epsilon ``accounting.epsilon_after`` gives, against every site and anyone who sees global models. An invalid
    setting or a non-finite aggregate raises before any noise is drawn, so nothing is released without noise.

    Args:
        aggregate: Parameter name to floating-point array.
        noise_multiplier: z, > 0.
        clip_norm: S, the norm the sites clipped to, > 0.
        num_sampled_sites: q * W, the fixed denominator used for ``aggregate``, > 0.
        rng: Source of the noise. None draws a fresh generator seeded from the operating system.

    Returns:
        The noised aggregate.

    Raises:
        InvalidPrivacySetting: A setting is not a finite number > 0.
        InvalidPrivacyInput: The aggregate is empty, contains a non-float array or contains NaN or infinity.
    """
    sigma = noise_std(noise_multiplier, clip_norm, num_sampled_sites)
    _check_update(aggregate, "aggregate")
    if rng is None:
        # NOTE: numpy's PCG64 is not a cryptographically secure generator, the same trade-off as Opacus with
        # secure_mode=False; an attacker who could predict the stream could subtract the noise.
        rng = np.random.default_rng()
    elif not isinstance(rng, np.random.Generator):
        raise InvalidPrivacySetting(f"invalid rng={rng!r}: expected a numpy.random.Generator or None")
    noised = {}
    for key, array in aggregate.items():
        noise = rng.normal(0.0, sigma, size=array.shape)
        noised[key] = (array.astype(np.float64) + noise).astype(array.dtype)
    return noised
