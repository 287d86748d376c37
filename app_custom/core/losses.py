"""Focal loss for binary and multi-class classification.

Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"), used at each site by Fed-Focal Loss
(Sarkar, Narang, Rai, FL-IJCAI 2020, arXiv 2011.06283)::

    FL(p_t) = -alpha_t * (1 - p_t)**gamma * log(p_t)

p_t is the predicted probability of the true class. ``gamma`` >= 0 down-weights well-classified examples; with
``gamma = 0`` and no ``alpha`` the loss equals cross-entropy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from app_custom.core.errors import InvalidSetting

__all__ = ["FocalLoss"]

Reduction = Literal["mean", "sum", "none"]


class FocalLoss(nn.Module):
    """Focal loss on logits, for binary (shape ``[N]`` or ``[N, 1]``) or multi-class (shape ``[N, C]``) outputs.

    Binary logits take float or integer targets in {0, 1} of shape ``[N]`` or ``[N, 1]``. Multi-class logits take
    integer class targets of shape ``[N]``.

    ``alpha`` follows Lin et al.: for binary outputs a scalar in [0, 1] weights positives by ``alpha`` and
    negatives by ``1 - alpha``, so ``alpha = 1`` ignores negatives. Use ``alpha=None`` for no class weighting. For
    multi-class outputs ``alpha`` is a per-class vector of length C; a vector of ones equals ``None``.

    ``reduction="mean"`` is the plain mean over examples, as in torchvision's ``sigmoid_focal_loss``; unlike
    ``CrossEntropyLoss(weight=...)`` it does not divide by the sum of the class weights.
    """

    gamma: float
    reduction: Reduction
    scalar_alpha: float | None
    class_alpha: torch.Tensor | None

    def __init__(
        self,
        alpha: float | Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
        reduction: Reduction = "mean",
    ) -> None:
        """Create the loss.

        Args:
            alpha: Class weighting: a scalar in [0, 1] for binary logits, a vector of C non-negative finite
                values for multi-class logits, or None.
            gamma: Focusing parameter, finite and >= 0. The usual default is 2.
            reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-example losses of shape ``[N]``).

        Raises:
            InvalidSetting: If a setting is outside the range above.
        """
        super().__init__()
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma < 0:
            raise InvalidSetting(f"gamma is {gamma!r}; expected a finite number >= 0 (0 gives cross-entropy)")
        if reduction not in ("mean", "sum", "none"):
            raise InvalidSetting(f"reduction is {reduction!r}; expected 'mean', 'sum' or 'none'")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.scalar_alpha = None
        self.register_buffer("class_alpha", None)

        if alpha is None:
            return
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            if not 0.0 <= float(alpha) <= 1.0:
                raise InvalidSetting(f"alpha is {alpha!r}; a scalar alpha must lie in [0, 1]")
            self.scalar_alpha = float(alpha)
            return
        vector = torch.as_tensor(alpha, dtype=torch.float32)
        if vector.ndim != 1 or vector.numel() == 0:
            raise InvalidSetting(
                f"alpha has shape {tuple(vector.shape)}; expected a scalar or a 1-D vector with one weight per class"
            )
        if not torch.isfinite(vector).all() or (vector < 0).any():
            raise InvalidSetting(f"alpha is {vector.tolist()}; expected finite weights >= 0")
        self.class_alpha = vector

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the focal loss of ``logits`` against ``targets``, reduced as configured.

        Raises:
            InvalidSetting: If shapes or target values do not fit the logits, or ``alpha`` does not fit the
                number of classes.
        """
        if logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1):
            losses = self._binary(logits.reshape(-1), targets)
        elif logits.ndim == 2:
            losses = self._multiclass(logits, targets)
        else:
            raise InvalidSetting(
                f"logits have shape {tuple(logits.shape)}; expected [N] or [N, 1] for binary or [N, C] for multi-class"
            )

        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses

    def _binary(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.class_alpha is not None:
            raise InvalidSetting(
                f"alpha is a vector of {self.class_alpha.numel()} class weights but the logits are binary; "
                "pass a scalar alpha in [0, 1] or None"
            )
        target = targets.reshape(-1).to(logits.dtype)
        if target.shape != logits.shape:
            raise InvalidSetting(
                f"targets have {target.numel()} values for {logits.numel()} binary logits; expected one target "
                "per example"
            )
        if not ((target == 0) | (target == 1)).all():
            raise InvalidSetting("binary targets contain values other than 0 and 1; expected labels in {0, 1}")

        cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        losses = self._modulate(cross_entropy)
        if self.scalar_alpha is not None:
            alpha_t = self.scalar_alpha * target + (1.0 - self.scalar_alpha) * (1.0 - target)
            losses = alpha_t * losses
        return losses

    def _multiclass(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        if self.scalar_alpha is not None:
            raise InvalidSetting(
                f"alpha is the scalar {self.scalar_alpha} but the logits have {num_classes} classes; pass a "
                f"vector of {num_classes} class weights or None"
            )
        if targets.ndim != 1 or targets.shape[0] != logits.shape[0]:
            raise InvalidSetting(
                f"targets have shape {tuple(targets.shape)}; expected class indices of shape [{logits.shape[0]}]"
            )
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise InvalidSetting(f"targets have dtype {targets.dtype}; expected integer class indices")
        if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
            raise InvalidSetting(
                f"targets contain class indices outside [0, {num_classes - 1}] "
                f"(found {int(targets.min())}..{int(targets.max())})"
            )

        cross_entropy = F.cross_entropy(logits, targets, reduction="none")
        losses = self._modulate(cross_entropy)
        if self.class_alpha is not None:
            if self.class_alpha.numel() != num_classes:
                raise InvalidSetting(
                    f"alpha has {self.class_alpha.numel()} class weights but the logits have {num_classes} classes"
                )
            losses = self.class_alpha.to(device=logits.device, dtype=logits.dtype)[targets] * losses
        return losses

    def _modulate(self, cross_entropy: torch.Tensor) -> torch.Tensor:
        if self.gamma == 0.0:
            return cross_entropy
        # 1 - p_t = -expm1(-CE) is exact for confident predictions. The clamp keeps the gradient of x**gamma finite
        # for 0 < gamma < 1 when p_t rounds to 1, and changes no value above the smallest normal float.
        one_minus_p = (-torch.expm1(-cross_entropy)).clamp_min(torch.finfo(cross_entropy.dtype).tiny)
        return one_minus_p.pow(self.gamma) * cross_entropy
