"""FedProx proximal term for local training.

FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks", MLSys 2020): each site minimises
``F_k(w) + (mu / 2) * ||w - w_global||^2``, where ``w_global`` is the global model at the start of the round. The
server side is plain FedAvg.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch
from torch import nn

from app_custom.core.errors import InvalidSetting

__all__ = ["proximal_term", "snapshot_global_params"]


def snapshot_global_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return detached copies of the model's trainable parameters, to use as ``w_global`` for a round.

    Call it right after loading the global model and before the first optimiser step.
    """
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def proximal_term(model: nn.Module, global_params_tensors: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """Return ``(mu / 2) * ||w - w_global||^2`` over the model's trainable parameters, differentiable in ``w``.

    Add the result to the local loss before ``backward()``. Parameters with ``requires_grad=False`` (frozen
    layers) are left out, and buffers such as BatchNorm running statistics are not parameters, so they never count.

    Args:
        model: The site model being trained.
        global_params_tensors: Parameter name to tensor of the global model, for example from
            ``snapshot_global_params``. The tensors are treated as constants.
        mu: The proximal coefficient; finite and at least 0. With 0 the term is a zero tensor and FedProx reduces
            to FedAvg.

    Raises:
        InvalidSetting: If ``mu`` is negative or not finite, a trainable parameter has no global tensor, or the
            shapes differ.
    """
    if isinstance(mu, bool) or not isinstance(mu, numbers.Real) or not math.isfinite(mu) or mu < 0:
        raise InvalidSetting(f"mu is {mu!r}; expected a finite number >= 0 (0 turns the proximal term off)")

    squared_distance: torch.Tensor | None = None
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        reference = global_params_tensors.get(name)
        if reference is None:
            raise InvalidSetting(
                f"global_params_tensors lacks the trainable parameter {name!r}; build it with "
                "snapshot_global_params(model) from the global model of this round"
            )
        if reference.shape != parameter.shape:
            raise InvalidSetting(
                f"global_params_tensors[{name!r}] has shape {tuple(reference.shape)}; expected "
                f"{tuple(parameter.shape)} as in the model"
            )
        difference = parameter - reference.detach().to(device=parameter.device, dtype=parameter.dtype)
        term = difference.pow(2).sum()
        squared_distance = term if squared_distance is None else squared_distance + term

    if squared_distance is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        return torch.zeros((), device=device)
    return 0.5 * mu * squared_distance
