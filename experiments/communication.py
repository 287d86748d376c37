"""Communication experiment: CatFedAvg (both variants) against FedAvg on label-skewed ``digits``.

CatFedAvg (Sarkar, Rai, Narang, arXiv 2011.07229) has sites send metadata about their training data each round and the
server request only a subset of updates by "category coverage maximization", in two variants. Only the abstract was
available, so the rule is our reading, ``app_custom.core.selection.select_by_category_coverage``: sites send class
histograms, and the server greedily selects sites until every class is covered (``full_coverage``) or exactly
``budget`` sites (``budget``). Bytes uploaded count each selected model (float32) plus every candidate's histogram.

Run::

    .venv/bin/python -m experiments.communication
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field, replace

import numpy as np

from app_custom.site.training import LocalTrainingConfig
from experiments.datasets import load_digits_dataset, split_sites
from experiments.reporting import (
    RunProgress,
    Section,
    add_common_arguments,
    fmt_mean_std,
    markdown_table,
    mean,
    print_section,
    progress_display,
    set_single_thread,
)
from experiments.simulation import FederatedConfig, FederatedResult, make_sites, model_factory, run_federated

__all__ = ["CommunicationSettings", "run"]

MIB = 2**20


@dataclass(frozen=True)
class CommunicationSettings:
    """Settings of the communication experiment; ``smoke()`` gives a run of a few seconds for tests."""

    seeds: tuple[int, ...] = (0, 1, 2)
    rounds: int = 30
    sites: int = 10
    label_skew_alpha: float = 0.3
    budget: int = 3
    sampled_candidates: int = 5
    target_accuracy: float = 0.9
    local: LocalTrainingConfig = field(
        default_factory=lambda: LocalTrainingConfig(local_epochs=2, batch_size=64, learning_rate=3e-3)
    )

    @classmethod
    def smoke(cls) -> CommunicationSettings:
        """Return tiny settings: one seed, two rounds of one epoch."""
        one_epoch = LocalTrainingConfig(local_epochs=1, batch_size=256, learning_rate=3e-3)
        return cls(seeds=(0,), rounds=2, local=one_epoch)


@dataclass(frozen=True)
class _Method:
    label: str
    selection: str
    budget: int | None = None


def _methods(settings: CommunicationSettings) -> tuple[_Method, ...]:
    return (
        _Method("FedAvg (every candidate uploads)", "all"),
        _Method("CatFedAvg, full_coverage", "full_coverage"),
        _Method(f"CatFedAvg, budget k={settings.budget}", "budget", settings.budget),
        _Method(f"FedAvg, {settings.budget} random candidates", "random", settings.budget),
    )


def _pools(settings: CommunicationSettings) -> tuple[tuple[str, int | None], ...]:
    return (
        (f"all {settings.sites} sites are candidates every round", None),
        (f"{settings.sampled_candidates} of {settings.sites} sites drawn as candidates each round",
         settings.sampled_candidates),
    )


def _run_one(
    method: _Method, pool: int | None, settings: CommunicationSettings, seed: int, progress: RunProgress, title: str
) -> FederatedResult:
    dataset = load_digits_dataset(seed)
    parts = split_sites(dataset, settings.sites, settings.label_skew_alpha, seed, min_size=10)
    sites = make_sites(dataset.x_train, dataset.y_train, parts)
    config = FederatedConfig(
        rounds=settings.rounds,
        local=replace(settings.local, seed=seed),
        selection=method.selection,  # type: ignore[arg-type]
        budget=method.budget,
        candidates_per_round=pool,
        evaluate_every_round=True,
    )
    return run_federated(
        sites,
        (dataset.x_test, dataset.y_test),
        num_classes=dataset.num_classes,
        factory=model_factory(dataset.num_features, dataset.num_classes, seed),
        config=config,
        seed=seed,
        on_round=progress.run(f"communication {title} | {method.label} | seed {seed}", settings.rounds),
    )


def _accuracy_at_bytes(result: FederatedResult, limit: int) -> float | None:
    """Return the accuracy after the last round whose cumulative upload stays within ``limit`` bytes."""
    value = None
    for record in result.history:
        if record.cumulative_upload_bytes > limit:
            break
        value = record.metrics["accuracy"] if record.metrics else None
    return value


def _bytes_to_accuracy(result: FederatedResult, target: float) -> float | None:
    """Return the MiB uploaded until the global model first reaches ``target`` accuracy, or None if never."""
    for record in result.history:
        accuracy = record.metrics["accuracy"] if record.metrics else None
        if accuracy is not None and accuracy >= target:
            return record.cumulative_upload_bytes / MIB
    return None


def _pool_table(
    methods: tuple[_Method, ...], runs: dict[str, list[FederatedResult]], settings: CommunicationSettings
) -> tuple[str, dict[str, float]]:
    num_seeds = len(settings.seeds)
    equal_bytes = [min(runs[method.label][index].total_upload_bytes for method in methods)
                   for index in range(num_seeds)]
    baseline = runs[methods[0].label]
    equal_mib = statistics.fmean(equal_bytes) / MIB
    header = ["method", "uploads per round", "total MiB uploaded", "bytes vs FedAvg", "final accuracy",
              "Δ accuracy vs FedAvg (points)", f"accuracy at equal bytes ({equal_mib:.2f} MiB)",
              f"MiB to reach accuracy {settings.target_accuracy}"]
    rows = []
    summary: dict[str, float] = {}
    for method in methods:
        results = runs[method.label]
        uploads = [float(np.mean([record.num_uploads for record in result.history])) for result in results]
        ratios = [100.0 * r.total_upload_bytes / b.total_upload_bytes for r, b in zip(results, baseline, strict=True)]
        deltas = [100.0 * (r.metrics["accuracy"] - b.metrics["accuracy"])  # type: ignore[operator]
                  for r, b in zip(results, baseline, strict=True)]
        rows.append([
            method.label,
            fmt_mean_std(uploads, 1),
            fmt_mean_std([r.total_upload_bytes / MIB for r in results], 2),
            fmt_mean_std(ratios, 0) + " %",
            fmt_mean_std([r.metrics["accuracy"] for r in results]),
            "—" if method is methods[0] else fmt_mean_std(deltas, 1),
            fmt_mean_std([_accuracy_at_bytes(r, limit) for r, limit in zip(results, equal_bytes, strict=True)]),
            fmt_mean_std([_bytes_to_accuracy(r, settings.target_accuracy) for r in results], 2),
        ])
        summary[f"{method.selection}:bytes_percent"] = mean(ratios) or 0.0
        summary[f"{method.selection}:accuracy_delta"] = mean(deltas) or 0.0
    return markdown_table(header, rows), summary


def _verdict(summaries: list[tuple[str, dict[str, float]]], settings: CommunicationSettings) -> str:
    lines = []
    for title, summary in summaries:
        for selection, label in (("full_coverage", "full_coverage"), ("budget", f"budget k={settings.budget}")):
            saved = 100.0 - summary[f"{selection}:bytes_percent"]
            delta = summary[f"{selection}:accuracy_delta"]
            both = saved >= 70.0 and delta >= 10.0
            lines.append(
                f"- {title}, CatFedAvg {label}: {saved:.0f} points less upload and {delta:+.1f} points accuracy "
                f"against FedAvg; the abstract's claim (70 points less transfer and +10 points) "
                f"{'is reproduced' if both else 'is not reproduced'} here."
            )
    return "\n".join(lines)


def run(settings: CommunicationSettings, *, show_progress: bool = True) -> Section:
    """Run every method on both candidate pools and every seed; return the Markdown section."""
    started = time.perf_counter()
    methods = _methods(settings)
    parts = [_setup_text(settings)]
    summaries = []
    with progress_display(show_progress) as progress:
        for title, pool in _pools(settings):
            runs = {method.label: [_run_one(method, pool, settings, seed, progress, title) for seed in settings.seeds]
                    for method in methods}
            table, summary = _pool_table(methods, runs, settings)
            parts.append(f"**{title}** ({settings.rounds} rounds)\n\n{table}")
            summaries.append((title, summary))
    parts += ["Against FedAvg with the same candidates, same number of rounds:", _verdict(summaries, settings)]
    return Section("communication", "Communication: CatFedAvg against FedAvg", "\n\n".join(parts),
                   time.perf_counter() - started)


def _setup_text(settings: CommunicationSettings) -> str:
    local = settings.local
    return (
        f"digits, 70/30 split stratified by class; the training part is split across {settings.sites} sites with "
        f"Dirichlet label skew α={settings.label_skew_alpha}. Model: MLP 64-64-10 (4,810 float32 parameters, "
        f"19,240 bytes per upload). Local training: Adam, learning rate {local.learning_rate}, {local.local_epochs} "
        f"epochs of batch {local.batch_size} per round. Seeds {list(settings.seeds)}; mean ± sample std over seeds. "
        "Bytes uploaded are model bytes per selected site per round plus, for CatFedAvg, 10 int32 class counts per "
        "candidate per round; downloads of the global model are not counted. A class counts as covered once the "
        "selected sites hold one example of it (`min_count=1`). \"Accuracy at equal bytes\" is each method's accuracy "
        "after its last round within the smallest total any method uploaded for that seed. The last row, FedAvg "
        f"over {settings.budget} random candidates, uploads as much as the budget variant, so it separates the "
        "effect of choosing by coverage from the effect of uploading less."
    )


def main() -> None:
    """Parse arguments, run the experiment and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    arguments = parser.parse_args()
    set_single_thread()
    settings = CommunicationSettings(seeds=tuple(range(arguments.seeds)))
    if arguments.rounds is not None:
        settings = replace(settings, rounds=arguments.rounds)
    print_section(run(settings, show_progress=not arguments.quiet))


if __name__ == "__main__":
    main()
