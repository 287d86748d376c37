"""The DP-SGD epoch loop, with noise-only steps for empty Poisson batches; ``dp_sgd`` re-exports it."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from opacus.optimizers import DPOptimizer

from app_custom.core.privacy._linear_clipping import LinearClippingDPOptimizer
from app_custom.core.privacy.errors import BudgetExceeded

if TYPE_CHECKING:
    from app_custom.core.privacy.dp_sgd import PrivateTraining

__all__ = ["EpochResult", "train_private_epoch"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    """Step counts and mean loss of one private epoch.

    Attributes:
        num_steps: Noisy optimizer steps taken, empty batches included.
        num_empty_batches: Batches the Poisson sampler returned with no records.
        num_examples: Records seen.
        mean_loss: Mean loss over the records seen; NaN when every batch was empty.
    """

    num_steps: int
    num_empty_batches: int
    num_examples: int
    mean_loss: float


def _noise_only_step(optimizer: DPOptimizer) -> None:
    # An empty Poisson batch is still one run of the sampled Gaussian mechanism: the released step must be
    # pure noise and the accountant must count it. Skipping it would reveal that the batch was empty, which the
    # accounting does not cover. Empty per-sample gradients make Opacus clip nothing and add noise only.
    if isinstance(optimizer, LinearClippingDPOptimizer):
        optimizer.step_empty_batch()
        return
    for parameter in optimizer.params:
        parameter.grad_sample = torch.zeros((0, *parameter.shape), dtype=parameter.dtype, device=parameter.device)
    optimizer.step()


def train_private_epoch(
    training: PrivateTraining,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> EpochResult:
    """Run one epoch of DP-SGD over ``training.data_loader``, which yields ``(inputs, targets)`` batches.

    An empty Poisson batch skips the forward and backward pass, which would give a NaN loss or fail in some
    layers, and takes a noise-only step so that the released model and the accountant stay consistent.

    Privacy: protects each record as configured. Before each step it checks the number of steps the noise was
    calibrated for. A step past it raises ``BudgetExceeded``, and the model stays as the last allowed step left it.

    Args:
        training: The result of ``make_private``.
        loss_fn: Loss over a batch with mean reduction, for example ``nn.functional.cross_entropy``.

    Returns:
        Step, empty-batch and loss counts for the epoch.

    Raises:
        BudgetExceeded: The epoch would take more steps than ``training.max_steps``.
    """
    model, optimizer = training.model, training.optimizer
    model.train()
    num_steps = num_empty = num_examples = 0
    loss_sum = 0.0
    for inputs, targets in training.data_loader:
        if training.steps_taken >= training.max_steps:
            raise BudgetExceeded(
                f"DP-SGD has taken the {training.max_steps} steps its noise was calibrated for "
                f"(epsilon={training.epsilon():.4g} of target {training.config.target_epsilon}); another step "
                "would exceed target_epsilon. Call make_private again with more epochs in the config.",
                epsilon_budget=training.config.target_epsilon,
                epsilon_after=training.epsilon(),
                delta_budget=training.config.target_delta,
                delta_after=training.config.target_delta,
            )
        optimizer.zero_grad()
        if len(inputs) == 0:
            _noise_only_step(optimizer)
            num_empty += 1
        else:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(inputs)
            num_examples += len(inputs)
        num_steps += 1
    optimizer.zero_grad()
    mean_loss = loss_sum / num_examples if num_examples else math.nan
    if num_empty:
        logger.info("DP-SGD epoch took %d noise-only steps for empty Poisson batches", num_empty)
    return EpochResult(num_steps=num_steps, num_empty_batches=num_empty, num_examples=num_examples, mean_loss=mean_loss)
