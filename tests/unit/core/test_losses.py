"""Tests for the focal loss."""

import math

import pytest
import torch
from torch import nn

from app_custom.core.errors import InvalidSetting
from app_custom.core.losses import FocalLoss


def _binary_data():
    torch.manual_seed(0)
    return torch.randn(64) * 3, torch.randint(0, 2, (64,))


def _multiclass_data():
    torch.manual_seed(1)
    return torch.randn(64, 5) * 3, torch.randint(0, 5, (64,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_gamma0_is_bce(reduction):
    logits, targets = _binary_data()
    expected = nn.BCEWithLogitsLoss(reduction=reduction)(logits, targets.float())
    torch.testing.assert_close(FocalLoss(gamma=0.0, reduction=reduction)(logits, targets), expected, rtol=0, atol=0)


def test_binary_column_shape():
    logits, targets = _binary_data()
    expected = nn.BCEWithLogitsLoss()(logits, targets.float())
    result = FocalLoss(gamma=0.0)(logits.unsqueeze(1), targets.unsqueeze(1).float())
    torch.testing.assert_close(result, expected, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("alpha", [None, [1.0] * 5])
def test_multiclass_gamma0_is_ce(reduction, alpha):
    logits, targets = _multiclass_data()
    expected = nn.CrossEntropyLoss(reduction=reduction)(logits, targets)
    result = FocalLoss(alpha=alpha, gamma=0.0, reduction=reduction)(logits, targets)
    torch.testing.assert_close(result, expected, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(
    ("p_true", "gamma", "expected"),
    [
        (0.9, 0.0, 0.105361),
        (0.9, 1.0, 0.010536),
        (0.9, 2.0, 0.001054),
        (0.9, 5.0, 0.000001),
        (0.5, 0.0, 0.693147),
        (0.5, 1.0, 0.346574),
        (0.5, 2.0, 0.173287),
        (0.5, 5.0, 0.021661),
        (0.1, 0.0, 2.302585),
        (0.1, 1.0, 2.072327),
        (0.1, 2.0, 1.865094),
        (0.1, 5.0, 1.359653),
    ],
)
def test_reference_values(p_true, gamma, expected):
    logit = torch.tensor([math.log(p_true / (1 - p_true))], dtype=torch.float64)
    binary = FocalLoss(gamma=gamma)(logit, torch.tensor([1]))
    assert binary.item() == pytest.approx(expected, abs=1e-6)
    # The same p_t as class 0 of a two-class softmax.
    two_class = torch.tensor([[math.log(p_true), math.log(1 - p_true)]], dtype=torch.float64)
    assert FocalLoss(gamma=gamma)(two_class, torch.tensor([0])).item() == pytest.approx(expected, abs=1e-6)


def test_binary_alpha_weights_classes():
    logits, targets = _binary_data()
    unweighted = FocalLoss(gamma=2.0, reduction="none")(logits, targets)
    weighted = FocalLoss(alpha=0.25, gamma=2.0, reduction="none")(logits, targets)
    expected = torch.where(targets == 1, 0.25 * unweighted, 0.75 * unweighted)
    torch.testing.assert_close(weighted, expected)


def test_binary_half_alpha_halves_bce():
    logits, targets = _binary_data()
    expected = 0.5 * nn.BCEWithLogitsLoss()(logits, targets.float())
    torch.testing.assert_close(FocalLoss(alpha=0.5, gamma=0.0)(logits, targets), expected)


def test_multiclass_alpha_vector():
    logits, targets = _multiclass_data()
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    unweighted = FocalLoss(gamma=1.0, reduction="none")(logits, targets)
    weighted = FocalLoss(alpha=alpha, gamma=1.0, reduction="none")(logits, targets)
    torch.testing.assert_close(weighted, alpha[targets] * unweighted)


def test_focusing_downweights_easy():
    easy = FocalLoss(gamma=2.0)(torch.tensor([6.0]), torch.tensor([1]))
    hard = FocalLoss(gamma=2.0)(torch.tensor([-2.0]), torch.tensor([1]))
    assert easy.item() < 1e-4
    assert hard.item() > 1.0


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_gradient_finite_saturated(gamma):
    logits = torch.tensor([60.0, -60.0, 0.3], requires_grad=True)
    FocalLoss(gamma=gamma)(logits, torch.tensor([1, 0, 1])).backward()
    assert torch.isfinite(logits.grad).all()


def test_gradient_matches_bce_gamma0():
    logits, targets = _binary_data()
    first = logits.clone().requires_grad_(True)
    second = logits.clone().requires_grad_(True)
    FocalLoss(gamma=0.0)(first, targets).backward()
    nn.BCEWithLogitsLoss()(second, targets.float()).backward()
    torch.testing.assert_close(first.grad, second.grad)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"gamma": -1.0}, "gamma is -1.0"),
        ({"gamma": math.nan}, "gamma is nan"),
        ({"reduction": "avg"}, "reduction is 'avg'"),
        ({"alpha": 1.5}, "alpha is 1.5"),
        ({"alpha": -0.1}, "alpha is -0.1"),
        ({"alpha": [0.5, -1.0]}, "expected finite weights >= 0"),
        ({"alpha": [[1.0]]}, "alpha has shape (1, 1)"),
    ],
)
def test_bad_settings(kwargs, fragment):
    with pytest.raises(InvalidSetting) as caught:
        FocalLoss(**kwargs)
    assert fragment in str(caught.value)


def test_vector_alpha_on_binary():
    logits, targets = _binary_data()
    with pytest.raises(InvalidSetting, match="logits are binary"):
        FocalLoss(alpha=[0.5, 0.5])(logits, targets)


def test_scalar_alpha_on_multiclass():
    logits, targets = _multiclass_data()
    with pytest.raises(InvalidSetting, match="have 5 classes"):
        FocalLoss(alpha=0.25)(logits, targets)


def test_alpha_length_mismatch():
    logits, targets = _multiclass_data()
    with pytest.raises(InvalidSetting, match="alpha has 3 class weights but the logits have 5"):
        FocalLoss(alpha=[1.0, 1.0, 1.0])(logits, targets)


def test_bad_binary_targets():
    with pytest.raises(InvalidSetting, match="other than 0 and 1"):
        FocalLoss()(torch.zeros(3), torch.tensor([0, 2, 1]))


def test_binary_target_count():
    with pytest.raises(InvalidSetting, match="targets have 2 values for 3"):
        FocalLoss()(torch.zeros(3), torch.tensor([0, 1]))


def test_bad_class_index():
    with pytest.raises(InvalidSetting, match=r"outside \[0, 4\]"):
        FocalLoss()(torch.zeros(2, 5), torch.tensor([0, 5]))


def test_float_class_targets():
    with pytest.raises(InvalidSetting, match="expected integer class indices"):
        FocalLoss()(torch.zeros(2, 5), torch.tensor([0.0, 1.0]))


def test_bad_logit_rank():
    with pytest.raises(InvalidSetting, match="logits have shape"):
        FocalLoss()(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
