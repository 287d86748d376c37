"""Baselines experiment: centralized, federated (FedAvg) and local-only training on ``flchain`` and ``digits``.

- centralized: one model trained on the union of the sites' training data, which no party of a federation may
  hold;
- federated: FedAvg over the sites, every site training every round;
- local-only: each site trains its own model on its own data; the table gives the mean over sites.

All three train for the same number of epochs over each example (rounds × local epochs) and are evaluated on the
union of the held-out data. ``flchain`` sites come from ``app_custom.data.tabular.write_site_partitions``, the same
files the demo federation uses, written into a temporary folder.

Run::

    .venv/bin/python -m experiments.baselines
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from app_custom.data.tabular import FEATURES, load_site_data, write_site_partitions
from app_custom.site.training import LocalTrainingConfig, load_numpy_params
from experiments.datasets import load_digits_dataset, split_sites
from experiments.reporting import (
    RunProgress,
    Section,
    add_common_arguments,
    fmt_mean_std,
    markdown_table,
    print_section,
    progress_display,
    set_single_thread,
)
from experiments.simulation import (
    FederatedConfig,
    SiteData,
    evaluate_model,
    make_sites,
    model_factory,
    run_federated,
    train_single,
)

__all__ = ["BaselineSettings", "run"]

Metrics = dict[str, float | None]


@dataclass(frozen=True)
class BaselineSettings:
    """Settings of the baselines experiment; ``smoke()`` gives a run of a few seconds for tests."""

    seeds: tuple[int, ...] = (0, 1, 2)
    flchain_rounds: int = 15
    flchain_sites: int = 3
    flchain_label_skew_alpha: float = 1.0
    flchain_test_fraction: float = 0.2
    digits_rounds: int = 30
    digits_sites: int = 10
    digits_label_skew_alpha: float = 0.3
    flchain_local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(local_epochs=2, batch_size=128, learning_rate=3e-3)
    )
    digits_local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(local_epochs=2, batch_size=64, learning_rate=3e-3)
    )

    @classmethod
    def smoke(cls) -> BaselineSettings:
        """Return tiny settings: one seed, one round of one epoch."""
        one_epoch = LocalTrainingConfig(local_epochs=1, batch_size=256, learning_rate=3e-3)
        return cls(seeds=(0,), flchain_rounds=1, digits_rounds=1, flchain_local=one_epoch, digits_local=one_epoch)


@dataclass(frozen=True)
class _Federation:
    sites: list[SiteData]
    site_tests: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    num_features: int
    num_classes: int


def _flchain_federation(settings: BaselineSettings, seed: int) -> _Federation:
    with tempfile.TemporaryDirectory(prefix="consortia-baselines-") as folder:
        site_dirs = {f"site-{index}": Path(folder) / f"site-{index}" for index in range(settings.flchain_sites)}
        write_site_partitions(site_dirs, seed=seed, label_skew_alpha=settings.flchain_label_skew_alpha,
                              test_fraction=settings.flchain_test_fraction)
        loaded = {name: load_site_data(path) for name, path in site_dirs.items()}
    sites = [SiteData(name, data.x_train, data.y_train.astype(np.int64)) for name, data in loaded.items()]
    site_tests = [(data.x_test, data.y_test.astype(np.int64)) for data in loaded.values()]
    test = (np.concatenate([x for x, _ in site_tests]), np.concatenate([y for _, y in site_tests]))
    return _Federation(sites, site_tests, test, len(FEATURES), 2)


def _digits_federation(settings: BaselineSettings, seed: int) -> _Federation:
    dataset = load_digits_dataset(seed)
    parts = split_sites(dataset, settings.digits_sites, settings.digits_label_skew_alpha, seed, min_size=10)
    sites = make_sites(dataset.x_train, dataset.y_train, parts)
    test = (dataset.x_test, dataset.y_test)
    return _Federation(sites, [], test, dataset.num_features, dataset.num_classes)


def _centralized(federation: _Federation, local: LocalTrainingConfig, epochs: int, seed: int) -> list[Metrics]:
    x = np.concatenate([site.x for site in federation.sites])
    y = np.concatenate([site.y for site in federation.sites])
    model = train_single(x, y, factory=model_factory(federation.num_features, federation.num_classes, seed),
                         local=replace(local, local_epochs=epochs, seed=seed), num_classes=federation.num_classes)
    return [_evaluate_everywhere(lambda x_, y_: evaluate_model(model, x_, y_, federation.num_classes), federation)]


def _federated(
    federation: _Federation, local: LocalTrainingConfig, rounds: int, seed: int, on_round: Callable[[int], None]
) -> list[Metrics]:
    factory = model_factory(federation.num_features, federation.num_classes, seed)
    config = FederatedConfig(rounds=rounds, local=replace(local, seed=seed))
    result = run_federated(federation.sites, federation.test, num_classes=federation.num_classes, factory=factory,
                           config=config, seed=seed, on_round=on_round)
    model = factory()
    load_numpy_params(model, result.params)
    return [_evaluate_everywhere(lambda x_, y_: evaluate_model(model, x_, y_, federation.num_classes), federation,
                                 pooled=result.metrics)]


def _local_only(federation: _Federation, local: LocalTrainingConfig, epochs: int, seed: int) -> list[Metrics]:
    factory = model_factory(federation.num_features, federation.num_classes, seed)
    per_site = []
    for index, site in enumerate(federation.sites):
        model = train_single(site.x, site.y, factory=factory, num_classes=federation.num_classes,
                             local=replace(local, local_epochs=epochs, seed=seed * 100 + index))
        metrics = evaluate_model(model, federation.test[0], federation.test[1], federation.num_classes)
        if federation.site_tests:
            own_x, own_y = federation.site_tests[index]
            metrics["own_site_roc_auc"] = evaluate_model(model, own_x, own_y, federation.num_classes)["roc_auc"]
        per_site.append(metrics)
    return per_site


def _evaluate_everywhere(
    evaluate: Callable[[np.ndarray, np.ndarray], Metrics], federation: _Federation, pooled: Metrics | None = None
) -> Metrics:
    metrics = dict(pooled) if pooled is not None else evaluate(*federation.test)
    if federation.site_tests:
        aucs = [evaluate(x, y)["roc_auc"] for x, y in federation.site_tests]
        defined = [auc for auc in aucs if auc is not None]
        metrics["own_site_roc_auc"] = float(np.mean(defined)) if defined else None
    return metrics


_METHODS = ("centralized (pooled data)", "federated (FedAvg)", "local-only (mean over sites)")


def _run_dataset(
    name: str, settings: BaselineSettings, seed: int, progress: RunProgress
) -> dict[str, list[Metrics]]:
    if name == "flchain":
        federation, local, rounds = _flchain_federation(settings, seed), settings.flchain_local, settings.flchain_rounds
    else:
        federation, local, rounds = _digits_federation(settings, seed), settings.digits_local, settings.digits_rounds
    epochs = rounds * local.local_epochs
    on_round = progress.run(f"baselines {name} | federated | seed {seed}", rounds)
    return {
        _METHODS[0]: _centralized(federation, local, epochs, seed),
        _METHODS[1]: _federated(federation, local, rounds, seed, on_round),
        _METHODS[2]: _local_only(federation, local, epochs, seed),
    }


def _table(name: str, runs: dict[str, list[dict[str, list[Metrics]]]]) -> str:
    if name == "flchain":
        metrics = ("accuracy", "balanced_accuracy", "roc_auc", "minority_f1", "own_site_roc_auc")
    else:
        metrics = ("accuracy", "balanced_accuracy", "roc_auc", "macro_f1", "worst_class_recall")
    rows = []
    for method in _METHODS:
        # Each seed contributes the mean over its models (one model except for local-only), then seeds are summarised.
        per_seed = [{metric: _mean_defined([m.get(metric) for m in seed_runs[method]]) for metric in metrics}
                    for seed_runs in runs[name]]
        rows.append([method, *(fmt_mean_std([values[metric] for values in per_seed]) for metric in metrics)])
    return markdown_table(["method", *metrics], rows)


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def run(settings: BaselineSettings, *, show_progress: bool = True) -> Section:
    """Run the three baselines on both data sets and every seed; return the Markdown section."""
    started = time.perf_counter()
    names = ("flchain", "digits")
    runs: dict[str, list[dict[str, list[Metrics]]]] = {name: [] for name in names}
    with progress_display(show_progress) as progress:
        for name in names:
            runs[name] = [_run_dataset(name, settings, seed, progress) for seed in settings.seeds]
    parts = [_setup_text(settings)]
    parts += [f"**{name}**\n\n{_table(name, runs)}" for name in names]
    return Section("baselines", "Centralized, federated and local-only training", "\n\n".join(parts),
                   time.perf_counter() - started)


def _setup_text(settings: BaselineSettings) -> str:
    flchain, digits = settings.flchain_local, settings.digits_local
    return (
        f"Seeds {list(settings.seeds)}; mean ± sample std over seeds. Every method trains for rounds × local epochs "
        "epochs in total over its data (Adam; the federated sites start a fresh optimiser each round).\n\n"
        f"- **flchain**: `write_site_partitions` with {settings.flchain_sites} sites, Dirichlet label skew "
        f"α={settings.flchain_label_skew_alpha} on death, {settings.flchain_test_fraction:.0%} of each site held out. "
        f"Metrics are on the union of the sites' held-out rows; `own_site_roc_auc` is the mean over sites of ROC AUC "
        f"on each site's own held-out rows. Model `TabularMLP` (32, 16); {settings.flchain_rounds} rounds × "
        f"{flchain.local_epochs} epochs, batch {flchain.batch_size}, learning rate {flchain.learning_rate}. "
        "Minority-class F1 (the minority class is death) uses threshold 0.5.\n"
        f"- **digits**: 70/30 split stratified by class, the training part split across {settings.digits_sites} "
        f"sites with Dirichlet α={settings.digits_label_skew_alpha}. Model: MLP 64-64-10; "
        f"{settings.digits_rounds} rounds × {digits.local_epochs} epochs, batch {digits.batch_size}, learning rate "
        f"{digits.learning_rate}."
    )


def main() -> None:
    """Parse arguments, run the experiment and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    arguments = parser.parse_args()
    set_single_thread()
    settings = BaselineSettings(seeds=tuple(range(arguments.seeds)))
    if arguments.rounds is not None:
        settings = replace(settings, flchain_rounds=arguments.rounds, digits_rounds=arguments.rounds)
    print_section(run(settings, show_progress=not arguments.quiet))


if __name__ == "__main__":
    main()
