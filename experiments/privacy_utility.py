"""Utility of sample-level DP-SGD on the clinical data: FedAvg ROC AUC against the job's target epsilon.

In process, without FLARE: three sites get the demo's label-skewed flchain partitions
(``app_custom.data.tabular.write_site_partitions``), and each trains the demo's MLP with DP-SGD
(``app_custom.site.training.make_private_trainer``) for every round of a FedAvg job. The noise is calibrated for the
whole job, so the final model satisfies (epsilon, delta)-DP per training record at every site. Epsilon = inf
trains without DP and with the same optimizer, batch size and rounds. The ROC AUC is measured on the pooled held-out
rows of all sites, which only an experiment may read.

Run::

    .venv/bin/python experiments/privacy_utility.py [--rounds 5] [--seeds 0 1 2] [--output results.json]

It prints a Markdown table (docs/privacy.md has one run) and takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from app_custom.core.aggregation import WeightedFedAvg
from app_custom.core.privacy.dp_sgd import DPSGDConfig
from app_custom.data.tabular import SiteData, load_site_data, write_site_partitions
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import (
    LocalTrainingConfig,
    load_numpy_params,
    make_private_trainer,
    predict_scores,
    state_dict_to_numpy,
    train_local,
    train_private_round,
)

SITES = ("hospital-a", "hospital-b", "hospital-c")
EPSILONS = (1.0, 3.0, 8.0, math.inf)
DELTA = 1e-5
MAX_GRAD_NORM = 1.0
BATCH_SIZE = 64
LEARNING_RATE = 0.005
HIDDEN = (32, 16)
# The demo's partition settings (provisioning/consortium.yml).
PARTITION = {"seed": 20260, "label_skew_alpha": 1.0, "test_fraction": 0.2}


def load_sites(folder: Path) -> dict[str, SiteData]:
    """Write the demo's three site partitions under ``folder`` and load them."""
    site_dirs = {site: folder / site for site in SITES}
    write_site_partitions(site_dirs, **PARTITION)
    return {site: load_site_data(path) for site, path in site_dirs.items()}


def run_job(sites: dict[str, SiteData], epsilon: float, *, rounds: int, seed: int) -> float:
    """Train one FedAvg job with DP-SGD at every site (no DP when ``epsilon`` is inf); return the pooled ROC AUC."""
    torch.manual_seed(seed)
    num_features = next(iter(sites.values())).num_features
    global_model = TabularMLP(num_features=num_features, hidden=HIDDEN, seed=seed)
    site_models = {site: TabularMLP(num_features=num_features, hidden=HIDDEN, seed=seed) for site in sites}
    private = {}
    if math.isfinite(epsilon):
        config = DPSGDConfig(
            target_epsilon=epsilon, target_delta=DELTA, max_grad_norm=MAX_GRAD_NORM, epochs=rounds, batch_size=BATCH_SIZE
        )
        for site, data in sites.items():
            private[site] = make_private_trainer(
                site_models[site], data.x_train, data.y_train, config, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE
            )
    loss_fn = torch.nn.BCEWithLogitsLoss()

    for round_number in range(rounds):
        global_params = state_dict_to_numpy(global_model)
        average = WeightedFedAvg()
        for site, data in sites.items():
            model = site_models[site]
            load_numpy_params(model, global_params)
            if site in private:
                train_private_round(private[site], 1, loss_fn)
            else:
                config = LocalTrainingConfig(
                    local_epochs=1, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE, seed=seed * 1000 + round_number
                )
                train_local(model, data.x_train, data.y_train, config, loss_fn=loss_fn)
            average.add(state_dict_to_numpy(model), float(len(data.y_train)))
        load_numpy_params(global_model, average.result())

    for site, training in private.items():
        assert training.epsilon() <= epsilon, f"{site} spent epsilon={training.epsilon()} above the target {epsilon}"
    x_test = np.concatenate([data.x_test for data in sites.values()])
    y_test = np.concatenate([data.y_test for data in sites.values()])
    return float(roc_auc_score(y_test, predict_scores(global_model, x_test)))


def format_table(results: dict[str, list[float]], rounds: int, seeds: list[int]) -> str:
    """Return the results as a Markdown table, one row per epsilon."""
    lines = [
        f"| target epsilon (whole job, delta={DELTA:g}) | ROC AUC mean | std | per seed ({', '.join(map(str, seeds))}) |",
        "|---|---|---|---|",
    ]
    for label, scores in results.items():
        per_seed = ", ".join(f"{score:.3f}" for score in scores)
        lines.append(f"| {label} | {np.mean(scores):.3f} | {np.std(scores):.3f} | {per_seed} |")
    lines.append(f"\n{len(SITES)} sites, FedAvg, {rounds} rounds of 1 local epoch, batch {BATCH_SIZE}, Adam "
                 f"lr {LEARNING_RATE}, clip norm {MAX_GRAD_NORM}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="FedAvg rounds (one local epoch each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of model init and training")
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(1)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="privacy_utility_") as folder:
        sites = load_sites(Path(folder))
    results: dict[str, list[float]] = {}
    for epsilon in EPSILONS:
        label = "inf (no DP)" if math.isinf(epsilon) else f"{epsilon:g}"
        results[label] = [run_job(sites, epsilon, rounds=args.rounds, seed=seed) for seed in args.seeds]
        print(f"epsilon={label}: ROC AUC {np.mean(results[label]):.3f}", flush=True)
    print()
    print(format_table(results, args.rounds, args.seeds))
    print(f"\n{time.monotonic() - started:.0f} s")
    if args.output:
        args.output.write_text(json.dumps({"rounds": args.rounds, "seeds": args.seeds, "roc_auc": results}, indent=2))


if __name__ == "__main__":
    main()
