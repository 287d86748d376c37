"""Sample-level DP-SGD for a site's rounds, charged to the site's own privacy budget before each round.

The site training script builds one ``SiteDPSGD`` per job. On the first training round it calibrates the noise
for the whole job (``total_rounds * local_epochs`` epochs), so the job never spends more than ``epsilon``. Before
every round it charges the round's epsilon to the site's ledger (``dp_ledger``). When the budget, the ledger or
the calibrated number of steps does not allow the round, it raises ``RoundRefused`` and trains nothing. The script
then sends a result without params and with ``meta["refused"]``.

This module has no FLARE import.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from app_custom.core.privacy.dp_sgd import DEFAULT_GRAD_SAMPLE_MODE, GRAD_SAMPLE_MODES, DPSGDConfig, PrivateTraining
from app_custom.core.privacy.errors import BudgetExceeded, InvalidPrivacyInput, InvalidPrivacySetting
from app_custom.flare.dp_ledger import PrivacyLedger, load_site_budget
from app_custom.site.training import (
    TrainingOutcome,
    epsilon_after_next_round,
    make_private_trainer,
    steps_per_epoch,
    train_private_round,
)

__all__ = ["MECHANISM", "RoundRefused", "SiteDPSGD"]

logger = logging.getLogger(__name__)

MECHANISM = "dp-sgd"
REFUSED_BUDGET_EXHAUSTED = "privacy_budget_exhausted"
REFUSED_BUDGET_INVALID = "privacy_budget_invalid"
REFUSED_LEDGER_INVALID = "privacy_ledger_invalid"


class RoundRefused(Exception):
    """The site does not train this round; ``code`` is machine-readable and ``reason`` is for people."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SiteDPSGD:
    """DP-SGD settings of one job at one site, validated at construction.

    Privacy: protects each training record against anyone who sees the site's updates (the server, other sites
    and every later global model). NaN, infinite, zero or negative settings raise ``InvalidPrivacySetting`` here,
    before the site receives any model.

    Attributes:
        epsilon: Target epsilon for the whole job, > 0.
        delta: Delta of the guarantee, in (0, 1) and below 1 / number of training records.
        max_grad_norm: L2 norm each per-sample gradient is clipped to, > 0.
        batch_size: Expected Poisson batch size.
        learning_rate: Adam learning rate.
        local_epochs: Epochs per round.
        site_root: The site's kit folder, which holds its budget and ledger.
        grad_sample_mode: How per-sample gradients are clipped (``GRAD_SAMPLE_MODES``, default "auto"); the
            privacy guarantee is the same for every mode.
    """

    epsilon: float
    delta: float
    max_grad_norm: float
    batch_size: int
    learning_rate: float
    local_epochs: int
    site_root: Path
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE

    def __post_init__(self) -> None:
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise InvalidPrivacySetting(
                f"invalid grad_sample_mode={self.grad_sample_mode!r}: use one of {list(GRAD_SAMPLE_MODES)}"
            )
        self.config_for(1)

    def config_for(self, total_rounds: int) -> DPSGDConfig:
        """Return the DP-SGD config calibrated for ``total_rounds`` rounds of ``local_epochs`` epochs.

        Raises:
            InvalidPrivacySetting: A setting or ``total_rounds`` is invalid.
        """
        if not isinstance(total_rounds, int) or isinstance(total_rounds, bool) or total_rounds < 1:
            raise InvalidPrivacySetting(
                f"invalid total_rounds={total_rounds!r}: DP-SGD needs the job's number of rounds to calibrate "
                "its noise. Run the job with a controller that sends total_rounds."
            )
        return DPSGDConfig(
            target_epsilon=self.epsilon,
            target_delta=self.delta,
            max_grad_norm=self.max_grad_norm,
            epochs=total_rounds * self.local_epochs,
            batch_size=self.batch_size,
        )


class SiteDPSGDRunner:
    """Runs the DP-SGD rounds of one job at one site and charges each to the site's ledger.

    Args:
        settings: The validated settings.
        job_id: The job's id, the ledger key.
    """

    def __init__(self, settings: SiteDPSGD, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.ledger = PrivacyLedger(settings.site_root)
        self._training: PrivateTraining | None = None

    def _prepare(self, model: nn.Module, x: np.ndarray, y: np.ndarray, total_rounds: int) -> PrivateTraining:
        if self._training is None:
            config = self.settings.config_for(total_rounds)
            self._training = make_private_trainer(
                model,
                x,
                y,
                config,
                batch_size=self.settings.batch_size,
                learning_rate=self.settings.learning_rate,
                grad_sample_mode=self.settings.grad_sample_mode,
            )
        return self._training

    def _charge(self, training: PrivateTraining) -> None:
        steps_needed = self.settings.local_epochs * steps_per_epoch(training)
        if training.steps_taken + steps_needed > training.max_steps:
            raise RoundRefused(
                REFUSED_BUDGET_EXHAUSTED,
                f"job {self.job_id} has taken {training.steps_taken} of the {training.max_steps} DP-SGD steps its "
                f"noise was calibrated for; another round would exceed epsilon={self.settings.epsilon}",
            )
        try:
            budget = load_site_budget(self.settings.site_root)
        except InvalidPrivacySetting as error:
            raise RoundRefused(REFUSED_BUDGET_INVALID, str(error)) from None
        epsilon_after = epsilon_after_next_round(training, self.settings.local_epochs)
        if not epsilon_after <= self.settings.epsilon:
            # The calibration guarantees this never happens; the check keeps the round from training if it does.
            raise RoundRefused(
                REFUSED_BUDGET_EXHAUSTED,
                f"job {self.job_id} would reach epsilon={epsilon_after:.4g} after this round, above its target "
                f"epsilon={self.settings.epsilon}",
            )
        try:
            self.ledger.charge(
                budget, job_id=self.job_id, epsilon_after_round=epsilon_after, delta=self.settings.delta,
                mechanism=MECHANISM,
            )
        except BudgetExceeded as error:
            raise RoundRefused(REFUSED_BUDGET_EXHAUSTED, str(error)) from None
        except InvalidPrivacyInput as error:
            raise RoundRefused(REFUSED_LEDGER_INVALID, str(error)) from None

    def train_round(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, *, total_rounds: int, loss_fn: nn.Module
    ) -> tuple[TrainingOutcome, dict[str, float]]:
        """Charge one round to the ledger, then train it with DP-SGD.

        Privacy: nothing trains, and nothing is returned to send, unless the round fits the site's budget and the
        job's calibrated number of steps.

        Args:
            model: The site's model, holding the global model; trained in place.
            x: Training features.
            y: Training labels.
            total_rounds: The job's number of rounds, as the server sent it.
            loss_fn: Loss with mean reduction.

        Returns:
            The training outcome and the ``dp_*`` metrics to report: epsilon spent by the job so far, delta,
            noise multiplier, clip norm and sample rate.

        Raises:
            RoundRefused: The round does not fit the budget, the budget is invalid or the ledger is corrupt.
            InvalidPrivacySetting: The settings cannot be met for this data (for example delta >= 1/n).
        """
        training = self._prepare(model, x, y, total_rounds)
        self._charge(training)
        outcome = train_private_round(training, self.settings.local_epochs, loss_fn)
        metrics = {
            "dp_epsilon": training.epsilon(),
            "dp_delta": float(self.settings.delta),
            "dp_noise_multiplier": float(training.noise_multiplier),
            "dp_max_grad_norm": float(self.settings.max_grad_norm),
            "dp_sample_rate": float(training.sample_rate),
        }
        logger.info(
            "job %s: DP-SGD round done, epsilon=%.4g of %.4g", self.job_id, metrics["dp_epsilon"], self.settings.epsilon
        )
        return outcome, metrics
