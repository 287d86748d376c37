"""One round of client-level DP (DP-FedAvg) on the server, behind the controller's round-aggregator interface.

McMahan, Ramage, Talwar and Zhang 2018, "Learning Differentially Private Recurrent Language Models", Algorithm 1
with the fixed-denominator estimator: each accepted site update (site params minus the global model) is clipped
to L2 norm ``clip_norm``, the clipped updates are summed and divided by q * W (sample rate times number of sites
asked), Gaussian noise with standard deviation ``noise_multiplier * clip_norm / (q * W)`` is added, and the result
is added to the global model. Every site counts equally: ``num_examples`` does not weight the sum, because a
data-dependent weight would change the sensitivity the noise is calibrated for.

The running sum keeps one model in memory. The maths lives in ``app_custom.core.privacy.client_dp``; this module
has no FLARE import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from app_custom.core.errors import NoValidContributions
from app_custom.core.privacy.accounting import epsilon_after
from app_custom.core.privacy.client_dp import ClientDPConfig, add_gaussian_noise, clip_update, sum_clipped_updates
from app_custom.core.privacy.errors import InvalidPrivacyInput

__all__ = ["ClientDPRoundAggregator"]

logger = logging.getLogger(__name__)

Params = dict[str, np.ndarray]


class ClientDPRoundAggregator:
    """Clips, sums and noises one round's site updates; drop-in for ``RoundAggregator`` in the controller.

    Privacy: protects each whole site's contribution against other sites and anyone who sees global models. The
    server that runs it sees the clipped updates before noise. A non-finite update, mismatched keys, a missing
    global model or an unset number of sites raises instead of releasing an aggregate without noise.

    Args:
        config: Validated DP-FedAvg settings.
        rng: Source of the noise; None draws an unseeded generator for every round.
    """

    buffers_models = False

    def __init__(self, config: ClientDPConfig, rng: np.random.Generator | None = None) -> None:
        self.config = config
        self.rng = rng
        self.rounds_done = 0
        self._num_sampled_sites: float | None = None
        self._global: Params | None = None
        self._sum: Params | None = None
        self._count = 0
        self._largest_norm = 0.0

    @property
    def count(self) -> int:
        """Number of updates added this round."""
        return self._count

    def start_round(self, global_params: Mapping[str, np.ndarray], num_sites: int) -> None:
        """Set the global model the round starts from and the number of sites asked (W).

        Raises:
            InvalidPrivacySetting: ``num_sites`` is invalid or ``target_delta`` >= 1 / num_sites.
            InvalidPrivacyInput: The global model is empty.
        """
        if not global_params:
            raise InvalidPrivacyInput("DP-FedAvg needs the round's global model to compute site updates")
        self._num_sampled_sites = self.config.expected_num_sites(num_sites)
        self._global = {key: np.asarray(value) for key, value in global_params.items()}
        self.reset()

    def reset(self) -> None:
        """Forget this round's updates; the global model and number of sites stay set."""
        self._sum = None
        self._count = 0
        self._largest_norm = 0.0

    def add(self, site: str, params: Mapping[str, np.ndarray], num_examples: float, local_loss: float | None) -> None:
        """Clip the site's update (params minus the global model) and add it to the round's sum.

        Raises:
            InvalidPrivacyInput: The round was not started, keys differ from the global model, or the update is
                not finite.
        """
        if self._global is None:
            raise InvalidPrivacyInput("DP-FedAvg round not started: call start_round with the global model first")
        if set(params) != set(self._global):
            raise InvalidPrivacyInput(
                f"site {site} sent keys {sorted(params)}, but the global model has {sorted(self._global)}"
            )
        update = {key: np.asarray(params[key], dtype=np.float64) - self._global[key] for key in self._global}
        clipped, norm = clip_update(update, self.config.clip_norm)
        self._largest_norm = max(self._largest_norm, norm)
        if self._sum is None:
            self._sum = clipped
        else:
            for key, value in clipped.items():
                self._sum[key] += value
        self._count += 1

    def result(self, global_params: Mapping[str, np.ndarray] | None = None) -> Params:
        """Return global model + noised fixed-denominator mean of the clipped updates, in the global dtypes.

        Privacy: the only output of the round; it is released with noise or not at all.

        Raises:
            NoValidContributions: No update was added this round.
            InvalidPrivacyInput: The round was not started.
        """
        if self._count == 0 or self._sum is None:
            raise NoValidContributions("no valid contribution this round: DP-FedAvg releases no aggregate")
        if self._global is None or self._num_sampled_sites is None:
            raise InvalidPrivacyInput("DP-FedAvg round not started: call start_round with the global model first")
        mean_update = sum_clipped_updates([self._sum], self._num_sampled_sites)
        noised = add_gaussian_noise(
            mean_update, self.config.noise_multiplier, self.config.clip_norm, self._num_sampled_sites, rng=self.rng
        )
        self.rounds_done += 1
        clipped_share = "clipped" if self._largest_norm > self.config.clip_norm else "within clip_norm"
        logger.info("DP-FedAvg round: %d updates, largest update %s", self._count, clipped_share)
        return {key: (self._global[key] + noised[key]).astype(self._global[key].dtype) for key in self._global}

    def epsilon(self) -> float:
        """Return the client-level epsilon after the rounds released so far, at ``config.target_delta``."""
        return epsilon_after(
            self.rounds_done, self.config.noise_multiplier, self.config.sample_rate, self.config.target_delta
        )
