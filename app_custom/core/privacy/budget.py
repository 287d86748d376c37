"""A site's privacy budget: how much epsilon and delta it still allows across all jobs.

Composition. Within one job, epsilon comes from the RDP accountant (``accounting``), which is much tighter than
adding per-round epsilons. Across jobs, the budget uses basic (sequential) composition: a site that took part in
jobs with guarantees (epsilon_j, delta_j) has spent (sum_j epsilon_j, sum_j delta_j), the basic composition
theorem of (epsilon, delta)-DP (Dwork and Roth 2014, "The Algorithmic Foundations of Differential Privacy").
Basic composition holds for any mix of mechanisms and is conservative: the true loss across jobs is never larger
than the stated sums, and is often smaller.

Each job's delta is charged once, when its first round is admitted, because the job's epsilon is stated at a fixed
delta however many rounds it runs. The budget logic is pure: the caller loads the ledger and records spends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

from pydantic import Field, FiniteFloat

from app_custom.core.privacy._validation import PrivacyConfigModel
from app_custom.core.privacy.errors import BudgetExceeded, InvalidPrivacyInput

__all__ = ["JobSpend", "PrivacyBudget"]

logger = logging.getLogger(__name__)


class JobSpend(PrivacyConfigModel):
    """One ledger entry: the cumulative guarantee a job has used at one site so far.

    Attributes:
        job_id: The job's id.
        epsilon: The job's cumulative epsilon after its last completed round (RDP-accounted within the job), >= 0.
        delta: The delta at which ``epsilon`` is stated, in [0, 1).
    """

    job_id: str = Field(min_length=1)
    epsilon: FiniteFloat = Field(ge=0)
    delta: FiniteFloat = Field(ge=0, lt=1)

    _hints: ClassVar[dict[str, str]] = {
        "job_id": "Pass the job's id.",
        "epsilon": "Record the job's cumulative epsilon as a finite number >= 0.",
        "delta": "Record the delta the job's epsilon is stated at, in [0, 1).",
    }


def _check_amount(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InvalidPrivacyInput(
            f"invalid {name}={value!r}: expected a finite number >= 0; a ledger value that is not a number "
            "cannot be compared with the budget, so training is not allowed"
        )
    return float(value)


class PrivacyBudget(PrivacyConfigModel):
    """A site's total privacy budget across all jobs, under basic composition.

    Privacy: protects the site's records against the accumulated leakage of many jobs, against a server or
    consortium that keeps submitting jobs. Construction raises ``InvalidPrivacySetting`` for a NaN, infinite,
    zero or negative budget. Every check raises or returns False rather than allowing training when a ledger
    value is invalid.

    Attributes:
        epsilon_budget: Total epsilon the site accepts across all jobs, > 0.
        delta: Total delta the site accepts across all jobs, in (0, 1).
    """

    epsilon_budget: FiniteFloat = Field(gt=0)
    delta: FiniteFloat = Field(gt=0, lt=1)

    _hints: ClassVar[dict[str, str]] = {
        "epsilon_budget": "Set epsilon_budget to the site's total epsilon across jobs, a finite number > 0.",
        "delta": "Set delta to the site's total delta across jobs, in (0, 1), for example 1e-5.",
    }

    def total_spent(self, jobs: Iterable[JobSpend]) -> tuple[float, float]:
        """Return (sum of epsilons, sum of deltas) over the ledger's jobs, by basic composition.

        Raises:
            InvalidPrivacyInput: A job id appears twice, so one job would be charged twice or not at all.
        """
        seen: set[str] = set()
        epsilons: list[float] = []
        deltas: list[float] = []
        for job in jobs:
            if job.job_id in seen:
                raise InvalidPrivacyInput(
                    f"job {job.job_id!r} appears twice in the ledger; keep one entry per job with its latest epsilon"
                )
            seen.add(job.job_id)
            epsilons.append(job.epsilon)
            deltas.append(job.delta)
        return math.fsum(epsilons), math.fsum(deltas)

    def can_spend(self, spent_so_far: float, next_round_epsilon: float) -> bool:
        """Return whether spending ``next_round_epsilon`` more keeps total epsilon within the budget.

        Privacy: the admission test a site runs before each round. It does not check delta: use
        ``check_can_train`` where the ledger is at hand.

        Args:
            spent_so_far: Total epsilon spent so far across all jobs, including the current job's completed rounds.
            next_round_epsilon: Growth of the current job's cumulative epsilon in the next round
                (``accounting.next_round_epsilon``).

        Raises:
            InvalidPrivacyInput: An amount is NaN, infinite or negative.
        """
        spent = _check_amount("spent_so_far", spent_so_far)
        increment = _check_amount("next_round_epsilon", next_round_epsilon)
        return spent + increment <= self.epsilon_budget

    def check_can_train(
        self,
        jobs: Sequence[JobSpend],
        *,
        job_id: str,
        next_round_epsilon: float,
        job_delta: float,
    ) -> None:
        """Raise ``BudgetExceeded`` if the next round of ``job_id`` would take the site past its budget.

        Total epsilon after the round is the sum of every ledger entry (the current job's included) plus
        ``next_round_epsilon``. Total delta is the sum of the other jobs' deltas plus ``job_delta``, so the current
        job's delta is charged exactly once.

        Privacy: the site-side guard against overspending, against a server that keeps asking for rounds or jobs.
        It raises on any invalid ledger value, so a corrupt ledger stops training.

        Args:
            jobs: The site's ledger, one entry per job that has completed at least one round.
            job_id: The job asking to train.
            next_round_epsilon: Growth of that job's cumulative epsilon in the next round.
            job_delta: The delta the job's epsilon is stated at.

        Raises:
            BudgetExceeded: Total epsilon or total delta after the round would exceed the budget.
            InvalidPrivacyInput: An amount is invalid, a job appears twice, or the ledger states ``job_id`` at a
                different delta.
        """
        increment = _check_amount("next_round_epsilon", next_round_epsilon)
        job_delta = _check_amount("job_delta", job_delta)
        if job_delta >= 1.0:
            raise InvalidPrivacyInput(f"invalid job_delta={job_delta!r}: expected a delta in [0, 1)")
        for job in jobs:
            if job.job_id == job_id and job.delta != job_delta:
                raise InvalidPrivacyInput(
                    f"job {job_id!r} is recorded at delta={job.delta!r} but asks to train at delta={job_delta!r}; "
                    "a job's delta cannot change between rounds"
                )
        spent_epsilon, _ = self.total_spent(jobs)
        other_delta = math.fsum(job.delta for job in jobs if job.job_id != job_id)
        epsilon_after = spent_epsilon + increment
        delta_after = other_delta + job_delta
        if epsilon_after > self.epsilon_budget or delta_after > self.delta:
            message = (
                f"job {job_id!r} cannot train another round: the site would reach epsilon={epsilon_after:.4g} "
                f"(budget {self.epsilon_budget:.4g}, spent {spent_epsilon:.4g}, next round {increment:.4g}) and "
                f"delta={delta_after:.3g} (budget {self.delta:.3g}). Stop the job, or raise the site's budget "
                "if its data owner approves."
            )
            logger.warning("privacy budget exceeded: job=%s epsilon_after=%.4g", job_id, epsilon_after)
            raise BudgetExceeded(
                message,
                epsilon_budget=self.epsilon_budget,
                epsilon_after=epsilon_after,
                delta_budget=self.delta,
                delta_after=delta_after,
            )
