"""Privacy accounting with Rényi differential privacy (RDP) for the sampled Gaussian mechanism.

Both DP mechanisms in Consortia are repeated applications of the sampled Gaussian mechanism, so one accountant
covers both:

- client-level DP (DP-FedAvg, McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"):
  one round samples each site with probability ``sample_rate`` and adds Gaussian noise of ``noise_multiplier``
  times the clip norm to the sum of clipped site updates;
- sample-level DP (DP-SGD, Abadi et al. 2016, "Deep Learning with Differential Privacy"): one optimizer step
  samples each record with probability ``sample_rate`` and adds Gaussian noise to the sum of clipped per-sample
  gradients.

The RDP of k steps comes from Mironov, Talwar and Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism", and is converted to (epsilon, delta)-DP by ``opacus.accountants.analysis.rdp.get_privacy_spent``
(Opacus 1.6) over Opacus' default RDP orders.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as analysis

from app_custom.core.privacy._validation import (
    check_delta,
    check_non_negative_int,
    check_positive_finite,
    check_sample_rate,
)

__all__ = ["epsilon_after", "epsilon_after_steps", "epsilon_floor", "epsilon_per_round", "next_round_epsilon"]

logger = logging.getLogger(__name__)

_NOISE_HINT = "Use a noise_multiplier > 0 (for example 1.0); zero noise gives no differential privacy."


@functools.lru_cache(maxsize=256)
def _rdp_per_step(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    # RDP composes additively over steps, so the RDP of k steps is k times this vector (as RDPAccountant computes it).
    rdp = analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
    )
    return tuple(float(value) for value in rdp)


def _epsilon(steps: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    if steps == 0:
        return 0.0
    rdp = np.asarray(_rdp_per_step(noise_multiplier, sample_rate)) * steps
    epsilon, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    epsilon = float(epsilon)
    if math.isnan(epsilon):
        # Fail closed: an accountant that cannot state epsilon must not be read as "no privacy spent".
        return math.inf
    return epsilon


def epsilon_after_steps(steps: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """Compute epsilon after ``steps`` DP-SGD steps with the RDP accountant.

    Privacy: states the sample-level guarantee against anyone who sees the trained model (or every intermediate
    model). Invalid arguments raise ``InvalidPrivacySetting``, and an accountant result that is not a number is
    returned as ``inf``, so a caller comparing it with a budget stops training.

    Args:
        steps: Number of noisy optimizer steps taken, >= 0.
        noise_multiplier: Noise standard deviation divided by ``max_grad_norm``, > 0.
        sample_rate: Probability that one record is in a step's batch, in (0, 1].
        delta: Target delta, in (0, 1).

    Returns:
        Epsilon at ``delta``; 0.0 when ``steps`` is 0.

    Raises:
        InvalidPrivacySetting: An argument is non-finite or out of range.
    """
    steps = check_non_negative_int("steps", steps, "Pass the number of optimizer steps taken.")
    noise_multiplier = check_positive_finite("noise_multiplier", noise_multiplier, _NOISE_HINT)
    sample_rate = check_sample_rate(sample_rate)
    delta = check_delta(delta)
    return _epsilon(steps, noise_multiplier, sample_rate, delta)


def epsilon_after(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """Compute the client-level epsilon of DP-FedAvg after ``rounds`` rounds with the RDP accountant.

    Each round is one sampled Gaussian mechanism over sites: a site takes part with probability ``sample_rate``
    (1.0 when every site trains every round), and the server adds noise of ``noise_multiplier`` times the clip
    norm, scaled as in ``client_dp.add_gaussian_noise``.

    Privacy: states the guarantee for a whole site's data against anyone who sees the global models, including
    the server. Invalid arguments raise ``InvalidPrivacySetting``, and an accountant result that is not a number
    is returned as ``inf``.

    Args:
        rounds: Number of completed rounds, >= 0.
        noise_multiplier: The z of DP-FedAvg, > 0.
        sample_rate: Probability that a site is sampled in a round, in (0, 1].
        delta: Target delta, in (0, 1).

    Returns:
        Epsilon at ``delta``; 0.0 when ``rounds`` is 0.

    Raises:
        InvalidPrivacySetting: An argument is non-finite or out of range.
    """
    rounds = check_non_negative_int("rounds", rounds, "Pass the number of completed rounds.")
    noise_multiplier = check_positive_finite("noise_multiplier", noise_multiplier, _NOISE_HINT)
    sample_rate = check_sample_rate(sample_rate)
    delta = check_delta(delta)
    return _epsilon(rounds, noise_multiplier, sample_rate, delta)


def epsilon_per_round(rounds: int, noise_multiplier: float, sample_rate: float, delta: float) -> list[float]:
    """Compute the cumulative client-level epsilon after each of rounds 1..``rounds``.

    Privacy: as ``epsilon_after``. Entry i is the epsilon after i + 1 rounds, so the list is what a site's ledger
    records round by round.

    Raises:
        InvalidPrivacySetting: An argument is non-finite or out of range.
    """
    rounds = check_non_negative_int("rounds", rounds, "Pass the number of rounds to list.")
    return [epsilon_after(done, noise_multiplier, sample_rate, delta) for done in range(1, rounds + 1)]


def next_round_epsilon(rounds_done: int, noise_multiplier: float, sample_rate: float, delta: float) -> float:
    """Compute how much the job's cumulative epsilon grows if one more round runs.

    The increment is ``epsilon_after(rounds_done + 1) - epsilon_after(rounds_done)``. Adding it to the epsilon
    already recorded for the job gives exactly the job's cumulative epsilon after the next round, which is what
    ``budget.PrivacyBudget.can_spend`` compares with the budget.

    Privacy: lets a site refuse a round before training, against a server that keeps asking for rounds. Invalid
    arguments raise ``InvalidPrivacySetting``.

    Raises:
        InvalidPrivacySetting: An argument is non-finite or out of range.
    """
    rounds_done = check_non_negative_int("rounds_done", rounds_done, "Pass the number of completed rounds.")
    after = epsilon_after(rounds_done + 1, noise_multiplier, sample_rate, delta)
    if math.isinf(after):
        return math.inf
    before = epsilon_after(rounds_done, noise_multiplier, sample_rate, delta)
    return max(after - before, 0.0)


def epsilon_floor(delta: float) -> float:
    """Return the smallest epsilon the RDP accountant can state at ``delta``, approached as noise grows unbounded.

    The conversion from RDP adds ``-(log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha)`` at each
    order alpha, and Opacus' largest default order is 63, so targets at or below this floor are unreachable.

    Raises:
        InvalidPrivacySetting: ``delta`` is not in (0, 1).
    """
    delta = check_delta(delta)
    orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    conversion = -(math.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.min(conversion))
