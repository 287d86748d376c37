"""How one round's accepted site models become the next global model, chosen by a validated config.

The FLARE controller only feeds contributions in and asks for the result; every rule lives here:

- ``fedavg``: streaming weighted mean (``WeightedFedAvg``), aggregation weight ``num_examples``; with
  ``focal_beta != 0`` each site's weight becomes ``num_examples * local_loss**focal_beta`` (our reading of Fed-Focal
  Loss' server-side sampling, see ``app_custom.core.selection``), still streamed.
- ``trimmed_mean`` / ``median``: coordinate-wise robust statistics; they need every model at once, so the round keeps
  one copy per site (memory grows with the number of sites).
- ``focal_top_fraction < 1`` keeps only the highest-loss sites, which is also known only after the round, so it buffers.
- ``server_optimizer = "fedadam"`` applies FedAdam (Reddi et al. 2021) to the aggregate as a pseudo-gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app_custom.core.aggregation import WeightedFedAvg
from app_custom.core.errors import InvalidSetting, NoValidContributions
from app_custom.core.fedopt import FedAdam
from app_custom.core.robust import coordinate_median, trimmed_mean
from app_custom.core.selection import loss_weighted_aggregation_weights

Params = dict[str, np.ndarray]


class AggregationConfig(BaseModel):
    """Settings of the server-side aggregation, validated once when the job starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["fedavg", "trimmed_mean", "median"] = "fedavg"
    trim_fraction: float = Field(default=0.1, ge=0.0, lt=0.5)
    focal_beta: float = Field(default=0.0, allow_inf_nan=False)
    focal_top_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    server_optimizer: Literal["none", "fedadam"] = "none"
    server_learning_rate: float = Field(default=0.01, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _focal_needs_fedavg(self) -> AggregationConfig:
        focal = self.focal_beta != 0.0 or self.focal_top_fraction < 1.0
        if focal and self.method != "fedavg":
            raise ValueError(
                f"Fed-Focal weighting (focal_beta={self.focal_beta}, focal_top_fraction={self.focal_top_fraction}) "
                f"applies to method 'fedavg', not {self.method!r}"
            )
        return self


class RoundAggregator:
    """Collects one round's accepted contributions and computes the next global model."""

    def __init__(self, config: AggregationConfig) -> None:
        self.config = config
        self._stream = WeightedFedAvg()
        self._buffer: dict[str, tuple[Params, float, float | None]] = {}
        self._optimizer = FedAdam(server_learning_rate=config.server_learning_rate) if config.server_optimizer == "fedadam" else None

    @property
    def buffers_models(self) -> bool:
        """Whether this round keeps one model per site instead of a running mean."""
        return self.config.method != "fedavg" or self.config.focal_top_fraction < 1.0

    @property
    def count(self) -> int:
        return len(self._buffer) if self.buffers_models else self._stream.count

    def reset(self) -> None:
        self._stream.reset()
        self._buffer = {}

    def add(self, site: str, params: Mapping[str, np.ndarray], num_examples: float, local_loss: float | None) -> None:
        """Fold in one accepted contribution.

        Raises:
            InvalidSetting: when Fed-Focal weighting is on and the site reported no usable local loss.
        """
        if self.config.focal_beta != 0.0 and (local_loss is None or not np.isfinite(local_loss) or local_loss <= 0):
            raise InvalidSetting(
                f"site {site} reported local loss {local_loss!r}; Fed-Focal weighting needs a positive finite loss"
            )
        if self.buffers_models:
            self._buffer[site] = ({k: np.array(v, copy=True) for k, v in params.items()}, num_examples, local_loss)
            return
        weight = num_examples
        if self.config.focal_beta != 0.0 and local_loss is not None:
            weight *= float(local_loss) ** self.config.focal_beta
        self._stream.add(params, weight)

    def result(self, global_params: Mapping[str, np.ndarray] | None) -> Params:
        """Return the next global model.

        Raises:
            NoValidContributions: when nothing was added this round.
        """
        if self.count == 0:
            raise NoValidContributions("no valid contribution this round: refusing to build a global model from nothing")
        # The stream is reset before the next round, so its sum can be handed over without a copy.
        aggregate = self._buffered_result() if self.buffers_models else self._stream.result(copy=False)
        if self._optimizer is not None and global_params:
            return self._optimizer.step(dict(global_params), aggregate)
        return aggregate

    def _buffered_result(self) -> Params:
        models = [entry[0] for entry in self._buffer.values()]
        if self.config.method == "median":
            return coordinate_median(models)
        if self.config.method == "trimmed_mean":
            return trimmed_mean(models, self.config.trim_fraction)
        weights = loss_weighted_aggregation_weights(
            {site: entry[1] for site, entry in self._buffer.items()},
            {site: float(entry[2] or 0.0) for site, entry in self._buffer.items()},
            beta=self.config.focal_beta,
            top_fraction=self.config.focal_top_fraction,
        )
        stream = WeightedFedAvg()
        for site, weight in weights.items():
            stream.add(self._buffer[site][0], weight)
        return stream.result(copy=False)
