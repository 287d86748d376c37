"""DP at the site (DP-SGD rounds charged to the budget) and on the server (DP-FedAvg, workflow options)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from app_custom.core.errors import NoValidContributions
from app_custom.core.privacy.accounting import epsilon_after
from app_custom.core.privacy.client_dp import ClientDPConfig
from app_custom.core.privacy.errors import HEConfigError, InvalidPrivacyInput, InvalidPrivacySetting
from app_custom.flare.controller import ConsortiaFedAvg
from app_custom.flare.dp_aggregator import ClientDPRoundAggregator
from app_custom.flare.dp_ledger import PrivacyLedger
from app_custom.flare.dp_site import RoundRefused, SiteDPSGD, SiteDPSGDRunner
from app_custom.flare.privacy import PrivateFedAvg
from app_custom.flare.site_trainer import SiteTrainer
from app_custom.models.mlp import TabularMLP
from app_custom.site.train_tabular import dp_settings, parse_args


@pytest.fixture(autouse=True)
def _one_thread_quiet_opacus():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield
    torch.set_num_threads(threads)


def site_root(tmp_path: Path, epsilon: float = 10.0, delta: float = 1e-4) -> Path:
    (tmp_path / "local").mkdir(exist_ok=True)
    config = {"data_dir": "data", "privacy_budget": {"epsilon": epsilon, "delta": delta}}
    (tmp_path / "local" / "consortia_site.json").write_text(json.dumps(config), encoding="utf-8")
    return tmp_path


def settings(root: Path, **changes) -> SiteDPSGD:
    values = {
        "epsilon": 3.0, "delta": 1e-4, "max_grad_norm": 1.0, "batch_size": 50, "learning_rate": 0.01, "local_epochs": 1, "site_root": root
    }
    values.update(changes)
    return SiteDPSGD(**values)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 10)).astype(np.float32)
    y = (x[:, 0] + 0.5 * rng.normal(size=500) > 0).astype(np.float32)
    return x, y


def run_rounds(runner: SiteDPSGDRunner, data, rounds: int, total_rounds: int) -> list[dict[str, float]]:
    x, y = data
    model = TabularMLP(num_features=10, hidden=(8,), seed=0)
    reports = []
    for _ in range(rounds):
        _, metrics = runner.train_round(model, x, y, total_rounds=total_rounds, loss_fn=torch.nn.BCEWithLogitsLoss())
        reports.append(metrics)
    return reports


# ---------------------------------------------------------------- DP-SGD at the site


def test_job_epsilon_stays_within_target(tmp_path, data):
    runner = SiteDPSGDRunner(settings(site_root(tmp_path)), job_id="job-1")
    reports = run_rounds(runner, data, rounds=3, total_rounds=3)
    epsilons = [report["dp_epsilon"] for report in reports]
    assert epsilons == sorted(epsilons)
    assert 0 < epsilons[0] < epsilons[-1] <= 3.0
    assert {report["dp_delta"] for report in reports} == {1e-4}
    assert reports[0]["dp_noise_multiplier"] > 0
    recorded = {job.job_id: job.epsilon for job in PrivacyLedger(tmp_path).jobs()}
    assert recorded["job-1"] == pytest.approx(epsilons[-1], rel=1e-6)


def test_epsilon_within_target_when_batches_round_down(tmp_path):
    # 930 rows in batches of 10 give 93 batches, and Opacus' Poisson loader then has int(1 / (1 / 93)) = 92.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(930, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    runner = SiteDPSGDRunner(settings(site_root(tmp_path), batch_size=10), job_id="job-1")
    reports = run_rounds(runner, (x, y), rounds=2, total_rounds=2)
    assert reports[-1]["dp_epsilon"] <= 3.0
    assert PrivacyLedger(tmp_path).jobs()[0].epsilon == pytest.approx(reports[-1]["dp_epsilon"], rel=1e-9)


def test_round_past_calibration_refused(tmp_path, data):
    runner = SiteDPSGDRunner(settings(site_root(tmp_path)), job_id="job-1")
    run_rounds(runner, data, rounds=1, total_rounds=1)
    with pytest.raises(RoundRefused, match="calibrated for") as refused:
        run_rounds(runner, data, rounds=1, total_rounds=1)
    assert refused.value.code == "privacy_budget_exhausted"


def test_exhausted_budget_refuses_before_training(tmp_path, data):
    runner = SiteDPSGDRunner(settings(site_root(tmp_path, epsilon=0.5)), job_id="job-1")
    x, y = data
    model = TabularMLP(num_features=10, hidden=(8,), seed=0)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(RoundRefused, match="cannot train another round") as refused:
        runner.train_round(model, x, y, total_rounds=1, loss_fn=torch.nn.BCEWithLogitsLoss())
    assert refused.value.code == "privacy_budget_exhausted"
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert PrivacyLedger(tmp_path).jobs() == []


def test_missing_budget_refuses(tmp_path, data):
    runner = SiteDPSGDRunner(settings(tmp_path), job_id="job-1")
    with pytest.raises(RoundRefused, match="not found") as refused:
        run_rounds(runner, data, rounds=1, total_rounds=1)
    assert refused.value.code == "privacy_budget_invalid"


def test_corrupt_ledger_refuses(tmp_path, data):
    root = site_root(tmp_path)
    (root / "privacy-ledger.json").write_text("[]", encoding="utf-8")
    runner = SiteDPSGDRunner(settings(root), job_id="job-1")
    with pytest.raises(RoundRefused, match="not a version 1 ledger") as refused:
        run_rounds(runner, data, rounds=1, total_rounds=1)
    assert refused.value.code == "privacy_ledger_invalid"


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"epsilon": float("nan")}, "target_epsilon=nan"),
        ({"epsilon": 0.0}, "target_epsilon=0.0"),
        ({"epsilon": -1.0}, "target_epsilon=-1.0"),
        ({"epsilon": float("inf")}, "target_epsilon=inf"),
        ({"delta": 0.0}, "target_delta=0.0"),
        ({"delta": 1.0}, "target_delta=1.0"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm=nan"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
    ],
)
def test_invalid_site_setting_rejected(tmp_path, changes, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        settings(tmp_path, **changes)


def test_delta_above_one_over_n_rejected(tmp_path, data):
    runner = SiteDPSGDRunner(settings(site_root(tmp_path), delta=0.01), job_id="job-1")
    with pytest.raises(InvalidPrivacySetting, match="below 1/num_examples"):
        run_rounds(runner, data, rounds=1, total_rounds=1)


@pytest.mark.parametrize("total_rounds", [None, 0, True])
def test_missing_total_rounds_rejected(tmp_path, total_rounds):
    with pytest.raises(InvalidPrivacySetting, match="total_rounds"):
        settings(tmp_path).config_for(total_rounds)


def parsed(*argv: str) -> argparse.Namespace:
    return parse_args(["--data-dir", "d", *argv])


def test_script_without_dp_flags_trains_plainly():
    assert dp_settings(parsed()) is None


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (("--dp-delta", "1e-5"), "without --dp-epsilon"),
        (("--dp-max-grad-norm", "1"), "without --dp-epsilon"),
        (("--dp-grad-sample-mode", "hooks"), "without --dp-epsilon"),
        (("--dp-epsilon", "3", "--site-root", "r", "--fedprox-mu", "0.1"), "cannot be combined with DP-SGD"),
        (("--dp-epsilon", "3"), "needs --site-root"),
        (("--dp-epsilon", "nan", "--site-root", "r"), "target_epsilon=nan"),
        (("--dp-epsilon", "3", "--dp-delta", "-1", "--site-root", "r"), "target_delta=-1.0"),
    ],
)
def test_script_dp_flags_fail_closed(argv, fragment):
    with pytest.raises(InvalidPrivacySetting, match=fragment):
        dp_settings(parsed(*argv))


def test_script_dp_defaults():
    dp = dp_settings(parsed("--dp-epsilon", "2", "--site-root", "/kit"))
    assert (dp.epsilon, dp.delta, dp.max_grad_norm, dp.site_root) == (2.0, 1e-5, 1.0, Path("/kit"))
    assert dp.grad_sample_mode == "auto"


def test_script_grad_sample_mode_flag():
    dp = dp_settings(parsed("--dp-epsilon", "2", "--site-root", "/kit", "--dp-grad-sample-mode", "hooks"))
    assert dp.grad_sample_mode == "hooks"


def test_unknown_grad_sample_mode_rejected(tmp_path):
    with pytest.raises(InvalidPrivacySetting, match="invalid grad_sample_mode='ghost'"):
        SiteDPSGD(
            epsilon=2.0,
            delta=1e-5,
            max_grad_norm=1.0,
            batch_size=32,
            learning_rate=1e-3,
            local_epochs=1,
            site_root=tmp_path,
            grad_sample_mode="ghost",
        )


@pytest.mark.parametrize("script_args", ["--site-root /tmp/x", "--site-root=/tmp/x"])
def test_job_cannot_set_site_root(script_args):
    with pytest.raises(ValueError, match="must not set --site-root"):
        SiteTrainer(script="tabular", script_args=script_args)


# ---------------------------------------------------------------- DP-FedAvg on the server


def dp_config(**changes) -> ClientDPConfig:
    values = {"clip_norm": 1.0, "noise_multiplier": 1.0, "sample_rate": 1.0, "target_delta": 1e-5}
    values.update(changes)
    return ClientDPConfig(**values)


def test_client_dp_round_matches_formula():
    global_params = {"w": np.zeros(4, dtype=np.float32)}
    updates = [np.array([3.0, 4.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.3, 0.4])]
    aggregator = ClientDPRoundAggregator(dp_config(), rng=np.random.default_rng(7))
    aggregator.start_round(global_params, num_sites=4)
    for index, update in enumerate(updates):
        aggregator.add(f"s{index}", {"w": update.astype(np.float32)}, 100.0, None)
    result = aggregator.result()

    noise = np.random.default_rng(7).normal(0.0, 1.0 * 1.0 / 4, size=4)
    clipped_sum = np.array([0.6, 0.8, 0.3, 0.4]) * np.array([1 - 1e-6, 1 - 1e-6, 1, 1])
    assert result["w"].dtype == np.float32
    assert np.allclose(result["w"], clipped_sum / 4 + noise, atol=1e-6)
    assert aggregator.rounds_done == 1
    assert aggregator.epsilon() == pytest.approx(epsilon_after(1, 1.0, 1.0, 1e-5))


def test_client_dp_ignores_num_examples():
    results = []
    for weights in ((1.0, 1.0), (1.0, 1000.0)):
        aggregator = ClientDPRoundAggregator(dp_config(), rng=np.random.default_rng(1))
        aggregator.start_round({"w": np.zeros(2)}, num_sites=2)
        aggregator.add("a", {"w": np.array([0.1, 0.0])}, weights[0], None)
        aggregator.add("b", {"w": np.array([0.0, 0.1])}, weights[1], None)
        results.append(aggregator.result()["w"])
    assert np.array_equal(results[0], results[1])


def test_client_dp_epsilon_grows_per_round():
    aggregator = ClientDPRoundAggregator(dp_config())
    epsilons = []
    for _ in range(3):
        aggregator.start_round({"w": np.zeros(2)}, num_sites=3)
        aggregator.add("a", {"w": np.ones(2)}, 1.0, None)
        aggregator.result()
        epsilons.append(aggregator.epsilon())
    assert epsilons == sorted(epsilons)
    assert epsilons[0] > 0


def test_client_dp_not_started_rejected():
    aggregator = ClientDPRoundAggregator(dp_config())
    with pytest.raises(InvalidPrivacyInput, match="round not started"):
        aggregator.add("a", {"w": np.ones(2)}, 1.0, None)


def test_client_dp_empty_round_releases_nothing():
    aggregator = ClientDPRoundAggregator(dp_config())
    aggregator.start_round({"w": np.zeros(2)}, num_sites=2)
    with pytest.raises(NoValidContributions, match="releases no aggregate"):
        aggregator.result()


def test_client_dp_rejects_non_finite_update():
    aggregator = ClientDPRoundAggregator(dp_config())
    aggregator.start_round({"w": np.zeros(2)}, num_sites=2)
    with pytest.raises(InvalidPrivacyInput, match="NaN or infinity"):
        aggregator.add("a", {"w": np.array([np.nan, 0.0])}, 1.0, None)


def test_client_dp_rejects_mismatched_keys():
    aggregator = ClientDPRoundAggregator(dp_config())
    aggregator.start_round({"w": np.zeros(2)}, num_sites=2)
    with pytest.raises(InvalidPrivacyInput, match="sent keys"):
        aggregator.add("a", {"v": np.zeros(2)}, 1.0, None)


def test_client_dp_delta_checked_against_sites():
    aggregator = ClientDPRoundAggregator(dp_config(target_delta=0.4))
    with pytest.raises(InvalidPrivacySetting, match="below 1/num_sites"):
        aggregator.start_round({"w": np.zeros(2)}, num_sites=3)


VALID_CLIENT_DP = {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_delta": 1e-5}


@pytest.mark.parametrize("field", ["clip_norm", "noise_multiplier", "target_delta"])
@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0, float("inf")])
def test_workflow_rejects_bad_client_dp(field, value):
    with pytest.raises(InvalidPrivacySetting, match=f"{field}="):
        PrivateFedAvg(client_dp={**VALID_CLIENT_DP, field: value})


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"client_dp": 1.0}, InvalidPrivacySetting, "expected an object"),
        ({"client_dp": {**VALID_CLIENT_DP, "clipnorm": 1}}, InvalidPrivacySetting, "clipnorm"),
        ({"client_dp": VALID_CLIENT_DP, "secure_aggregation": {}}, InvalidPrivacySetting, "cannot be combined"),
        ({"client_dp": VALID_CLIENT_DP, "aggregation": {"method": "median"}}, InvalidPrivacySetting, "aggregation="),
        ({"client_dp": VALID_CLIENT_DP, "site_selection": {"variant": "full_coverage"}}, InvalidPrivacySetting,
         "site_selection"),
        ({"secure_aggregation": {}, "max_update_norm": 5.0}, InvalidPrivacySetting, "encrypted params"),
        ({"secure_aggregation": {"preset": "ckks_4096"}}, HEConfigError, "unknown CKKS preset"),
        ({"secure_aggregation": {"context_file": 3}}, HEConfigError, "context_file"),
        ({"site_dp": {"max_epsilon": float("nan")}}, InvalidPrivacySetting, "max_epsilon=nan"),
        ({"site_dp": {"max_epsilon": 0}}, InvalidPrivacySetting, "max_epsilon=0"),
    ],
)
def test_workflow_rejects_bad_options(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        PrivateFedAvg(**kwargs)


def test_workflow_uses_dp_aggregator():
    workflow = PrivateFedAvg(client_dp=VALID_CLIENT_DP, num_rounds=2)
    assert isinstance(workflow.round_aggregator, ClientDPRoundAggregator)


# ---------------------------------------------------------------- results the workflow records


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, dict]] = []

    def __call__(self, event_type, *, site=None, payload=None) -> None:
        self.events.append((event_type, site, payload or {}))


def recording(workflow: ConsortiaFedAvg) -> Recorder:
    recorder = Recorder()
    workflow._emit = recorder  # type: ignore[method-assign]
    workflow.warning = lambda message: None  # type: ignore[method-assign]
    workflow.info = lambda message: None  # type: ignore[method-assign]
    return recorder


def fl_model(**fields):
    from nvflare.app_common.abstract.fl_model import FLModel

    return FLModel(**fields)


@pytest.mark.parametrize(
    ("refused", "code", "extra"),
    [
        ("privacy_budget_exhausted", "privacy_budget_exhausted", {"excluded_from_job": True}),
        ("Bad Code!", "refused", {}),
    ],
)
def test_refused_result_recorded(refused, code, extra):
    workflow = ConsortiaFedAvg(num_rounds=1)
    recorder = recording(workflow)
    result = fl_model(metrics={"global_roc_auc": 0.6}, meta={"client_name": "b", "refused": refused, "reason": "why"})
    assert workflow._accept("b", result) is None
    assert recorder.events == [("contribution.rejected", "b", {"reason_code": code, "reason": "why", **extra})]


def test_site_dp_epsilon_emitted_and_bounded():
    workflow = PrivateFedAvg(site_dp={"max_epsilon": 3.0}, num_rounds=1)
    recorder = recording(workflow)
    workflow._start_collecting(fl_model(params={"w": np.zeros(2, dtype=np.float32)}))
    dp = {"dp_epsilon": 2.5, "dp_delta": 1e-5, "dp_noise_multiplier": 1.1, "dp_max_grad_norm": 1.0}
    workflow._on_result(
        fl_model(params={"w": np.ones(2, dtype=np.float32)}, metrics=dp, meta={"client_name": "a", "num_examples": 5})
    )
    too_much = {**dp, "dp_epsilon": 3.5}
    workflow._on_result(
        fl_model(params={"w": np.ones(2, dtype=np.float32)}, metrics=too_much, meta={"client_name": "b", "num_examples": 5})
    )
    types = [(event_type, site) for event_type, site, _ in recorder.events]
    assert types == [
        ("contribution.accepted", "a"),
        ("privacy.spent", "a"),
        ("contribution.rejected", "b"),
        ("privacy.spent", "b"),
    ]
    spent = recorder.events[1][2]
    assert spent == {"epsilon": 2.5, "delta": 1e-5, "noise_multiplier": 1.1, "mechanism": "dp-sgd", "max_grad_norm": 1.0}
    assert recorder.events[2][2]["reason_code"] == "dp_epsilon_exceeded"


def test_site_without_dp_rejected_when_required():
    workflow = PrivateFedAvg(site_dp={"max_epsilon": 3.0}, num_rounds=1)
    recorder = recording(workflow)
    workflow._start_collecting(fl_model(params={"w": np.zeros(2, dtype=np.float32)}))
    assert workflow._accept("a", fl_model(params={"w": np.ones(2, dtype=np.float32)}, meta={"num_examples": 5})) is None
    assert recorder.events[0][2]["reason_code"] == "dp_epsilon_exceeded"


def test_server_loads_only_public_context(monkeypatch):
    from app_custom.flare import privacy

    calls = []

    def fake_load(file_name, preset_name, *, secret):
        calls.append((file_name, preset_name, secret))
        raise HEConfigError("no kit here")

    monkeypatch.setattr(privacy, "load_kit_context", fake_load)
    workflow = PrivateFedAvg(secure_aggregation={}, num_rounds=1)
    panics = []
    workflow.system_panic = lambda reason, fl_ctx: panics.append(reason)  # type: ignore[method-assign]
    workflow.run()
    assert calls == [("server_context.tenseal", "ckks_8192", False)]
    assert panics == ["secure aggregation cannot start: no kit here"]
