"""Make a torch model trainable with Opacus without erasing its signal.

Opacus' own fix (``ModuleValidator.fix``, Opacus 1.6) swaps each BatchNorm for ``GroupNorm(gcd(32, C), C)``. On a
1-D feature input of shape (N, C) a group then contains C / groups values per record: for C = 32 or 64 that is one or
two values, which normalise to zero or to plus or minus one, so the layer erases almost all of its input. This
module swaps BatchNorm for ``GroupNorm(1, C)`` instead, which normalises all C features of one record together
(LayerNorm over the channels, with a per-channel affine), keeps their relative values and never mixes records.
"""

from __future__ import annotations

import copy
import logging

from opacus.validators import ModuleValidator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from app_custom.core.privacy.errors import InvalidPrivacySetting

__all__ = ["repair_model"]

logger = logging.getLogger(__name__)


def _group_norm_for(batch_norm: _BatchNorm) -> nn.GroupNorm:
    replacement = nn.GroupNorm(1, batch_norm.num_features, eps=batch_norm.eps, affine=batch_norm.affine)
    if batch_norm.affine:
        # Keep the learned scale and shift; the running statistics have no counterpart and are dropped.
        replacement.weight.data.copy_(batch_norm.weight.data)
        replacement.bias.data.copy_(batch_norm.bias.data)
    tensors = [*batch_norm.parameters(), *batch_norm.buffers()]
    return replacement.to(tensors[0].device) if tensors else replacement


def _replace_batch_norms(root: nn.Module) -> nn.Module:
    if isinstance(root, _BatchNorm):
        return _group_norm_for(root)
    for name, child in list(root.named_children()):
        replacement = _replace_batch_norms(child)
        if replacement is not child:
            logger.info("replaced %s (%s) with %s", name, type(child).__name__, replacement)
            setattr(root, name, replacement)
    return root


def repair_model(model: nn.Module) -> nn.Module:
    """Return a copy of ``model`` that Opacus can train with per-sample gradients.

    Steps, on a copy in training mode (``model`` is not changed):

    1. Every BatchNorm (1d, 2d, 3d, SyncBatchNorm) becomes ``GroupNorm(1, C)`` with the BatchNorm's affine params.
    2. Every module with ``inplace=True`` (ReLU, Dropout, ...) is set out-of-place.
    3. Opacus' ``ModuleValidator.fix`` replaces what remains, for example LSTM with DPLSTM.
    4. ``ModuleValidator.validate(strict=True)`` must pass.

    Privacy: BatchNorm mixes the records of a batch, so one record's gradient depends on the others and per-sample
    clipping no longer bounds its influence; the replacement normalises each record on its own. A model that
    still fails Opacus' validation raises ``InvalidPrivacySetting``.

    NOTE: The repaired model's ``state_dict`` has no BatchNorm running statistics, so every site and the server
    must build the same repaired architecture.

    Raises:
        InvalidPrivacySetting: The model has modules Opacus cannot train privately even after repair.
    """
    repaired = _replace_batch_norms(copy.deepcopy(model))
    for module in repaired.modules():
        if getattr(module, "inplace", False) is True:
            setattr(module, "inplace", False)  # noqa: B010 (mypy types Module attributes as Tensor | Module)
    repaired = ModuleValidator.fix(repaired)
    repaired.train()
    try:
        ModuleValidator.validate(repaired, strict=True)
    except UnsupportedModuleError as error:
        raise InvalidPrivacySetting(
            f"model cannot be trained with DP-SGD even after repair: {error}. Replace the listed modules."
        ) from None
    return repaired
