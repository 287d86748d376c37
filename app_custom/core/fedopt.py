"""Server-side adaptive optimisation of the global model (FedOpt with Adam).

FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", ICLR 2021, arXiv 2003.00295): the server treats
``delta = fedavg_result - global_params`` as a pseudo-gradient (its negation points downhill) and applies an
Adam-style step to the global model::

    m = beta1 * m + (1 - beta1) * delta
    v = beta2 * v + (1 - beta2) * delta**2
    global = global + server_learning_rate * m / (sqrt(v) + tau)

As in the paper's algorithm there is no bias correction, and ``tau`` sets how adaptive the step is. ``m`` and ``v``
are kept across rounds in float64; ``state_dict()`` and ``load_state_dict()`` let a restarted server resume them.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from app_custom.core.errors import ContributionRejected, InvalidSetting

__all__ = ["FedAdam"]

logger = logging.getLogger(__name__)


class FedAdam:
    """Adam applied on the server to the FedAvg pseudo-gradient, with moments kept across rounds.

    Only floating-point arrays are optimised. Integer and boolean arrays (counters such as BatchNorm
    ``num_batches_tracked``) take the FedAvg result unchanged.

    NOTE: The defaults are common starting points, not values tuned for our models. Reddi et al. tune
    ``server_learning_rate`` and ``tau`` per task on a grid, so tune both for each job.
    """

    def __init__(
        self,
        *,
        server_learning_rate: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        """Create the optimiser with empty moments.

        Args:
            server_learning_rate: eta, the step size on the global model; finite and greater than zero.
            beta1: Decay of the first moment, in [0, 1).
            beta2: Decay of the second moment, in [0, 1).
            tau: Adaptivity constant added to sqrt(v); finite and greater than zero.

        Raises:
            InvalidSetting: If a setting is outside the range above.
        """
        _check_range("server_learning_rate", server_learning_rate, low=0.0, low_inclusive=False, high=math.inf)
        _check_range("beta1", beta1, low=0.0, low_inclusive=True, high=1.0)
        _check_range("beta2", beta2, low=0.0, low_inclusive=True, high=1.0)
        _check_range("tau", tau, low=0.0, low_inclusive=False, high=math.inf)
        self.server_learning_rate = float(server_learning_rate)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.tau = float(tau)
        self._first_moment: dict[str, np.ndarray] = {}
        self._second_moment: dict[str, np.ndarray] = {}
        self._rounds = 0

    @property
    def rounds(self) -> int:
        """Number of server steps taken since construction or the last ``reset()``."""
        return self._rounds

    def reset(self) -> None:
        """Drop the moments, so the next ``step()`` starts as if it were the first round."""
        self._first_moment.clear()
        self._second_moment.clear()
        self._rounds = 0

    def step(
        self, global_params: Mapping[str, np.ndarray], fedavg_params: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Return the next global model from the current one and this round's FedAvg result.

        Args:
            global_params: The global model sent to the sites at the start of the round.
            fedavg_params: The weighted FedAvg of the accepted site models, with the same keys and shapes.

        Returns:
            New arrays, each in the dtype of the matching ``global_params`` array.

        Raises:
            ContributionRejected: If keys or shapes of the two models differ, or differ from the keys the moments
                were built for.
        """
        self._check_structure(global_params, fedavg_params)
        new_params: dict[str, np.ndarray] = {}
        for key, value in global_params.items():
            current = np.asarray(value)
            averaged = np.asarray(fedavg_params[key])
            if current.dtype.kind not in "fc":
                new_params[key] = averaged.astype(current.dtype, copy=True)
                continue

            delta = averaged.astype(np.float64) - current
            first = self._first_moment.setdefault(key, np.zeros(current.shape, dtype=np.float64))
            second = self._second_moment.setdefault(key, np.zeros(current.shape, dtype=np.float64))
            first *= self.beta1
            first += (1.0 - self.beta1) * delta
            second *= self.beta2
            second += (1.0 - self.beta2) * np.square(delta)
            updated = current + self.server_learning_rate * first / (np.sqrt(second) + self.tau)
            new_params[key] = updated.astype(current.dtype)
        self._rounds += 1
        logger.debug("FedAdam step %d applied to %d arrays", self._rounds, len(new_params))
        return new_params

    def state_dict(self) -> dict[str, Any]:
        """Return copies of the settings, moments and round count, for checkpointing the server."""
        return {
            "server_learning_rate": self.server_learning_rate,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "rounds": self._rounds,
            "first_moment": {key: value.copy() for key, value in self._first_moment.items()},
            "second_moment": {key: value.copy() for key, value in self._second_moment.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore moments and round count saved by ``state_dict()``; settings stay as constructed.

        Raises:
            InvalidSetting: If ``state`` lacks an entry or its moments disagree in keys or shapes.
        """
        required = ("rounds", "first_moment", "second_moment")
        missing = [name for name in required if name not in state]
        if missing:
            raise InvalidSetting(f"FedAdam state lacks {missing}; pass a mapping produced by FedAdam.state_dict()")
        first = {key: np.array(value, dtype=np.float64) for key, value in dict(state["first_moment"]).items()}
        second = {key: np.array(value, dtype=np.float64) for key, value in dict(state["second_moment"]).items()}
        if first.keys() != second.keys() or any(first[key].shape != second[key].shape for key in first):
            raise InvalidSetting(
                "FedAdam state has first and second moments with different keys or shapes; the checkpoint is "
                "corrupt, so start from reset() instead"
            )
        self._first_moment = first
        self._second_moment = second
        self._rounds = int(state["rounds"])

    def _check_structure(
        self, global_params: Mapping[str, np.ndarray], fedavg_params: Mapping[str, np.ndarray]
    ) -> None:
        missing = sorted(global_params.keys() - fedavg_params.keys())
        if missing:
            raise ContributionRejected(
                "missing_key",
                f"fedavg_params lacks key(s) {missing[:5]} of global_params; pass the aggregate of the same model",
                key=missing[0],
            )
        unexpected = sorted(fedavg_params.keys() - global_params.keys())
        if unexpected:
            raise ContributionRejected(
                "unexpected_key",
                f"fedavg_params has key(s) {unexpected[:5]} that global_params lacks; pass the aggregate of the "
                "same model",
                key=unexpected[0],
            )
        stale = sorted(key for key in self._first_moment if key not in global_params)
        if stale:
            raise ContributionRejected(
                "missing_key",
                f"global_params lacks key(s) {stale[:5]} that the optimiser moments were built for; call reset() "
                "when the model architecture changes",
                key=stale[0],
            )
        for key, value in global_params.items():
            shape = np.shape(value)
            if np.shape(fedavg_params[key]) != shape:
                raise ContributionRejected(
                    "shape_mismatch",
                    f"fedavg_params[{key!r}] has shape {np.shape(fedavg_params[key])}; expected {shape} as in "
                    "global_params",
                    key=key,
                )
            moment = self._first_moment.get(key)
            if moment is not None and moment.shape != shape:
                raise ContributionRejected(
                    "shape_mismatch",
                    f"global_params[{key!r}] has shape {shape}; the optimiser moments have {moment.shape}. "
                    "Call reset() when the model architecture changes",
                    key=key,
                )


def _check_range(name: str, value: float, *, low: float, low_inclusive: bool, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise InvalidSetting(f"{name} is {value!r}; expected a number")
    above_low = value >= low if low_inclusive else value > low
    if not above_low or not value < high:
        low_bracket = "[" if low_inclusive else "("
        raise InvalidSetting(f"{name} is {value!r}; expected a value in {low_bracket}{low}, {high})")
