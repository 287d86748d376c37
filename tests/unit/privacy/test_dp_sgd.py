"""Tests for DP-SGD: config checks, noise calibration, model repair and private training with Opacus."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from app_custom.core.privacy import _training, dp_sgd
from app_custom.core.privacy._loading import BatchedTensorDataset, first_item, tensor_data_loader
from app_custom.core.privacy.accounting import epsilon_after_steps
from app_custom.core.privacy.dp_sgd import (
    DPSGDConfig,
    calibrate_noise_multiplier,
    epsilon_spent,
    make_private,
    repair_model,
    train_private_epoch,
    unwrap,
)
from app_custom.core.privacy.errors import BudgetExceeded, InvalidPrivacySetting

VALID = {"target_epsilon": 1.0, "target_delta": 1e-5, "max_grad_norm": 1.0, "epochs": 2, "batch_size": 32}


def _accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(features).argmax(1) == labels).float().mean())


def _fit(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, epochs: int = 30) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(features), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
            optimizer.step()
    return model


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"target_epsilon": math.nan}, "target_epsilon=nan"),
        ({"target_epsilon": math.inf}, "target_epsilon=inf"),
        ({"target_epsilon": 0.0}, "target_epsilon=0.0"),
        ({"target_epsilon": -1.0}, "target_epsilon=-1.0"),
        ({"target_epsilon": "3"}, "target_epsilon='3'"),
        ({"target_delta": 1.0}, "target_delta=1.0"),
        ({"target_delta": 1.5}, "target_delta=1.5"),
        ({"target_delta": 0.0}, "target_delta=0.0"),
        ({"target_delta": math.nan}, "target_delta=nan"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
        ({"max_grad_norm": -0.5}, "max_grad_norm=-0.5"),
        ({"max_grad_norm": math.inf}, "max_grad_norm=inf"),
        ({"epochs": 0}, "epochs=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"accountant": "prv"}, "accountant='prv'"),
        ({"accountant": "gdp"}, "accountant='gdp'"),
        ({"sample_rate": 0.1}, "set exactly one of batch_size and sample_rate"),
        ({"batch_size": None}, "set exactly one of batch_size and sample_rate"),
        ({"epsilon": 3.0}, "epsilon=3.0: Extra inputs are not permitted"),
    ],
)
def test_config_rejects(change, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment) as caught:
        DPSGDConfig(**{**VALID, **change})
    assert "invalid DPSGDConfig" in str(caught.value)


def test_config_sample_rate_range():
    settings_ = {**VALID, "batch_size": None}
    with pytest.raises(InvalidPrivacySetting, match="sample_rate=0.0"):
        DPSGDConfig(**settings_, sample_rate=0.0)
    with pytest.raises(InvalidPrivacySetting, match="sample_rate=1.01"):
        DPSGDConfig(**settings_, sample_rate=1.01)
    assert DPSGDConfig(**settings_, sample_rate=1.0).sample_rate_for(100) == 1.0


def test_config_validate_json_rejects():
    with pytest.raises(InvalidPrivacySetting, match="target_epsilon=-2"):
        DPSGDConfig.model_validate_json(
            '{"target_epsilon": -2, "target_delta": 1e-5, "max_grad_norm": 1, "epochs": 1, "batch_size": 8}'
        )


def test_config_copy_revalidates():
    with pytest.raises(InvalidPrivacySetting, match="target_epsilon=nan"):
        DPSGDConfig(**VALID).model_copy(update={"target_epsilon": math.nan})


def test_delta_against_num_examples():
    config = DPSGDConfig(**{**VALID, "target_delta": 1e-2})
    with pytest.raises(InvalidPrivacySetting, match="below 1/num_examples"):
        config.check_num_examples(200)
    config.check_num_examples(99)


def test_batch_larger_than_data():
    with pytest.raises(InvalidPrivacySetting, match="batch_size=32: the site has only 10 records"):
        DPSGDConfig(**VALID).check_num_examples(10)


# --- calibration ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_epsilon", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("sample_rate", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("steps", [100, 1000])
def test_calibration_within_target(target_epsilon, sample_rate, steps):
    config = DPSGDConfig(**{**VALID, "target_epsilon": target_epsilon, "batch_size": None, "sample_rate": sample_rate})
    noise_multiplier = calibrate_noise_multiplier(config, 10_000, steps)
    epsilon = epsilon_after_steps(steps, noise_multiplier, sample_rate, config.target_delta)
    assert epsilon <= target_epsilon
    assert epsilon >= target_epsilon - 0.05  # not wastefully noisy either


@settings(max_examples=40, deadline=None)
@given(
    target_epsilon=st.floats(min_value=0.3, max_value=20.0),
    steps=st.integers(min_value=1, max_value=5000),
    delta_exponent=st.integers(min_value=5, max_value=9),
)
def test_full_batch_calibration_within_target(target_epsilon, steps, delta_exponent):
    delta = 10.0**-delta_exponent
    config = DPSGDConfig(**{**VALID, "target_epsilon": target_epsilon, "target_delta": delta, "batch_size": 100})
    noise_multiplier = calibrate_noise_multiplier(config, 100, steps)
    assert epsilon_after_steps(steps, noise_multiplier, 1.0, delta) <= target_epsilon


def test_calibration_nudges_low_answer(monkeypatch):
    # Simulate an Opacus result 20 % too small: the recomputation must raise it until epsilon meets the target.
    original = dp_sgd.get_noise_multiplier
    monkeypatch.setattr(dp_sgd, "get_noise_multiplier", lambda **kwargs: 0.8 * original(**kwargs))
    config = DPSGDConfig(**{**VALID, "batch_size": None, "sample_rate": 1.0})
    noise_multiplier = calibrate_noise_multiplier(config, 10_000, 200)
    assert noise_multiplier > 0.8 * original(target_epsilon=1.0, target_delta=1e-5, sample_rate=1.0, steps=200)
    assert epsilon_after_steps(200, noise_multiplier, 1.0, 1e-5) <= 1.0


def test_calibration_below_rdp_floor():
    config = DPSGDConfig(**{**VALID, "target_epsilon": 0.05, "batch_size": 100})
    with pytest.raises(InvalidPrivacySetting, match="cannot state an epsilon below 0.103"):
        calibrate_noise_multiplier(config, 100, 10)


def test_calibration_needs_huge_noise():
    config = DPSGDConfig(**{**VALID, "target_epsilon": 0.2, "batch_size": 100})
    with pytest.raises(InvalidPrivacySetting, match="needs a noise_multiplier above 1e[+]06"):
        calibrate_noise_multiplier(config, 100, 10**14)


@pytest.mark.parametrize(("steps", "fragment"), [(0, "steps=0"), (-5, "steps=-5"), (2.0, "steps=2.0")])
def test_calibration_bad_steps(steps, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        calibrate_noise_multiplier(DPSGDConfig(**VALID), 1000, steps)


def test_calibration_rejects_dict_config():
    with pytest.raises(InvalidPrivacySetting, match="expected a DPSGDConfig"):
        calibrate_noise_multiplier(VALID, 1000, 10)  # type: ignore[arg-type]


# --- model repair ---------------------------------------------------------------------------------------------


def test_repair_passes_validation(batch_norm_mlp):
    repaired = repair_model(batch_norm_mlp)
    ModuleValidator.validate(repaired, strict=True)
    assert not any(isinstance(module, nn.BatchNorm1d) for module in repaired.modules())
    assert all(not getattr(module, "inplace", False) for module in repaired.modules())


def test_repair_leaves_original(batch_norm_mlp):
    repair_model(batch_norm_mlp)
    assert isinstance(batch_norm_mlp[1], nn.BatchNorm1d)
    assert batch_norm_mlp[2].inplace is True


def test_repair_keeps_affine(batch_norm_mlp):
    with torch.no_grad():
        batch_norm_mlp[1].weight.fill_(2.0)
        batch_norm_mlp[1].bias.fill_(-1.0)
    repaired = repair_model(batch_norm_mlp)
    assert torch.equal(repaired[1].weight, torch.full((32,), 2.0))
    assert torch.equal(repaired[1].bias, torch.full((32,), -1.0))


def test_repair_keeps_signal(batch_norm_mlp, breast_cancer):
    x_train, y_train, x_test, y_test = breast_cancer
    majority = max(float(y_test.float().mean()), 1 - float(y_test.float().mean()))

    repaired = _fit(repair_model(copy.deepcopy(batch_norm_mlp)), x_train, y_train)
    naive = _fit(ModuleValidator.fix(copy.deepcopy(batch_norm_mlp)), x_train, y_train)

    assert _accuracy(repaired, x_test, y_test) > 0.9
    assert _accuracy(naive, x_test, y_test) <= majority + 0.02
    with torch.no_grad():
        assert float(repaired(x_test).std(0).max()) > 0.1
        assert float(naive(x_test).std(0).max()) < 1e-3  # the naive fix outputs a constant


# --- private training -----------------------------------------------------------------------------------------


def _loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int = 0) -> DataLoader:
    return DataLoader(
        TensorDataset(features, labels), batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )


def test_private_training_learns(batch_norm_mlp, breast_cancer):
    x_train, y_train, x_test, y_test = breast_cancer
    model = repair_model(batch_norm_mlp)
    config = DPSGDConfig(target_epsilon=3.0, target_delta=1e-5, max_grad_norm=1.0, epochs=15, batch_size=64)
    training = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        _loader(x_train, y_train, 64),
        config,
        noise_generator=torch.Generator().manual_seed(1),
    )
    for _ in range(config.epochs):
        train_private_epoch(training, nn.functional.cross_entropy)

    assert training.steps_taken == training.max_steps
    assert training.epsilon() <= config.target_epsilon
    assert epsilon_spent(training.engine, 1e-5) == training.epsilon()
    assert _accuracy(unwrap(training.model), x_test, y_test) > 0.85


def test_steps_past_target_raise(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    config = DPSGDConfig(target_epsilon=1.0, target_delta=1e-5, max_grad_norm=1.0, epochs=1, batch_size=64)
    training = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(x_train, y_train, 64), config)
    train_private_epoch(training, nn.functional.cross_entropy)
    weights_before = unwrap(training.model).state_dict()["0.weight"].clone()

    with pytest.raises(BudgetExceeded, match="another step would exceed target_epsilon"):
        train_private_epoch(training, nn.functional.cross_entropy)
    assert torch.equal(unwrap(training.model).state_dict()["0.weight"], weights_before)
    assert training.epsilon() <= 1.0


def test_empty_poisson_batches(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    features, labels = x_train[:20], y_train[:20]
    model = nn.Sequential(nn.Linear(30, 8), nn.GroupNorm(1, 8), nn.ReLU(), nn.Linear(8, 2))
    config = DPSGDConfig(target_epsilon=5.0, target_delta=1e-3, max_grad_norm=1.0, epochs=3, batch_size=1)
    training = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        _loader(features, labels, 1),
        config,
        noise_generator=torch.Generator().manual_seed(0),
    )
    assert training.sample_rate == pytest.approx(1 / 20)

    results = [train_private_epoch(training, nn.functional.cross_entropy) for _ in range(3)]

    assert sum(result.num_empty_batches for result in results) > 0  # P(empty) = 0.95**20, about 0.36
    assert training.steps_taken == sum(result.num_steps for result in results)  # empty steps are accounted
    assert all(math.isfinite(result.mean_loss) for result in results)
    assert all(torch.isfinite(parameter).all() for parameter in unwrap(training.model).parameters())
    assert training.epsilon() <= config.target_epsilon


def test_noise_only_step_moves_params():
    model = nn.Sequential(nn.Linear(4, 2))
    features, labels = torch.randn(10, 4), torch.randint(0, 2, (10,))
    config = DPSGDConfig(target_epsilon=1.0, target_delta=1e-3, max_grad_norm=1.0, epochs=1, batch_size=1)
    training = make_private(model, torch.optim.SGD(model.parameters(), lr=1.0), _loader(features, labels, 1), config)
    before = unwrap(training.model).state_dict()["0.weight"].clone()

    _training._noise_only_step(training.optimizer)

    assert training.steps_taken == 1
    assert not torch.equal(unwrap(training.model).state_dict()["0.weight"], before)


def test_make_private_rejects_batch_norm(batch_norm_mlp, breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    optimizer = torch.optim.SGD(batch_norm_mlp.parameters(), lr=0.1)
    with pytest.raises(InvalidPrivacySetting, match="repair_model"):
        make_private(batch_norm_mlp, optimizer, _loader(x_train, y_train, 32), DPSGDConfig(**VALID))


def test_make_private_rejects_loader_mismatch(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InvalidPrivacySetting, match="batch_size=64 differs from the config's batch_size=32"):
        make_private(model, optimizer, _loader(x_train, y_train, 64), DPSGDConfig(**VALID))
    rate_config = DPSGDConfig(**{**VALID, "batch_size": None, "sample_rate": 0.5})
    with pytest.raises(InvalidPrivacySetting, match="Build the DataLoader with batch_size=199"):
        make_private(model, optimizer, _loader(x_train, y_train, 64), rate_config)


def test_make_private_rejects_large_delta(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    config = DPSGDConfig(**{**VALID, "target_delta": 0.01})
    with pytest.raises(InvalidPrivacySetting, match="target_delta=0.01"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(x_train, y_train, 32), config)


def test_unwrap_plain_keys(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    training = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(x_train, y_train, 32), DPSGDConfig(**VALID)
    )
    assert unwrap(training.model) is model
    assert set(unwrap(training.model).state_dict()) == {"0.weight", "0.bias"}
    assert unwrap(model) is model


def test_epsilon_spent_bad_delta(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    training = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), _loader(x_train, y_train, 32), DPSGDConfig(**VALID)
    )
    with pytest.raises(InvalidPrivacySetting, match="delta=1.0"):
        epsilon_spent(training.engine, 1.0)


# --- loading and per-sample gradient modes --------------------------------------------------------------------


def test_tensor_loader_fetches_rows():
    features, labels = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    dataset = tensor_data_loader(features, labels, batch_size=2).dataset

    rows, row_labels = first_item(dataset.__getitems__([4, 1]))
    empty_rows, empty_labels = first_item(dataset.__getitems__([]))

    assert torch.equal(rows, features[[4, 1]])
    assert torch.equal(row_labels, labels[[4, 1]])
    assert empty_rows.shape == (0, 2)
    assert empty_labels.shape == (0,)


def test_tensor_loader_empty_batches(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 8), nn.GroupNorm(1, 8), nn.ReLU(), nn.Linear(8, 2))
    config = DPSGDConfig(target_epsilon=5.0, target_delta=1e-3, max_grad_norm=1.0, epochs=3, batch_size=1)
    training = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        tensor_data_loader(x_train[:20], y_train[:20], batch_size=1),
        config,
        noise_generator=torch.Generator().manual_seed(0),
    )
    assert training.sample_rate == pytest.approx(1 / 20)

    results = [train_private_epoch(training, nn.functional.cross_entropy) for _ in range(3)]

    assert sum(result.num_empty_batches for result in results) > 0  # P(empty) = 0.95**20, about 0.36
    assert sum(result.num_examples for result in results) > 0
    assert training.steps_taken == sum(result.num_steps for result in results)
    assert all(torch.isfinite(parameter).all() for parameter in unwrap(training.model).parameters())
    assert training.epsilon() <= config.target_epsilon


def _one_private_step(
    mode: str, features: torch.Tensor, labels: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return the weights after one DP-SGD step and the clipped gradient sums (before noise) it used."""
    model = nn.Sequential(nn.Linear(30, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.nn.init.normal_(model[0].weight, generator=torch.Generator().manual_seed(0))
    config = DPSGDConfig(target_epsilon=3.0, target_delta=1e-5, max_grad_norm=0.1, epochs=1, batch_size=32)
    training = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        tensor_data_loader(features, labels, batch_size=32),
        config,
        noise_generator=torch.Generator().manual_seed(3),
        grad_sample_mode=mode,
    )
    training.optimizer.zero_grad()
    nn.functional.cross_entropy(training.model(features[:32]), labels[:32]).backward()
    training.optimizer.step()
    plain = unwrap(training.model)
    weights = {key: value.clone() for key, value in plain.state_dict().items()}
    clipped_sums = {name: parameter.summed_grad.clone() for name, parameter in plain.named_parameters()}
    return weights, clipped_sums


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_opacus_grad_sample_modes_agree(mode, breast_cancer):
    # Opacus draws the same seeded noise in the same order in each of its modes, so one step gives the same weights.
    x_train, y_train, _, _ = breast_cancer
    torch.manual_seed(0)  # the same initial weights in both runs
    expected, _ = _one_private_step("ew", x_train, y_train)
    torch.manual_seed(0)
    found, _ = _one_private_step(mode, x_train, y_train)

    assert set(found) == set(expected)
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["auto", "fast_linear", "hooks"])
def test_clipped_sums_agree_across_modes(mode, breast_cancer):
    # fast_linear draws its noise for the whole model at once, so compare the clipped sums the noise was added to.
    x_train, y_train, _, _ = breast_cancer
    torch.manual_seed(0)
    _, expected = _one_private_step("ew", x_train, y_train)
    torch.manual_seed(0)
    _, found = _one_private_step(mode, x_train, y_train)

    assert set(found) == set(expected)
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-6)


def test_make_private_rejects_grad_sample_mode(breast_cancer):
    x_train, y_train, _, _ = breast_cancer
    model = nn.Sequential(nn.Linear(30, 2))
    with pytest.raises(InvalidPrivacySetting, match="grad_sample_mode='ghost'"):
        make_private(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            _loader(x_train, y_train, 32),
            DPSGDConfig(**VALID),
            grad_sample_mode="ghost",
        )


def test_batched_fetch_shuffle_matches():
    # train_local shuffles with BatchedTensorDataset; a seed must give the batches a TensorDataset loader gives.
    features, labels = torch.randn(103, 4), torch.rand(103)
    per_row = DataLoader(TensorDataset(features, labels), batch_size=16, shuffle=True,
                         generator=torch.Generator().manual_seed(5))
    batched = DataLoader(BatchedTensorDataset(features, labels), batch_size=16, shuffle=True,
                         generator=torch.Generator().manual_seed(5), collate_fn=first_item)
    for _ in range(2):
        for (x_row, y_row), (x_batch, y_batch) in zip(per_row, batched, strict=True):
            assert torch.equal(x_row, x_batch)
            assert torch.equal(y_row, y_batch)
