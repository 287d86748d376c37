"""PyTorch models trained at the sites."""

from __future__ import annotations

import torch
from torch import nn

from app_custom.data.tabular import FEATURES


class TabularMLP(nn.Module):
    """Multilayer perceptron for binary outcomes on tabular features; returns one logit per row.

    It uses no BatchNorm and no in-place activations, so Opacus can wrap it unchanged for DP-SGD.

    Args:
        num_features: number of input features (the flchain feature set by default).
        hidden: widths of the hidden layers.
        dropout: dropout rate after each hidden layer.
        seed: seed of the initial weights (None: from torch's global generator), so a job's initial global model
            is reproducible without touching the global generator.
    """

    def __init__(
        self,
        num_features: int = len(FEATURES),
        hidden: tuple[int, ...] | list[int] = (32, 16),
        dropout: float = 0.1,
        seed: int | None = None,
    ):
        super().__init__()
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            layers: list[nn.Module] = []
            width = num_features
            for size in hidden:
                layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
                width = size
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)
