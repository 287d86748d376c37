"""Tests for the site privacy budget under basic composition across jobs."""

import math

import pytest

from app_custom.core.privacy.accounting import epsilon_after, next_round_epsilon
from app_custom.core.privacy.budget import JobSpend, PrivacyBudget
from app_custom.core.privacy.errors import BudgetExceeded, InvalidPrivacyInput, InvalidPrivacySetting


@pytest.fixture
def budget() -> PrivacyBudget:
    return PrivacyBudget(epsilon_budget=10.0, delta=1e-4)


def test_can_spend_boundary(budget):
    assert budget.can_spend(4.0, 6.0)
    assert budget.can_spend(0.0, 0.0)
    assert not budget.can_spend(4.0, 6.0001)
    assert not budget.can_spend(10.5, 0.0)


@pytest.mark.parametrize(
    ("spent", "increment", "fragment"),
    [
        (math.nan, 1.0, "spent_so_far=nan"),
        (-1.0, 1.0, "spent_so_far=-1.0"),
        (1.0, math.inf, "next_round_epsilon=inf"),
        (1.0, -0.5, "next_round_epsilon=-0.5"),
        ("1", 1.0, "spent_so_far='1'"),
    ],
)
def test_can_spend_bad_amounts(budget, spent, increment, fragment):
    with pytest.raises(InvalidPrivacyInput, match=fragment):
        budget.can_spend(spent, increment)


def test_total_spent_sums(budget):
    jobs = [JobSpend(job_id="a", epsilon=1.5, delta=1e-5), JobSpend(job_id="b", epsilon=2.5, delta=2e-5)]
    epsilon, delta = budget.total_spent(jobs)
    assert epsilon == pytest.approx(4.0)
    assert delta == pytest.approx(3e-5)


def test_duplicate_job_raises(budget):
    jobs = [JobSpend(job_id="a", epsilon=1.0, delta=1e-5), JobSpend(job_id="a", epsilon=2.0, delta=1e-5)]
    with pytest.raises(InvalidPrivacyInput, match="job 'a' appears twice"):
        budget.total_spent(jobs)


def test_check_passes_within(budget):
    jobs = [JobSpend(job_id="old", epsilon=6.0, delta=5e-5), JobSpend(job_id="now", epsilon=2.0, delta=1e-5)]
    budget.check_can_train(jobs, job_id="now", next_round_epsilon=1.9, job_delta=1e-5)


def test_check_raises_with_numbers(budget):
    jobs = [JobSpend(job_id="old", epsilon=6.0, delta=5e-5), JobSpend(job_id="now", epsilon=3.0, delta=1e-5)]
    with pytest.raises(BudgetExceeded, match="epsilon=10.5 \\(budget 10, spent 9, next round 1.5\\)") as caught:
        budget.check_can_train(jobs, job_id="now", next_round_epsilon=1.5, job_delta=1e-5)
    assert caught.value.epsilon_after == pytest.approx(10.5)
    assert caught.value.epsilon_budget == 10.0
    assert caught.value.delta_after == pytest.approx(6e-5)


def test_job_delta_charged_once(budget):
    # The running job's delta is already in the ledger; a new job adds its own delta.
    jobs = [JobSpend(job_id="old", epsilon=1.0, delta=6e-5), JobSpend(job_id="now", epsilon=1.0, delta=4e-5)]
    budget.check_can_train(jobs, job_id="now", next_round_epsilon=0.1, job_delta=4e-5)
    with pytest.raises(BudgetExceeded, match="delta=0.00011 \\(budget 0.0001\\)"):
        budget.check_can_train(jobs, job_id="new", next_round_epsilon=0.1, job_delta=1e-5)


def test_job_delta_change_raises(budget):
    jobs = [JobSpend(job_id="now", epsilon=1.0, delta=1e-5)]
    with pytest.raises(InvalidPrivacyInput, match="recorded at delta=1e-05 but asks to train at delta=2e-05"):
        budget.check_can_train(jobs, job_id="now", next_round_epsilon=0.1, job_delta=2e-5)


@pytest.mark.parametrize(
    ("job_delta", "fragment"), [(1.0, "job_delta=1.0"), (math.nan, "job_delta=nan"), (-1e-5, "job_delta=-1e-05")]
)
def test_check_bad_job_delta(budget, job_delta, fragment):
    with pytest.raises(InvalidPrivacyInput, match=fragment):
        budget.check_can_train([], job_id="j", next_round_epsilon=0.1, job_delta=job_delta)


def test_rounds_stop_at_budget():
    budget = PrivacyBudget(epsilon_budget=2.0, delta=1e-5)
    rounds_done = 0
    ledger: list[JobSpend] = []
    while True:
        increment = next_round_epsilon(rounds_done, 4.0, 1.0, 1e-5)
        try:
            budget.check_can_train(ledger, job_id="j", next_round_epsilon=increment, job_delta=1e-5)
        except BudgetExceeded:
            break
        rounds_done += 1
        ledger = [JobSpend(job_id="j", epsilon=epsilon_after(rounds_done, 4.0, 1.0, 1e-5), delta=1e-5)]
    assert rounds_done >= 2
    assert epsilon_after(rounds_done, 4.0, 1.0, 1e-5) <= 2.0
    assert epsilon_after(rounds_done + 1, 4.0, 1.0, 1e-5) > 2.0


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"epsilon_budget": 0.0}, "epsilon_budget=0.0"),
        ({"epsilon_budget": -1.0}, "epsilon_budget=-1.0"),
        ({"epsilon_budget": math.nan}, "epsilon_budget=nan"),
        ({"epsilon_budget": math.inf}, "epsilon_budget=inf"),
        ({"delta": 1.0}, "delta=1.0"),
        ({"delta": 0.0}, "delta=0.0"),
    ],
)
def test_budget_rejects(change, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        PrivacyBudget(**{"epsilon_budget": 5.0, "delta": 1e-5, **change})


@pytest.mark.parametrize(
    ("change", "fragment"),
    [({"epsilon": math.nan}, "epsilon=nan"), ({"epsilon": -0.1}, "epsilon=-0.1"), ({"job_id": ""}, "job_id=''")],
)
def test_job_spend_rejects(change, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        JobSpend(**{"job_id": "j", "epsilon": 1.0, "delta": 1e-5, **change})
