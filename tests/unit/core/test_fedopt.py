"""Tests for server-side FedAdam."""

import math

import numpy as np
import pytest

from app_custom.core.errors import ContributionRejected, InvalidSetting
from app_custom.core.fedopt import FedAdam


def _reference_step(x, delta, m, v, eta, beta1, beta2, tau):
    m = beta1 * m + (1 - beta1) * delta
    v = beta2 * v + (1 - beta2) * delta**2
    return x + eta * m / (np.sqrt(v) + tau), m, v


def test_matches_formula_two_rounds():
    optimizer = FedAdam(server_learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    x = np.array([0.0, 1.0, -2.0])
    m = np.zeros(3)
    v = np.zeros(3)
    for averaged in (np.array([0.5, 0.5, -1.0]), np.array([0.2, 0.9, -1.5])):
        delta = averaged - x
        expected, m, v = _reference_step(x, delta, m, v, 0.1, 0.9, 0.99, 1e-3)
        result = optimizer.step({"w": x}, {"w": averaged})["w"]
        np.testing.assert_allclose(result, expected, rtol=1e-12)
        x = result
    assert optimizer.rounds == 2


def test_zero_delta_no_move():
    optimizer = FedAdam()
    params = {"w": np.ones(4, dtype=np.float32)}
    result = optimizer.step(params, {"w": np.ones(4, dtype=np.float32)})
    np.testing.assert_array_equal(result["w"], 1.0)
    assert result["w"].dtype == np.float32


def test_moves_toward_average():
    optimizer = FedAdam(server_learning_rate=0.05)
    x = {"w": np.zeros(2)}
    for _ in range(5):
        x = optimizer.step(x, {"w": x["w"] + np.array([1.0, -1.0])})
    assert x["w"][0] > 0
    assert x["w"][1] < 0


def test_integer_arrays_take_average():
    optimizer = FedAdam()
    result = optimizer.step({"n": np.array(3), "w": np.zeros(1)}, {"n": np.array(7), "w": np.ones(1)})
    assert result["n"] == 7


def test_state_roundtrip():
    first = FedAdam(server_learning_rate=0.1)
    x = {"w": np.zeros(3)}
    x = first.step(x, {"w": np.ones(3)})
    second = FedAdam(server_learning_rate=0.1)
    second.load_state_dict(first.state_dict())
    assert second.rounds == 1
    averaged = {"w": np.full(3, 2.0)}
    np.testing.assert_array_equal(second.step(x, averaged)["w"], first.step(x, averaged)["w"])


def test_state_missing_entry():
    with pytest.raises(InvalidSetting, match="lacks \\['second_moment'\\]"):
        FedAdam().load_state_dict({"rounds": 1, "first_moment": {}})


def test_reset_forgets_moments():
    optimizer = FedAdam()
    optimizer.step({"w": np.zeros(2)}, {"w": np.ones(2)})
    optimizer.reset()
    assert optimizer.rounds == 0
    optimizer.step({"w": np.zeros(3)}, {"w": np.ones(3)})


def test_architecture_change_needs_reset():
    optimizer = FedAdam()
    optimizer.step({"w": np.zeros(2)}, {"w": np.ones(2)})
    with pytest.raises(ContributionRejected, match="call reset\\(\\)|Call reset\\(\\)") as caught:
        optimizer.step({"w": np.zeros(3)}, {"w": np.ones(3)})
    assert caught.value.reason_code == "shape_mismatch"


def test_missing_key_rejected():
    with pytest.raises(ContributionRejected, match="fedavg_params lacks") as caught:
        FedAdam().step({"w": np.zeros(2), "b": np.zeros(1)}, {"w": np.zeros(2)})
    assert caught.value.reason_code == "missing_key"


def test_shape_mismatch_rejected():
    with pytest.raises(ContributionRejected, match=r"expected \(2,\)"):
        FedAdam().step({"w": np.zeros(2)}, {"w": np.zeros(3)})


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("server_learning_rate", 0.0),
        ("server_learning_rate", math.inf),
        ("beta1", 1.0),
        ("beta1", -0.1),
        ("beta2", 1.5),
        ("tau", 0.0),
        ("tau", math.nan),
    ],
)
def test_bad_settings(setting, value):
    with pytest.raises(InvalidSetting, match=f"{setting} is"):
        FedAdam(**{setting: value})
