"""Plain PyTorch training and evaluation used by the site scripts, the demo's baselines and the experiments."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from app_custom.core.metrics import binary_metrics
from app_custom.core.privacy._loading import BatchedTensorDataset, first_item, tensor_data_loader
from app_custom.core.privacy.accounting import epsilon_after_steps
from app_custom.core.privacy.dp_sgd import (
    DEFAULT_GRAD_SAMPLE_MODE,
    DPSGDConfig,
    PrivateTraining,
    make_private,
    train_private_epoch,
)


@dataclass(frozen=True)
class LocalTrainingConfig:
    """Local optimisation settings of one round at a site."""

    local_epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-3
    fedprox_mu: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.local_epochs < 1:
            raise ValueError(f"invalid local_epochs {self.local_epochs}: use 1 or more")
        if self.batch_size < 1:
            raise ValueError(f"invalid batch_size {self.batch_size}: use 1 or more")
        if not (self.learning_rate > 0 and np.isfinite(self.learning_rate)):
            raise ValueError(f"invalid learning_rate {self.learning_rate}: use a positive finite number")
        if not (self.fedprox_mu >= 0 and np.isfinite(self.fedprox_mu)):
            raise ValueError(f"invalid fedprox_mu {self.fedprox_mu}: use 0 (FedAvg) or a positive number")


@dataclass(frozen=True)
class TrainingOutcome:
    """Result of one round of local training: optimiser steps and the mean loss of its last epoch."""

    num_steps: int
    mean_loss: float


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: LocalTrainingConfig,
    loss_fn: nn.Module | None = None,
    global_params: Mapping[str, torch.Tensor] | None = None,
) -> TrainingOutcome:
    """Train ``model`` in place on (x, y).

    With ``config.fedprox_mu > 0`` and ``global_params`` the FedProx proximal term (mu/2)·||w − w_global||²
    (Li et al. 2020, "Federated Optimization in Heterogeneous Networks") is added to the loss.
    """
    from app_custom.core.fedprox import proximal_term

    generator = torch.Generator().manual_seed(config.seed)
    # The same shuffled batches as a DataLoader over a TensorDataset, each fetched with one tensor index.
    loader = DataLoader(
        BatchedTensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)),
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=first_item,
    )
    loss_fn = loss_fn or nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    steps = 0
    epoch_loss = 0.0
    for _ in range(config.local_epochs):
        epoch_loss, epoch_rows = 0.0, 0
        for features, labels in loader:
            optimizer.zero_grad()
            data_loss = loss_fn(model(features), labels)
            loss = data_loss
            if config.fedprox_mu > 0 and global_params is not None:
                loss = loss + proximal_term(model, global_params, config.fedprox_mu)
            loss.backward()
            optimizer.step()
            steps += 1
            epoch_loss += float(data_loss.detach()) * len(labels)
            epoch_rows += len(labels)
        epoch_loss /= max(epoch_rows, 1)
    return TrainingOutcome(num_steps=steps, mean_loss=epoch_loss)


def predict_scores(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Return the predicted probability of the positive class for each row."""
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.tensor(x, dtype=torch.float32))).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Return loss, ROC AUC, accuracy and balanced accuracy of ``model`` on (x, y); AUC is None when undefined."""
    return binary_metrics(y, predict_scores(model, x))


def state_dict_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Copy a model's parameters and buffers into numpy arrays."""
    return {key: value.detach().cpu().numpy().copy() for key, value in model.state_dict().items()}


def load_numpy_params(model: nn.Module, params: Mapping[str, np.ndarray | torch.Tensor]) -> None:
    """Load numpy arrays or tensors into ``model`` (strict: every key must match)."""
    tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in params.items()}
    model.load_state_dict(tensors, strict=True)


def make_private_trainer(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: DPSGDConfig,
    *,
    batch_size: int,
    learning_rate: float,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
) -> PrivateTraining:
    """Wrap ``model`` for DP-SGD on (x, y) with Adam and noise calibrated for the whole job.

    ``config.epochs`` must be the job's total number of local epochs (rounds times local epochs), so the target
    epsilon holds for the whole job. The wrapped model shares its parameters with ``model``: loading a global
    model into ``model`` updates the wrapped one.

    Privacy: protects each training record at the site, against anyone who sees the site's updates. Batches are
    drawn by Poisson sampling from an unseeded generator, and the noise is unseeded, because a predictable
    sampler or noise stream would void the guarantee. Opacus' own Poisson sampler draws every batch; the loader
    only fetches the drawn rows with one tensor index (``tensor_data_loader``), so the accounting is unchanged.
    Invalid settings raise ``InvalidPrivacySetting`` before any data is touched.

    Raises:
        InvalidPrivacySetting: A setting is invalid for this data or the target epsilon cannot be met.
    """
    loader = tensor_data_loader(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), batch_size=batch_size
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    model.train()  # Opacus validates the model in training mode; evaluation may have left it in eval mode
    return make_private(model, optimizer, loader, config, grad_sample_mode=grad_sample_mode)


def steps_per_epoch(training: PrivateTraining) -> int:
    """Return the number of noisy steps one epoch takes: the batches of Opacus' Poisson loader."""
    return len(training.data_loader)


def epsilon_after_next_round(training: PrivateTraining, local_epochs: int) -> float:
    """Return the job's cumulative epsilon once ``local_epochs`` more epochs have trained.

    Privacy: computed with the RDP accountant at the sample rate Opacus 1.6 records, 1 / (batches of its Poisson
    loader). So a site can charge a round to its ledger before training it, and the charge equals what the
    accountant reports afterwards.
    """
    steps = training.steps_taken + local_epochs * steps_per_epoch(training)
    sample_rate = 1.0 / len(training.data_loader)
    return epsilon_after_steps(steps, training.noise_multiplier, sample_rate, training.config.target_delta)


def train_private_round(training: PrivateTraining, local_epochs: int, loss_fn: nn.Module) -> TrainingOutcome:
    """Train ``local_epochs`` epochs of DP-SGD, starting from fresh Adam moments as ``train_local`` does.

    Privacy: each step clips per-sample gradients and adds calibrated noise; a step past the calibrated total
    raises ``BudgetExceeded`` (see ``train_private_epoch``).
    """
    training.optimizer.original_optimizer.state.clear()
    steps = 0
    mean_loss = float("nan")
    for _ in range(local_epochs):
        result = train_private_epoch(training, loss_fn)
        steps += result.num_steps
        mean_loss = result.mean_loss
    return TrainingOutcome(num_steps=steps, mean_loss=mean_loss)
