"""The site's privacy budget file and its ledger of epsilon per job."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from app_custom.core.privacy.budget import PrivacyBudget
from app_custom.core.privacy.errors import BudgetExceeded, InvalidPrivacyInput, InvalidPrivacySetting
from app_custom.flare.dp_ledger import LEDGER_FILE, PrivacyLedger, load_site_budget


def write_site_config(root: Path, config: object) -> Path:
    (root / "local").mkdir(exist_ok=True)
    path = root / "local" / "consortia_site.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return root


@pytest.fixture
def budget() -> PrivacyBudget:
    return PrivacyBudget(epsilon_budget=5.0, delta=1e-4)


def test_budget_read_from_site_config(tmp_path):
    root = write_site_config(tmp_path, {"data_dir": "data", "privacy_budget": {"epsilon": 10, "delta": 1e-4}})
    budget = load_site_budget(root)
    assert budget.epsilon_budget == 10.0
    assert budget.delta == 1e-4


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"data_dir": "data"}, "has no privacy_budget"),
        ({"privacy_budget": 10.0}, "has no privacy_budget"),
        ({"privacy_budget": {"epsilon": float("nan"), "delta": 1e-5}}, "epsilon_budget"),
        ({"privacy_budget": {"epsilon": 0.0, "delta": 1e-5}}, "epsilon_budget"),
        ({"privacy_budget": {"epsilon": -1.0, "delta": 1e-5}}, "epsilon_budget"),
        ({"privacy_budget": {"epsilon": 1.0, "delta": 1.5}}, "delta"),
        ({"privacy_budget": {"epsilon": 1.0}}, "delta is missing"),
        ({"privacy_budget": {"epsilon": 1.0, "delta": 1e-5, "epsilonn": 2}}, "unknown keys ['epsilonn']"),
    ],
)
def test_invalid_budget_rejected(tmp_path, config, fragment):
    root = write_site_config(tmp_path, config)
    with pytest.raises(InvalidPrivacySetting, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_site_budget(root)


def test_missing_site_config_rejected(tmp_path):
    with pytest.raises(InvalidPrivacySetting, match="not found"):
        load_site_budget(tmp_path)


def test_invalid_json_site_config_rejected(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "consortia_site.json").write_text("{", encoding="utf-8")
    with pytest.raises(InvalidPrivacySetting, match="not valid JSON"):
        load_site_budget(tmp_path)


def test_charge_records_cumulative_epsilon(tmp_path, budget):
    ledger = PrivacyLedger(tmp_path)
    assert ledger.charge(budget, job_id="job-1", epsilon_after_round=1.0, delta=1e-5, mechanism="dp-sgd") == 1.0
    assert ledger.charge(budget, job_id="job-1", epsilon_after_round=1.5, delta=1e-5, mechanism="dp-sgd") == 1.5
    assert ledger.charge(budget, job_id="job-2", epsilon_after_round=2.0, delta=1e-5, mechanism="dp-sgd") == 3.5
    jobs = {job.job_id: job.epsilon for job in ledger.jobs()}
    assert jobs == {"job-1": 1.5, "job-2": 2.0}
    stored = json.loads((tmp_path / LEDGER_FILE).read_text(encoding="utf-8"))
    assert stored["version"] == 1
    assert {entry["mechanism"] for entry in stored["jobs"]} == {"dp-sgd"}


def test_charge_over_budget_raises_and_writes_nothing(tmp_path, budget):
    ledger = PrivacyLedger(tmp_path)
    ledger.charge(budget, job_id="job-1", epsilon_after_round=4.0, delta=1e-5, mechanism="dp-sgd")
    before = (tmp_path / LEDGER_FILE).read_text(encoding="utf-8")
    with pytest.raises(BudgetExceeded, match="cannot train another round") as raised:
        ledger.charge(budget, job_id="job-2", epsilon_after_round=1.5, delta=1e-5, mechanism="dp-sgd")
    assert raised.value.epsilon_after == pytest.approx(5.5)
    assert (tmp_path / LEDGER_FILE).read_text(encoding="utf-8") == before


def test_charge_counts_only_the_increment(tmp_path, budget):
    ledger = PrivacyLedger(tmp_path)
    ledger.charge(budget, job_id="job-1", epsilon_after_round=4.5, delta=1e-5, mechanism="dp-sgd")
    assert ledger.charge(budget, job_id="job-1", epsilon_after_round=5.0, delta=1e-5, mechanism="dp-sgd") == 5.0
    with pytest.raises(BudgetExceeded):
        ledger.charge(budget, job_id="job-1", epsilon_after_round=5.01, delta=1e-5, mechanism="dp-sgd")


def test_delta_budget_limits_number_of_jobs(tmp_path):
    budget = PrivacyBudget(epsilon_budget=100.0, delta=2e-5)
    ledger = PrivacyLedger(tmp_path)
    ledger.charge(budget, job_id="job-1", epsilon_after_round=0.1, delta=1e-5, mechanism="dp-sgd")
    ledger.charge(budget, job_id="job-1", epsilon_after_round=0.2, delta=1e-5, mechanism="dp-sgd")
    ledger.charge(budget, job_id="job-2", epsilon_after_round=0.1, delta=1e-5, mechanism="dp-sgd")
    with pytest.raises(BudgetExceeded, match="delta="):
        ledger.charge(budget, job_id="job-3", epsilon_after_round=0.1, delta=1e-5, mechanism="dp-sgd")


@pytest.mark.parametrize("epsilon", [float("nan"), float("inf"), "1.0", None])
def test_charge_rejects_non_finite_epsilon(tmp_path, budget, epsilon):
    with pytest.raises(InvalidPrivacyInput, match="epsilon_after_round"):
        PrivacyLedger(tmp_path).charge(budget, job_id="j", epsilon_after_round=epsilon, delta=1e-5, mechanism="dp-sgd")
    assert not (tmp_path / LEDGER_FILE).exists()


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "cannot be read"),
        ('{"version": 2, "jobs": []}', "not a version 1 ledger"),
        ('{"version": 1, "jobs": {}}', "no list of job entries"),
        ('{"version": 1, "jobs": [{"job_id": "j", "epsilon": -1, "delta": 1e-5}]}', "is invalid"),
        ('{"version": 1, "jobs": [{"job_id": "j", "epsilon": "NaN", "delta": 1e-5}]}', "is invalid"),
    ],
)
def test_corrupt_ledger_refuses_training(tmp_path, budget, content, fragment):
    (tmp_path / LEDGER_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(InvalidPrivacyInput, match=fragment):
        PrivacyLedger(tmp_path).charge(budget, job_id="j2", epsilon_after_round=0.1, delta=1e-5, mechanism="dp-sgd")


def test_duplicate_job_in_ledger_refuses_training(tmp_path, budget):
    entry = {"job_id": "j", "epsilon": 0.5, "delta": 1e-5}
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"version": 1, "jobs": [entry, entry]}), encoding="utf-8")
    with pytest.raises(InvalidPrivacyInput, match="appears twice"):
        PrivacyLedger(tmp_path).charge(budget, job_id="k", epsilon_after_round=0.1, delta=1e-5, mechanism="dp-sgd")


def test_write_leaves_no_temporary_files(tmp_path, budget):
    ledger = PrivacyLedger(tmp_path)
    for round_number in range(3):
        ledger.charge(budget, job_id="j", epsilon_after_round=0.5 * (round_number + 1), delta=1e-5, mechanism="x")
    assert sorted(path.name for path in tmp_path.iterdir()) == [LEDGER_FILE, LEDGER_FILE + ".lock"]


def test_concurrent_jobs_cannot_overspend(tmp_path):
    budget = PrivacyBudget(epsilon_budget=5.0, delta=1e-3)
    outcomes: list[str] = []

    def charge(job_id: str) -> None:
        try:
            PrivacyLedger(tmp_path).charge(budget, job_id=job_id, epsilon_after_round=1.0, delta=1e-5, mechanism="x")
            outcomes.append("charged")
        except BudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=charge, args=(f"job-{index}",)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("charged") == 5
    assert outcomes.count("refused") == 3
    assert sum(job.epsilon for job in PrivacyLedger(tmp_path).jobs()) == pytest.approx(5.0)
