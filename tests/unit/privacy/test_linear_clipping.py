"""The one-pass per-sample clipping of ``_linear_clipping``: clipped sums against record-by-record gradients, the
bound on one record's influence, and every refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app_custom.core.privacy import _training
from app_custom.core.privacy._linear_clipping import LinearClipper
from app_custom.core.privacy._loading import tensor_data_loader
from app_custom.core.privacy.dp_sgd import (
    DPSGDConfig,
    make_private,
    resolve_grad_sample_mode,
    train_private_epoch,
    unwrap,
)
from app_custom.core.privacy.errors import InvalidPrivacySetting

NUM_FEATURES = 6


def _mlp(seed: int = 0, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(NUM_FEATURES, 8, bias=bias), nn.Tanh(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))


def _batch(seed: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Rows of very different scale, so some records are clipped and others are not.
    scale = torch.logspace(-2, 1, rows).unsqueeze(1)
    return torch.randn(rows, NUM_FEATURES, generator=generator) * scale, torch.randint(0, 3, (rows,), generator=generator)


def _reference_clipped_sums(model: nn.Module, features, labels, max_grad_norm: float) -> dict[str, torch.Tensor]:
    """Clip each record's own gradient, computed by torch one record at a time, and sum them."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p) for name, p in parameters.items()}
    for row in range(len(features)):
        loss = nn.functional.cross_entropy(model(features[row : row + 1]), labels[row : row + 1])
        grads = torch.autograd.grad(loss, list(parameters.values()))
        norm = torch.sqrt(sum(grad.square().sum() for grad in grads))
        factor = min(1.0, max_grad_norm / (float(norm) + 1e-6))
        for name, grad in zip(parameters, grads):
            total[name] += factor * grad
    return total


def _clipped_sums(model: nn.Module, features, labels, max_grad_norm: float) -> dict[str, torch.Tensor]:
    clipper = LinearClipper(model)
    nn.functional.cross_entropy(model(features), labels).backward()
    sums = clipper.clipped_sums(max_grad_norm, "mean")
    clipper.remove()
    names = {id(p): name for name, p in model.named_parameters()}
    return {names[id(p)]: value for p, value in sums.items()}


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.5, 1e3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clipped_sums_match_per_record(max_grad_norm, seed):
    model = _mlp(seed)
    features, labels = _batch(seed)
    expected = _reference_clipped_sums(model, features, labels, max_grad_norm)

    found = _clipped_sums(model, features, labels, max_grad_norm)

    assert set(found) == set(expected)
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-4, atol=1e-6)


def test_frozen_and_biasless_layers():
    model = _mlp(3, bias=False)
    model[2].weight.requires_grad_(False)
    features, labels = _batch(3)
    expected = _reference_clipped_sums(model, features, labels, 0.2)

    found = _clipped_sums(model, features, labels, 0.2)

    assert set(found) == {"0.weight", "2.bias", "4.weight", "4.bias"}
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("removed", [0, 7, 15])
def test_one_record_sensitivity_bounded(removed):
    # The sensitivity DP-SGD's noise is calibrated for: adding or removing one record changes the clipped sum by
    # at most max_grad_norm in L2 norm, however large its gradient.
    model = _mlp(4)
    features, labels = _batch(4)
    features[removed] *= 1e4
    keep = [row for row in range(len(features)) if row != removed]

    with_record = _clipped_sums(model, features, labels, 0.3)
    model.zero_grad()
    without_record = _clipped_sums(model, features[keep], labels[keep], 0.3)

    difference = torch.sqrt(sum((with_record[name] - without_record[name]).square().sum() for name in with_record))
    assert float(difference) <= 0.3 * (1 + 1e-5)
    assert float(difference) > 0.29  # the large record is clipped to the bound, not dropped


def test_auto_mode_linear_models_only():
    assert resolve_grad_sample_mode(_mlp(), "auto") == "fast_linear"
    with_norm = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(1, 8), nn.Linear(8, 2))
    assert resolve_grad_sample_mode(with_norm, "auto") == "ew"
    frozen_norm = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(1, 8), nn.Linear(8, 2))
    frozen_norm[1].requires_grad_(False)
    assert resolve_grad_sample_mode(frozen_norm, "auto") == "fast_linear"


def test_refuses_other_trainable_layers():
    with_norm = nn.Sequential(nn.Linear(4, 8), nn.GroupNorm(1, 8), nn.Linear(8, 2))
    with pytest.raises(InvalidPrivacySetting, match=r"\['1.weight', '1.bias'\] are not; use grad_sample_mode="):
        resolve_grad_sample_mode(with_norm, "fast_linear")
    with pytest.raises(InvalidPrivacySetting, match="use grad_sample_mode='ew'"):
        LinearClipper(with_norm)
    frozen = nn.Sequential(nn.Linear(4, 2))
    frozen.requires_grad_(False)
    with pytest.raises(InvalidPrivacySetting, match="found no trainable nn.Linear"):
        LinearClipper(frozen)


def test_refuses_non_2d_inputs():
    model = _mlp()
    LinearClipper(model)
    with pytest.raises(InvalidPrivacySetting, match=r"needs 2-D \(batch, features\) inputs .* got shape \(2, 3, 6\)"):
        model(torch.randn(2, 3, NUM_FEATURES))


def test_refuses_a_layer_used_twice():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    LinearClipper(model)
    with pytest.raises(InvalidPrivacySetting, match="got two gradients for Linear.*ran twice in one forward pass"):
        model(torch.randn(3, 4)).sum().backward()


def test_refuses_second_backward():
    model = _mlp()
    LinearClipper(model)
    features, labels = _batch(0)
    loss = nn.functional.cross_entropy(model(features), labels)
    loss.backward(retain_graph=True)
    with pytest.raises(InvalidPrivacySetting, match="backward ran twice for one batch"):
        loss.backward()


def test_refuses_step_without_backward():
    model = _mlp()
    clipper = LinearClipper(model)
    with pytest.raises(InvalidPrivacySetting, match="no batch to clip"):
        clipper.clipped_sums(1.0, "mean")
    model(_batch(0)[0])  # forward only
    with pytest.raises(InvalidPrivacySetting, match="no batch to clip"):
        clipper.clipped_sums(1.0, "mean")


class _TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Linear(NUM_FEATURES, 3), nn.Linear(NUM_FEATURES, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.unused(features)
        return self.used(features)


def test_refuses_layer_outside_loss():
    model = _TwoHeads()
    clipper = LinearClipper(model)
    features, labels = _batch(0)
    nn.functional.cross_entropy(model(features), labels).backward()
    with pytest.raises(InvalidPrivacySetting, match=r"got no gradient for Linear\(in_features=6"):
        clipper.clipped_sums(1.0, "mean")


def test_evaluation_pass_is_not_captured():
    model = _mlp()
    clipper = LinearClipper(model)
    with torch.no_grad():
        model(torch.randn(2, 3, NUM_FEATURES))  # no 2-D check without gradients
        model(_batch(0)[0])
    with pytest.raises(InvalidPrivacySetting, match="no batch to clip"):
        clipper.clipped_sums(1.0, "mean")


def test_remove_restores_layers():
    model = _mlp()
    features = _batch(0)[0]
    expected = model(features)
    clipper = LinearClipper(model)
    torch.testing.assert_close(model(features), expected, rtol=0, atol=0)
    clipper.remove()
    assert all("forward" not in vars(layer) for layer in model.modules())
    nn.functional.cross_entropy(model(features), _batch(0)[1]).backward()
    assert all(p.grad is not None for p in model.parameters())


def _private(model: nn.Module, rows: int = 40, batch_size: int = 8, **kwargs):
    features, labels = _batch(5, rows)
    config = DPSGDConfig(target_epsilon=3.0, target_delta=1e-3, max_grad_norm=0.5, epochs=4, batch_size=batch_size)
    loader = tensor_data_loader(features, labels, batch_size=batch_size)
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, config, **kwargs), config


def test_make_private_foreign_optimizer():
    model = _mlp()
    features, labels = _batch(5, 40)
    config = DPSGDConfig(target_epsilon=3.0, target_delta=1e-3, max_grad_norm=0.5, epochs=1, batch_size=8)
    other = nn.Linear(2, 2)
    with pytest.raises(InvalidPrivacySetting, match="parameters that are not the model's"):
        make_private(model, torch.optim.SGD(other.parameters(), lr=0.1),
                     tensor_data_loader(features, labels, batch_size=8), config)


def test_fast_linear_trains_and_accounts():
    training, config = _private(_mlp(6), noise_generator=torch.Generator().manual_seed(0))
    assert training.grad_sample_mode == "fast_linear"
    assert unwrap(training.model) is training.model

    results = [train_private_epoch(training, nn.functional.cross_entropy) for _ in range(3)]

    assert training.steps_taken == sum(result.num_steps for result in results) == 15
    assert 0 < training.epsilon() <= config.target_epsilon
    assert all(torch.isfinite(p).all() for p in training.model.parameters())


def test_fast_linear_noise_only_step():
    training, _ = _private(_mlp(7))
    before = [p.detach().clone() for p in training.model.parameters()]

    _training._noise_only_step(training.optimizer)

    assert training.steps_taken == 1
    assert all(not torch.equal(p, old) for p, old in zip(training.model.parameters(), before))
    # The next real batch is clipped as usual.
    features, labels = _batch(8, 8)
    training.optimizer.zero_grad()
    nn.functional.cross_entropy(training.model(features), labels).backward()
    training.optimizer.step()
    assert training.steps_taken == 2


def test_fast_linear_noise_spread():
    # An empty batch releases noise only: p.grad = N(0, (noise_multiplier * C)^2) / expected_batch_size per coordinate.
    model = nn.Sequential(nn.Linear(200, 100), nn.Tanh(), nn.Linear(100, 50))
    training, config = _private(model, rows=400, batch_size=40, noise_generator=torch.Generator().manual_seed(1))
    optimizer = training.optimizer

    optimizer.step_empty_batch()

    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    expected_std = training.noise_multiplier * config.max_grad_norm / optimizer.expected_batch_size
    assert grads.numel() == 25_150
    assert float(grads.mean()) == pytest.approx(0.0, abs=4 * expected_std / grads.numel() ** 0.5)
    assert float(grads.std()) == pytest.approx(expected_std, rel=0.03)
    # Each parameter's gradient is its own slice of the noise, not a repeat of another's.
    assert not torch.equal(model[0].bias.grad[:50], model[2].bias.grad)


def test_step_ignores_replaced_grad():
    training, _ = _private(_mlp(9), noise_generator=torch.Generator().manual_seed(2))
    model, optimizer = training.model, training.optimizer
    features, labels = _batch(9, 8)
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(features), labels).backward()
    model[0].weight.grad = torch.full_like(model[0].weight, 1e6)  # an unclipped gradient set by hand
    before = model[0].weight.detach().clone()

    optimizer.step()

    assert float((model[0].weight.detach() - before).abs().max()) < 1e3
    assert model[0].weight.grad.abs().max() < 1e3
