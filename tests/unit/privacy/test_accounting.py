"""Tests for RDP accounting of DP-FedAvg rounds and DP-SGD steps."""

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from app_custom.core.privacy.accounting import (
    epsilon_after,
    epsilon_after_steps,
    epsilon_per_round,
    next_round_epsilon,
)
from app_custom.core.privacy.errors import InvalidPrivacySetting


def _full_batch_epsilon(steps: int, sigma: float, delta: float) -> float:
    # Without subsampling the Gaussian mechanism has RDP alpha / (2 sigma^2) per step; convert with
    # eps = rdp - (log delta + log alpha) / (alpha - 1) + log((alpha - 1) / alpha), minimised over the orders.
    orders = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.min(eps))


@pytest.mark.parametrize(("rounds", "sigma", "delta"), [(1, 1.0, 1e-5), (10, 2.0, 1e-5), (50, 5.0, 1e-6)])
def test_full_participation_closed_form(rounds, sigma, delta):
    assert epsilon_after(rounds, sigma, 1.0, delta) == pytest.approx(_full_batch_epsilon(rounds, sigma, delta))


def test_zero_rounds_zero_epsilon():
    assert epsilon_after(0, 1.0, 0.5, 1e-5) == 0.0
    assert epsilon_after_steps(0, 1.0, 0.01, 1e-5) == 0.0


def test_matches_opacus_accountant():
    accountant = RDPAccountant()
    for _ in range(120):
        accountant.step(noise_multiplier=1.1, sample_rate=0.01)
    assert epsilon_after_steps(120, 1.1, 0.01, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))


def test_monotone_in_rounds():
    values = epsilon_per_round(30, 1.0, 0.5, 1e-5)
    assert len(values) == 30
    assert all(later > earlier for earlier, later in zip(values, values[1:], strict=False))


def test_decreasing_in_noise():
    values = [epsilon_after(20, sigma, 0.3, 1e-5) for sigma in (0.8, 1.0, 2.0, 4.0, 8.0)]
    assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))


def test_increasing_in_sample_rate():
    values = [epsilon_after(20, 1.0, rate, 1e-5) for rate in (0.05, 0.2, 0.5, 1.0)]
    assert all(later > earlier for earlier, later in zip(values, values[1:], strict=False))


def test_subsampling_amplifies():
    assert epsilon_after(10, 1.0, 0.1, 1e-5) < epsilon_after(10, 1.0, 1.0, 1e-5)


def test_next_round_is_increment():
    before = epsilon_after(7, 1.5, 0.5, 1e-5)
    after = epsilon_after(8, 1.5, 0.5, 1e-5)
    assert next_round_epsilon(7, 1.5, 0.5, 1e-5) == pytest.approx(after - before)
    assert next_round_epsilon(0, 1.5, 0.5, 1e-5) == pytest.approx(after - after + epsilon_after(1, 1.5, 0.5, 1e-5))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier=0.0"),
        ({"noise_multiplier": -1.0}, "noise_multiplier=-1.0"),
        ({"noise_multiplier": math.nan}, "noise_multiplier=nan"),
        ({"noise_multiplier": math.inf}, "noise_multiplier=inf"),
        ({"sample_rate": 0.0}, "sample_rate=0.0"),
        ({"sample_rate": 1.5}, "sample_rate=1.5"),
        ({"sample_rate": math.nan}, "sample_rate=nan"),
        ({"delta": 1.0}, "delta=1.0"),
        ({"delta": 0.0}, "delta=0.0"),
        ({"delta": math.nan}, "delta=nan"),
        ({"rounds": -1}, "rounds=-1"),
        ({"rounds": 2.5}, "rounds=2.5"),
        ({"rounds": True}, "rounds=True"),
    ],
)
def test_invalid_arguments_raise(kwargs, fragment):
    arguments = {"rounds": 5, "noise_multiplier": 1.0, "sample_rate": 0.5, "delta": 1e-5, **kwargs}
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        epsilon_after(**arguments)


def test_invalid_steps_raise():
    with pytest.raises(InvalidPrivacySetting, match="steps=-3"):
        epsilon_after_steps(-3, 1.0, 0.1, 1e-5)
