"""Sample-level differential privacy: DP-SGD with Opacus.

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") clips each example's gradient to L2 norm
``max_grad_norm``, adds Gaussian noise of ``noise_multiplier * max_grad_norm`` to the sum and draws batches by
Poisson sampling. Opacus 1.6 (``PrivacyEngine(accountant="rdp")``) does the noise, sampling and RDP accounting,
and the per-sample clipping of any model it supports. Models whose trainable parameters are all in ``nn.Linear``
are clipped in one backward pass by ``_linear_clipping`` (see there for why). This module chooses the noise so
the target epsilon is met, prepares models Opacus cannot train as given, and runs epochs that survive empty
Poisson batches.

The protected unit is one training record at one site, against anyone who sees the site's model updates,
including the server and other sites.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from opacus import PrivacyEngine
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import AbstractGradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from pydantic import Field, FiniteFloat, model_validator
from torch import nn
from torch.utils.data import DataLoader

from app_custom.core.privacy._linear_clipping import LinearClipper, LinearClippingDPOptimizer, unsupported_parameters
from app_custom.core.privacy._repair import repair_model
from app_custom.core.privacy._training import EpochResult, train_private_epoch
from app_custom.core.privacy._validation import PrivacyConfigModel, check_delta, check_positive_int
from app_custom.core.privacy.accounting import epsilon_after_steps, epsilon_floor
from app_custom.core.privacy.errors import InvalidPrivacySetting

__all__ = [
    "DEFAULT_GRAD_SAMPLE_MODE",
    "GRAD_SAMPLE_MODES",
    "DPSGDConfig",
    "EpochResult",
    "PrivateTraining",
    "calibrate_noise_multiplier",
    "epsilon_spent",
    "make_private",
    "repair_model",
    "resolve_grad_sample_mode",
    "train_private_epoch",
    "unwrap",
]

logger = logging.getLogger(__name__)

# Each retry raises the noise multiplier by 1 %; 100 retries cover a factor of 2.7 above Opacus' result.
_NUDGE_FACTOR = 1.01
_MAX_NUDGES = 100
# Per-sample clipping implementations: "fast_linear" is ``_linear_clipping`` (models whose trainable parameters
# are all in nn.Linear); the others are Opacus' ``grad_sample_mode``. "auto" takes "fast_linear" where it applies
# and "ew" (torch's expanded weights, Opacus' fastest on the demo model) elsewhere. Opacus' "ghost" is left out:
# it needs Opacus' wrapped loss and a second backward pass. benchmarks/privacy.py times them all.
GRAD_SAMPLE_MODES = ("auto", "fast_linear", "ew", "hooks", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = "auto"
# A loader whose sample rate differs from the configured one by more than this (relative) is rejected.
_SAMPLE_RATE_TOLERANCE = 0.01


class DPSGDConfig(PrivacyConfigModel):
    """Settings of DP-SGD for one job at one site. Set exactly one of ``batch_size`` and ``sample_rate``.

    Privacy: protects each training record against anyone who sees the site's updates. Construction raises
    ``InvalidPrivacySetting`` for a NaN, infinite, zero or negative value, a delta outside (0, 1), an unknown key
    or accountant, or a value of the wrong type. ``check_num_examples`` adds the checks that need the data size.

    Attributes:
        target_epsilon: Epsilon the whole job (all epochs) must not exceed, > 0.
        target_delta: Delta of the guarantee, in (0, 1) and below 1 / num_examples.
        max_grad_norm: L2 norm each per-sample gradient is clipped to, > 0.
        epochs: Number of passes over the data the noise is calibrated for, >= 1.
        batch_size: Expected batch size of the Poisson sampler; sample rate = batch_size / num_examples.
        sample_rate: Probability that one record is in a batch, in (0, 1].
        accountant: The accountant; only "rdp" (Opacus' RDP accountant) is supported.
    """

    target_epsilon: FiniteFloat = Field(gt=0)
    target_delta: FiniteFloat = Field(gt=0, lt=1)
    max_grad_norm: FiniteFloat = Field(gt=0)
    epochs: int = Field(ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    sample_rate: FiniteFloat | None = Field(default=None, gt=0, le=1)
    accountant: Literal["rdp"] = "rdp"

    _hints: ClassVar[dict[str, str]] = {
        "target_epsilon": "Set target_epsilon to a finite number > 0, for example 3.0.",
        "target_delta": "Set target_delta in (0, 1), below 1 / num_examples, for example 1e-5.",
        "max_grad_norm": "Set max_grad_norm to a finite L2 norm > 0, for example 1.0.",
        "epochs": "Set epochs to an integer >= 1.",
        "batch_size": "Set batch_size to an integer >= 1, or set sample_rate instead.",
        "sample_rate": "Set sample_rate in (0, 1], or set batch_size instead.",
        "accountant": 'Set accountant to "rdp"; other accountants are not supported.',
    }

    @model_validator(mode="after")
    def _one_sampling_setting(self) -> DPSGDConfig:
        if (self.batch_size is None) == (self.sample_rate is None):
            raise ValueError(
                f"set exactly one of batch_size and sample_rate (got batch_size={self.batch_size!r}, "
                f"sample_rate={self.sample_rate!r})"
            )
        return self

    def check_num_examples(self, num_examples: int) -> None:
        """Check the settings against the number of training records at this site.

        Privacy: a delta of 1/n or more allows a mechanism that publishes one record in the clear.

        Raises:
            InvalidPrivacySetting: ``num_examples`` < 1, ``target_delta`` >= 1 / num_examples, or
                ``batch_size`` > num_examples.
        """
        num_examples = check_positive_int("num_examples", num_examples, "The site needs at least one record.")
        if self.target_delta >= 1.0 / num_examples:
            raise InvalidPrivacySetting(
                f"invalid target_delta={self.target_delta!r}: it must be below 1/num_examples = "
                f"{1.0 / num_examples:.3g} for {num_examples} records. "
                f"Set target_delta to at most {0.1 / num_examples:.1e}."
            )
        if self.batch_size is not None and self.batch_size > num_examples:
            raise InvalidPrivacySetting(
                f"invalid batch_size={self.batch_size}: the site has only {num_examples} records. "
                f"Set batch_size to at most {num_examples}."
            )

    def sample_rate_for(self, num_examples: int) -> float:
        """Return the Poisson sample rate: ``sample_rate``, or ``batch_size / num_examples``.

        Raises:
            InvalidPrivacySetting: As ``check_num_examples``.
        """
        self.check_num_examples(num_examples)
        if self.sample_rate is not None:
            return self.sample_rate
        assert self.batch_size is not None  # guaranteed by _one_sampling_setting
        return self.batch_size / num_examples


def _calibrate(target_epsilon: float, target_delta: float, sample_rate: float, steps: int) -> float:
    try:
        noise_multiplier = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant="rdp",
            epsilon_tolerance=0.01,
        )
    except ValueError:
        floor = epsilon_floor(target_delta)
        reason = (
            f"the RDP accountant cannot state an epsilon below {floor:.3g} at this delta however large the noise"
            if target_epsilon <= floor
            else f"it needs a noise_multiplier above {MAX_SIGMA:g}"
        )
        raise InvalidPrivacySetting(
            f"target_epsilon={target_epsilon!r} cannot be met with {steps} steps at sample_rate={sample_rate:.4g} "
            f"and target_delta={target_delta!r}: {reason}. Raise target_epsilon, or train fewer epochs."
        ) from None
    # Opacus' binary search already returns its upper end. Recompute epsilon with the accountant that will run,
    # and raise the multiplier until it is met, so a change in Opacus cannot silently overshoot the target.
    for _ in range(_MAX_NUDGES):
        if epsilon_after_steps(steps, noise_multiplier, sample_rate, target_delta) <= target_epsilon:
            return float(noise_multiplier)
        noise_multiplier *= _NUDGE_FACTOR
    raise InvalidPrivacySetting(
        f"no noise_multiplier up to {noise_multiplier:.4g} meets target_epsilon={target_epsilon!r} "
        f"with {steps} steps at sample_rate={sample_rate:.4g}. Raise target_epsilon, or train fewer epochs."
    )


def calibrate_noise_multiplier(config: DPSGDConfig, num_examples: int, steps: int) -> float:
    """Choose the smallest noise multiplier (to Opacus' 0.01 epsilon tolerance) that keeps epsilon <= target.

    Uses Opacus' ``get_noise_multiplier`` with the RDP accountant, then recomputes epsilon with
    ``opacus.accountants.RDPAccountant`` and raises the multiplier in 1 % steps until epsilon <= target_epsilon.

    Privacy: guarantees that ``steps`` steps at the configured sample rate never spend more than
    ``target_epsilon``. An unreachable target or invalid argument raises ``InvalidPrivacySetting``.

    Args:
        config: Validated settings.
        num_examples: Number of training records at the site.
        steps: Total number of optimizer steps the job will take, >= 1.

    Returns:
        The noise multiplier to pass to the optimizer.

    Raises:
        InvalidPrivacySetting: An argument is invalid or the target cannot be met.
    """
    if not isinstance(config, DPSGDConfig):
        raise InvalidPrivacySetting(f"invalid config of type {type(config).__name__}: expected a DPSGDConfig")
    steps = check_positive_int("steps", steps, "Pass the total number of optimizer steps of the job.")
    sample_rate = config.sample_rate_for(num_examples)
    return _calibrate(config.target_epsilon, config.target_delta, sample_rate, steps)


@dataclass(frozen=True)
class PrivateTraining:
    """The objects ``make_private`` returns, with the settings the noise was calibrated for.

    Attributes:
        engine: The Opacus privacy engine; its accountant records every step.
        model: The model to train: wrapped for per-sample gradients by Opacus, or the model itself with
            ``fast_linear``; ``unwrap(model)`` gives the plain module either way.
        grad_sample_mode: The per-sample clipping in use, never ``"auto"``.
        optimizer: The optimizer that clips, adds noise and calls the accountant.
        data_loader: The Poisson-sampling data loader.
        noise_multiplier: The calibrated noise multiplier.
        sample_rate: The sample rate Opacus accounts with (1 / number of batches of the original loader).
        max_steps: Steps the noise was calibrated for; ``train_private_epoch`` never steps past it.
        config: The settings.
    """

    engine: PrivacyEngine
    model: nn.Module
    optimizer: DPOptimizer
    data_loader: DataLoader
    noise_multiplier: float
    sample_rate: float
    max_steps: int
    config: DPSGDConfig
    grad_sample_mode: str = "ew"

    @property
    def steps_taken(self) -> int:
        """Number of noisy steps the accountant has recorded."""
        return sum(steps for _, _, steps in self.engine.accountant.history)

    def epsilon(self) -> float:
        """Return epsilon spent so far at the configured target delta."""
        return epsilon_spent(self.engine, self.config.target_delta)


def _loader_sample_rate(data_loader: DataLoader, config: DPSGDConfig, num_examples: int) -> float:
    # Opacus 1.6 accounts with 1 / len(DPDataLoader), which differs from batch_size / n when n is not a multiple.
    # DPDataLoader has int(1 / (1 / len(data_loader))) batches, and floating point rounds that down by one for
    # some lengths (93 batches give 92), so compute the rate the same way instead of 1 / len(data_loader).
    if len(data_loader) < 1:
        raise InvalidPrivacySetting("invalid data_loader: it yields no batches")
    loader_rate = 1.0 / int(1.0 / (1.0 / len(data_loader)))
    if config.batch_size is not None and data_loader.batch_size != config.batch_size:
        raise InvalidPrivacySetting(
            f"invalid data_loader: its batch_size={data_loader.batch_size!r} differs from the config's "
            f"batch_size={config.batch_size}. Build the DataLoader with batch_size={config.batch_size}."
        )
    if config.sample_rate is not None and abs(loader_rate - config.sample_rate) > (
        _SAMPLE_RATE_TOLERANCE * config.sample_rate
    ):
        suggested = max(1, round(config.sample_rate * num_examples))
        raise InvalidPrivacySetting(
            f"invalid data_loader: it gives sample_rate={loader_rate:.4g} ({len(data_loader)} batches), but the "
            f"config sets sample_rate={config.sample_rate}. Build the DataLoader with batch_size={suggested}."
        )
    return loader_rate


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    config: DPSGDConfig,
    *,
    secure_mode: bool = False,
    noise_generator: torch.Generator | None = None,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
) -> PrivateTraining:
    """Wrap a model, optimizer and loader for DP-SGD with noise calibrated to ``config.target_epsilon``.

    Calls ``PrivacyEngine(accountant="rdp").make_private(..., poisson_sampling=True)``, or builds the same Poisson
    loader, Opacus optimizer and accountant hook around ``_linear_clipping`` for "fast_linear". The noise is calibrated
    for the sample rate Opacus will account with, ``1 / len(data_loader)``, and for
    ``config.epochs * len(data_loader)`` steps.

    Privacy: protects each record against anyone who sees the site's updates. Everything is checked before
    Opacus sees the data: an invalid config, a delta >= 1/n, a loader that does not match the config or a model
    Opacus cannot train privately raises ``InvalidPrivacySetting``.

    Args:
        model: The model, already passed through ``repair_model`` if it has BatchNorm or in-place activations.
        optimizer: An optimizer over ``model.parameters()``.
        data_loader: Loader over the site's training set with the config's batch size.
        config: Validated settings.
        secure_mode: Use Opacus' cryptographically secure noise (needs torchcsprng); slower.
        noise_generator: Seeded generator for reproducible tests; rejected by Opacus in secure mode.
        grad_sample_mode: How per-sample gradients are clipped, one of ``GRAD_SAMPLE_MODES``; "auto" picks the
            fastest that applies (``resolve_grad_sample_mode``). The modes give the same clipped gradients and the
            same privacy guarantee and differ only in speed.

    Returns:
        The wrapped objects, the engine and the calibrated settings.

    Raises:
        InvalidPrivacySetting: A setting, the loader or the model is invalid for DP-SGD.
    """
    if not isinstance(config, DPSGDConfig):
        raise InvalidPrivacySetting(f"invalid config of type {type(config).__name__}: expected a DPSGDConfig")
    grad_sample_mode = resolve_grad_sample_mode(model, grad_sample_mode)
    num_examples = len(data_loader.dataset)  # type: ignore[arg-type]
    config.check_num_examples(num_examples)
    model_errors = ModuleValidator.validate(model, strict=False)
    if model_errors:
        raise InvalidPrivacySetting(
            f"model cannot be trained with DP-SGD as given: {model_errors}. Pass it through repair_model(model) "
            "and build the optimizer on the repaired model."
        )
    sample_rate = _loader_sample_rate(data_loader, config, num_examples)
    # Opacus' Poisson loader yields int(1 / sample_rate) batches per epoch; take the larger count to stay safe.
    steps_per_epoch = max(len(data_loader), int(1 / sample_rate))
    max_steps = config.epochs * steps_per_epoch
    noise_multiplier = _calibrate(config.target_epsilon, config.target_delta, sample_rate, max_steps)

    engine = PrivacyEngine(accountant="rdp", secure_mode=secure_mode)
    private_model: nn.Module
    private_optimizer: DPOptimizer
    if grad_sample_mode == "fast_linear":
        private_model, private_optimizer, private_loader = _make_private_fast_linear(
            engine, model, optimizer, data_loader, noise_multiplier, config.max_grad_norm, noise_generator
        )
    else:
        private_model, private_optimizer, private_loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_generator,
            grad_sample_mode=grad_sample_mode,
        )
    logger.info(
        "DP-SGD ready: mode=%s noise_multiplier=%.4f sample_rate=%.4g max_steps=%d target_epsilon=%.3g delta=%.1e",
        grad_sample_mode,
        noise_multiplier,
        sample_rate,
        max_steps,
        config.target_epsilon,
        config.target_delta,
    )
    return PrivateTraining(
        engine=engine,
        model=private_model,
        optimizer=private_optimizer,
        data_loader=private_loader,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        max_steps=max_steps,
        config=config,
        grad_sample_mode=grad_sample_mode,
    )


def resolve_grad_sample_mode(model: nn.Module, grad_sample_mode: str) -> str:
    """Return the per-sample clipping ``make_private`` uses for ``model``: ``grad_sample_mode`` with "auto" resolved.

    "auto" gives "fast_linear" when every trainable parameter of ``model`` is in an ``nn.Linear``, else "ew".

    Raises:
        InvalidPrivacySetting: ``grad_sample_mode`` is not one of ``GRAD_SAMPLE_MODES``, or is "fast_linear" for a
            model with a trainable parameter outside ``nn.Linear``.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise InvalidPrivacySetting(
            f"invalid grad_sample_mode={grad_sample_mode!r}: use one of {list(GRAD_SAMPLE_MODES)}"
        )
    unsupported = unsupported_parameters(unwrap(model))
    if grad_sample_mode == "auto":
        return "ew" if unsupported else "fast_linear"
    if grad_sample_mode == "fast_linear" and unsupported:
        raise InvalidPrivacySetting(
            f"invalid grad_sample_mode='fast_linear': it needs every trainable parameter in an nn.Linear, but "
            f"{unsupported[:5]} are not; use grad_sample_mode='auto' or 'ew'"
        )
    return grad_sample_mode


def _make_private_fast_linear(
    engine: PrivacyEngine,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    noise_generator: torch.Generator | None,
) -> tuple[nn.Module, DPOptimizer, DataLoader]:
    # What engine.make_private does for Opacus' ghost mode, with our clipper in place of the second backward:
    # the same Poisson loader, expected batch size, noise generator and accountant hook.
    if noise_generator is not None and engine.secure_mode:
        raise InvalidPrivacySetting("invalid noise_generator: a seeded generator cannot be used with secure_mode")
    model_parameters = {id(parameter) for parameter in model.parameters()}
    if any(id(parameter) not in model_parameters for group in optimizer.param_groups for parameter in group["params"]):
        raise InvalidPrivacySetting(
            "invalid optimizer: it contains parameters that are not the model's; build it on model.parameters()"
        )
    private_loader = DPDataLoader.from_data_loader(data_loader, generator=engine.secure_rng, distributed=False)
    sample_rate = 1 / len(private_loader)
    expected_batch_size = int(len(data_loader.dataset) * sample_rate)  # type: ignore[arg-type]
    private_optimizer = LinearClippingDPOptimizer(
        optimizer,
        clipper=LinearClipper(model),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=engine.secure_rng if engine.secure_mode else noise_generator,
        secure_mode=engine.secure_mode,
    )
    private_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return model, private_optimizer, private_loader


def epsilon_spent(engine: PrivacyEngine, delta: float) -> float:
    """Return the epsilon an Opacus engine's accountant has recorded so far, at ``delta``.

    Privacy: reports the sample-level guarantee for the ledger. An invalid delta raises
    ``InvalidPrivacySetting``, and a result that is not a number is returned as ``inf``.

    Raises:
        InvalidPrivacySetting: ``delta`` is not in (0, 1).
    """
    delta = check_delta(delta)
    epsilon = float(engine.get_epsilon(delta))
    return math.inf if math.isnan(epsilon) else epsilon


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module inside Opacus' per-sample-gradient wrappers (``_module``), or ``model`` itself.

    Use it to read or load the ``state_dict`` a FLARE round sends, whose keys have no ``_module.`` prefix.
    """
    while isinstance(model, AbstractGradSampleModule):
        model = model._module
    return model
