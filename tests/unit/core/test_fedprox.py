"""Tests for the FedProx proximal term."""

import math

import pytest
import torch
from torch import nn

from app_custom.core.errors import InvalidSetting
from app_custom.core.fedprox import proximal_term, snapshot_global_params


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def test_zero_at_global():
    model = _model()
    term = proximal_term(model, snapshot_global_params(model), mu=0.5)
    assert term.item() == 0.0


def test_value_and_gradient():
    model = _model()
    snapshot = snapshot_global_params(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    term = proximal_term(model, snapshot, mu=0.2)
    assert term.item() == pytest.approx(0.5 * 0.2 * 6.0, rel=1e-6)
    term.backward()
    torch.testing.assert_close(model[0].weight.grad, torch.full((2, 3), 0.2))
    torch.testing.assert_close(model[0].bias.grad, torch.zeros(2))


def test_snapshot_is_detached_copy():
    model = _model()
    snapshot = snapshot_global_params(model)
    assert not snapshot["0.weight"].requires_grad
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(snapshot["0.weight"], model[0].weight)


def test_buffers_and_frozen_ignored():
    model = _model()
    snapshot = snapshot_global_params(model)
    model[1].weight.requires_grad_(False)
    with torch.no_grad():
        model[1].weight.add_(5.0)
        model[1].running_mean.add_(5.0)
    assert proximal_term(model, snapshot, mu=1.0).item() == 0.0


def test_mu_zero_is_zero():
    model = _model()
    snapshot = snapshot_global_params(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert proximal_term(model, snapshot, mu=0.0).item() == 0.0


@pytest.mark.parametrize("mu", [-0.1, math.nan, math.inf, True])
def test_bad_mu(mu):
    model = _model()
    with pytest.raises(InvalidSetting, match="mu is"):
        proximal_term(model, snapshot_global_params(model), mu=mu)


def test_missing_global_tensor():
    model = _model()
    snapshot = snapshot_global_params(model)
    del snapshot["0.bias"]
    with pytest.raises(InvalidSetting, match="lacks the trainable parameter '0.bias'"):
        proximal_term(model, snapshot, mu=0.1)


def test_shape_mismatch():
    model = _model()
    snapshot = snapshot_global_params(model)
    snapshot["0.bias"] = torch.zeros(5)
    with pytest.raises(InvalidSetting, match=r"shape \(5,\); expected \(2,\)"):
        proximal_term(model, snapshot, mu=0.1)
