"""Attacks on the one-pass clipping of ``_linear_clipping``: models, losses and call sequences that must either be
clipped exactly like a record-by-record reference or be rejected with ``InvalidPrivacySetting``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app_custom.core.privacy._linear_clipping import LinearClipper, unsupported_parameters
from app_custom.core.privacy._loading import tensor_data_loader
from app_custom.core.privacy.dp_sgd import DPSGDConfig, make_private, resolve_grad_sample_mode
from app_custom.core.privacy.errors import InvalidPrivacySetting

NUM_FEATURES = 6
MAX_GRAD_NORM = 0.5


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(NUM_FEATURES, 8), nn.Tanh(), nn.Linear(8, 3))


def _batch(seed: int, rows: int = 8, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Rows of very different scale, so some records are clipped and others are not.
    scale = torch.logspace(-2, 1, rows).unsqueeze(1)
    features = torch.randn(rows, NUM_FEATURES, generator=generator) * scale
    return features.to(dtype), torch.randint(0, 3, (rows,), generator=generator)


def _private(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, dtype: torch.dtype = torch.float32):
    """Return ``make_private``'s result for ``model`` with the noise switched off, so sums can be compared."""
    features, labels = _batch(5, 40, dtype)
    config = DPSGDConfig(target_epsilon=3.0, target_delta=1e-3, max_grad_norm=MAX_GRAD_NORM, epochs=4, batch_size=8)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1)
    training = make_private(model, optimizer, tensor_data_loader(features, labels, batch_size=8), config,
                            grad_sample_mode="fast_linear")
    training.optimizer.noise_multiplier = 0.0
    return training


def _record_loss(output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(output, label)


def _reference(model: nn.Module, features, labels, weights=None) -> list[torch.Tensor]:
    """Clip each record's own gradient, from a separate forward and backward pass on a copy, and sum them."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in parameters]
    for row in range(len(features)):
        loss = _record_loss(model(features[row : row + 1]), labels[row : row + 1])
        if weights is not None:
            loss = loss * weights[row]
        grads = torch.autograd.grad(loss, parameters)
        norm = float(torch.sqrt(sum(grad.square().sum() for grad in grads)))
        factor = min(1.0, MAX_GRAD_NORM / (norm + 1e-6))
        for summed, grad in zip(total, grads):
            summed += factor * grad
    return total


def _reference_on_copy(model: nn.Module, features, labels, weights=None) -> list[torch.Tensor]:
    copy = nn.Sequential(nn.Linear(NUM_FEATURES, 8), nn.Tanh(), nn.Linear(8, 3)).to(features.dtype)
    copy.load_state_dict(model.state_dict())
    return _reference(copy, features, labels, weights)


def _step(training, features, labels, weights=None) -> None:
    optimizer = training.optimizer
    optimizer.zero_grad()
    output = training.model(features)
    if weights is None:
        loss = nn.functional.cross_entropy(output, labels)
    else:
        loss = (nn.functional.cross_entropy(output, labels, reduction="none") * weights).mean()
    loss.backward()
    optimizer.step()


def _assert_sums_match(model: nn.Module, expected: list[torch.Tensor]) -> None:
    found = [p.summed_grad for p in model.parameters()]
    assert len(found) == len(expected)
    for value, reference in zip(found, expected):
        torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-6)


# --- models the clipper must reject ---------------------------------------------------------------------------


def test_tied_weights_rejected():
    first, second = nn.Linear(NUM_FEATURES, NUM_FEATURES), nn.Linear(NUM_FEATURES, NUM_FEATURES)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second)

    assert unsupported_parameters(model) == ["2.weight"]
    with pytest.raises(InvalidPrivacySetting, match=r"\['2.weight'\] are not"):
        resolve_grad_sample_mode(model, "fast_linear")
    with pytest.raises(InvalidPrivacySetting, match="use grad_sample_mode='ew'"):
        LinearClipper(model)


class _ScaledLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features) * self.scale


class _MaskedLinear(nn.Linear):
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(features, self.weight.triu(), self.bias)


class _PlainSubclass(nn.Linear):
    pass


def test_subclass_extra_parameter_rejected():
    model = nn.Sequential(_ScaledLinear(NUM_FEATURES, 3))

    assert unsupported_parameters(model) == ["0.weight", "0.bias", "0.scale"]
    assert resolve_grad_sample_mode(model, "auto") == "ew"


def test_subclass_own_forward_rejected():
    model = nn.Sequential(_MaskedLinear(NUM_FEATURES, 3))

    assert unsupported_parameters(model) == ["0.weight", "0.bias"]
    with pytest.raises(InvalidPrivacySetting, match="use grad_sample_mode='ew'"):
        LinearClipper(model)


def test_plain_subclass_accepted():
    assert resolve_grad_sample_mode(nn.Sequential(_PlainSubclass(NUM_FEATURES, 3)), "auto") == "fast_linear"


def test_instance_forward_rejected():
    model = _mlp()
    model[2].forward = lambda features: nn.functional.linear(features, model[2].weight * 2, model[2].bias)

    assert unsupported_parameters(model) == ["2.weight", "2.bias"]


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_weight_norm_rejected():
    model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(NUM_FEATURES, 3)))

    assert unsupported_parameters(model) == ["0.weight_g", "0.weight_v"]
    with pytest.raises(InvalidPrivacySetting, match="are not; use grad_sample_mode="):
        resolve_grad_sample_mode(model, "fast_linear")


def test_parametrized_weight_rejected():
    model = nn.Sequential(torch.nn.utils.parametrizations.weight_norm(nn.Linear(NUM_FEATURES, 3)))

    assert resolve_grad_sample_mode(model, "auto") == "ew"


class _ThreeRowsPerRecord(nn.Module):
    """Applies one nn.Linear to each third of a record: a reshape of (B, 6) to (3 * B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        records = features.shape[0]
        return self.layer(features.reshape(3 * records, 2)).reshape(records, 3, 3).mean(1)


class _TwoRecordsPerRow(nn.Module):
    """Applies one nn.Linear to pairs of records: a reshape of (B, 6) to (B / 2, 12)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2 * NUM_FEATURES, 6)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        records = features.shape[0]
        return self.layer(features.reshape(records // 2, 2 * NUM_FEATURES)).reshape(records, 3)


def test_several_rows_per_record_rejected():
    # Each of a record's 3 rows would be clipped on its own, so the record could move the sum by 3 * C.
    model = _ThreeRowsPerRecord()
    LinearClipper(model)

    with pytest.raises(InvalidPrivacySetting, match="got 24 rows and the model's input has 8 records"):
        model(_batch(1)[0])


def test_two_records_per_row_rejected():
    model = _TwoRecordsPerRow()
    LinearClipper(model)

    with pytest.raises(InvalidPrivacySetting, match="got 4 rows and the model's input has 8 records"):
        model(_batch(1)[0])


def test_one_dimensional_input_rejected():
    model = _mlp()
    LinearClipper(model)

    with pytest.raises(InvalidPrivacySetting, match=r"got shape \(6,\)"):
        model(torch.randn(NUM_FEATURES))


def test_create_graph_backward_rejected():
    model = _mlp()
    LinearClipper(model)
    features, labels = _batch(2)
    features.requires_grad_(True)
    loss = nn.functional.cross_entropy(model(features), labels)

    with pytest.raises(InvalidPrivacySetting, match="create_graph=True"):
        torch.autograd.grad(loss, features, create_graph=True)


# --- changes after make_private the optimizer must reject ------------------------------------------------------


def test_unfrozen_layer_rejected_at_step():
    # The unfrozen layer is not clipped: stepping it would release its raw gradient without noise.
    model = _mlp(1)
    model[0].requires_grad_(False)
    training = _private(model)
    model[0].requires_grad_(True)
    before = model[0].weight.detach().clone()

    with pytest.raises(InvalidPrivacySetting, match="trainable parameters changed since make_private"):
        _step(training, *_batch(3))
    assert torch.equal(model[0].weight, before)


def test_frozen_parameter_rejected_at_step():
    # A frozen parameter's slice of the flat buffer keeps the last step's sum, which SGD would release again.
    model = _mlp(2)
    training = _private(model)
    _step(training, *_batch(3))
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()

    with pytest.raises(InvalidPrivacySetting, match="changed since make_private"):
        _step(training, *_batch(4))
    assert torch.equal(model[0].weight, before)


def test_added_param_group_rejected():
    model = _mlp(3)
    training = _private(model)
    extra = nn.Linear(NUM_FEATURES, NUM_FEATURES)
    model.insert(0, extra)
    training.optimizer.add_param_group({"params": list(extra.parameters())})
    before = extra.weight.detach().clone()

    with pytest.raises(InvalidPrivacySetting, match="add_param_group"):
        _step(training, *_batch(3))
    assert torch.equal(extra.weight, before)


def test_foreign_grad_rejected_at_step():
    model = _mlp(4)
    model[0].bias.requires_grad_(False)
    training = _private(model)
    model[0].bias.grad = torch.ones_like(model[0].bias)  # SGD steps any parameter with a .grad

    with pytest.raises(InvalidPrivacySetting, match="has a .grad"):
        _step(training, *_batch(3))


def test_replaced_parameter_rejected():
    model = _mlp(5)
    training = _private(model)
    model[0].weight = nn.Parameter(torch.randn(8, NUM_FEATURES))

    with pytest.raises(InvalidPrivacySetting, match="frozen, unfrozen or replaced"):
        _step(training, *_batch(3))


def test_skip_step_signal_rejected():
    training = _private(_mlp(6))

    with pytest.raises(InvalidPrivacySetting, match="cannot skip steps"):
        training.optimizer.signal_skip_step(True)


# --- cases that must match the record-by-record reference -------------------------------------------------------


@pytest.mark.parametrize("optimizer_class", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", [1, 8])
def test_step_matches_reference(optimizer_class, dtype, rows):
    model = _mlp(7).to(dtype)
    training = _private(model, optimizer_class(model.parameters(), lr=0.01), dtype=dtype)
    features, labels = _batch(8, rows, dtype)
    expected = _reference_on_copy(model, features, labels)

    _step(training, features, labels)

    _assert_sums_match(model, expected)
    assert training.steps_taken == 1


def test_weighted_loss_matches_reference():
    model = _mlp(8)
    training = _private(model)
    features, labels = _batch(9)
    weights = torch.linspace(0.1, 5.0, len(features))
    expected = _reference_on_copy(model, features, labels, weights)

    _step(training, features, labels, weights)

    _assert_sums_match(model, expected)


def test_sum_loss_sensitivity_bounded():
    # A summed loss makes the clipper see B times each record's gradient, which is still clipped to C.
    model = _mlp(9)
    features, labels = _batch(10)
    features[3] *= 1e3
    keep = [row for row in range(len(features)) if row != 3]
    sums = []
    for rows in (list(range(len(features))), keep):
        clipper = LinearClipper(model)
        nn.functional.cross_entropy(model(features[rows]), labels[rows], reduction="sum").backward()
        sums.append(clipper.clipped_sums(MAX_GRAD_NORM, "mean"))
        clipper.remove()

    with_record, without_record = sums
    difference = torch.sqrt(sum((with_record[p] - without_record[p]).square().sum() for p in with_record))
    assert float(difference) <= MAX_GRAD_NORM * (1 + 1e-5)


def test_metric_pass_with_grad_allowed():
    # A second forward pass on another batch with gradients enabled (never backpropagated) changes nothing.
    model = _mlp(10)
    training = _private(model)
    features, labels = _batch(11)
    expected = _reference_on_copy(model, features, labels)

    training.optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(features), labels)
    model(_batch(12, rows=5)[0]).argmax(1)
    loss.backward()
    training.optimizer.step()

    _assert_sums_match(model, expected)


def test_zero_grad_before_backward():
    # zero_grad between forward and backward, a common loop order, must not drop the batch.
    model = _mlp(11)
    training = _private(model)
    features, labels = _batch(13)
    expected = _reference_on_copy(model, features, labels)

    loss = nn.functional.cross_entropy(model(features), labels)
    training.optimizer.zero_grad(set_to_none=False)
    loss.backward()
    training.optimizer.step()

    _assert_sums_match(model, expected)


def test_load_state_dict_keeps_clipping():
    # A FLARE round loads the global model into the same parameters before training.
    model = _mlp(12)
    training = _private(model)
    _step(training, *_batch(14))
    model.load_state_dict(_mlp(13).state_dict())
    features, labels = _batch(15)
    expected = _reference_on_copy(model, features, labels)

    _step(training, features, labels)

    _assert_sums_match(model, expected)


def test_empty_forward_batch_noise_only():
    model = _mlp(14)
    training = _private(model)
    features, labels = _batch(16, rows=0)

    _step(training, features, labels)

    assert all(torch.count_nonzero(p.summed_grad) == 0 for p in model.parameters())
    assert training.steps_taken == 1


def test_make_private_twice():
    # A second make_private on the same model takes the layers over; the first optimizer then refuses to step.
    model = _mlp(15)
    first = _private(model)
    second = _private(model)
    features, labels = _batch(17)
    expected = _reference_on_copy(model, features, labels)

    _step(second, features, labels)

    _assert_sums_match(model, expected)
    with pytest.raises(InvalidPrivacySetting, match="no batch to clip"):
        _step(first, features, labels)


def test_dict_input_batch_size():
    class _DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(NUM_FEATURES, 3)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.layer(batch["features"])

    model = _DictModel()
    clipper = LinearClipper(model)
    features, labels = _batch(18)

    nn.functional.cross_entropy(model({"features": features}), labels).backward()

    assert clipper.clipped_sums(MAX_GRAD_NORM, "mean")[model.layer.weight].shape == (3, NUM_FEATURES)
