"""In-process federated simulation on the learning core: sites train with ``train_local``, the server aggregates
with ``RoundAggregator`` and may request only a subset of updates (CatFedAvg's category coverage).

No FLARE is involved, so a round costs only its local training. The FLARE jobs run the same core functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score
from torch import nn

from app_custom.core.losses import FocalLoss
from app_custom.core.metrics import binary_metrics
from app_custom.core.round_aggregation import AggregationConfig, RoundAggregator
from app_custom.core.selection import catfedavg_upload_bytes, select_by_category_coverage
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import LocalTrainingConfig, load_numpy_params, state_dict_to_numpy, train_local

__all__ = [
    "DigitsMLP",
    "FederatedConfig",
    "FederatedResult",
    "RoundRecord",
    "SiteData",
    "evaluate_model",
    "make_loss",
    "make_sites",
    "model_factory",
    "run_federated",
    "train_single",
]

LossName = Literal["cross_entropy", "focal"]
SelectionName = Literal["all", "random", "full_coverage", "budget"]
ModelFactory = Callable[[], nn.Module]
RoundCallback = Callable[[int], None]

BYTES_PER_VALUE = 4  # float32 parameters and int32 histogram counts


@dataclass(frozen=True)
class SiteData:
    """One simulated site's training examples."""

    name: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class FederatedConfig:
    """Settings of one simulated federated run.

    ``selection`` chooses which of this round's candidate sites upload: ``all`` (FedAvg), ``random`` (``budget``
    sites drawn at random), or CatFedAvg's ``full_coverage`` and ``budget`` variants, which need each candidate's
    class histogram first. ``candidates_per_round`` (None: every site) is FedAvg's client sampling, drawn before the
    selection.
    """

    rounds: int
    local: LocalTrainingConfig
    loss: LossName = "cross_entropy"
    focal_gamma: float = 2.0
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    selection: SelectionName = "all"
    budget: int | None = None
    candidates_per_round: int | None = None
    evaluate_every_round: bool = False


@dataclass(frozen=True)
class RoundRecord:
    """State after one round: sites that uploaded, cumulative bytes uploaded and, if evaluated, the metrics."""

    round: int
    num_uploads: int
    cumulative_upload_bytes: int
    metrics: dict[str, float | None] | None


@dataclass(frozen=True)
class FederatedResult:
    """Final global model, its metrics and the per-round history of one run."""

    params: dict[str, np.ndarray]
    metrics: dict[str, float | None]
    history: list[RoundRecord]

    @property
    def total_upload_bytes(self) -> int:
        """Bytes that sites uploaded over the whole run."""
        return self.history[-1].cumulative_upload_bytes if self.history else 0


class DigitsMLP(nn.Module):
    """Small MLP for 8x8 digit images: 64 inputs, one hidden layer, one logit per class."""

    def __init__(self, num_features: int = 64, hidden: int = 64, num_classes: int = 10, seed: int | None = None):
        super().__init__()
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _IntegerTargets(nn.Module):
    """Adapter that casts targets to int64: ``train_local`` hands over float labels, multi-class losses need ints."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, targets.long())


def make_sites(x: np.ndarray, y: np.ndarray, parts: Sequence[np.ndarray]) -> list[SiteData]:
    """Build sites ``site-0``, ``site-1``, ... holding the rows of (x, y) named by each index array."""
    return [SiteData(f"site-{index}", x[part], y[part]) for index, part in enumerate(parts)]


def model_factory(num_features: int, num_classes: int, seed: int) -> ModelFactory:
    """Return a constructor of the experiment's model: ``TabularMLP`` for binary labels, ``DigitsMLP`` otherwise.

    Every call builds the same initial weights, so all methods compared within a seed start from one model.
    """
    if num_classes == 2:
        return lambda: TabularMLP(num_features=num_features, hidden=(32, 16), dropout=0.1, seed=seed)
    return lambda: DigitsMLP(num_features=num_features, num_classes=num_classes, seed=seed)


def make_loss(name: LossName, num_classes: int, gamma: float = 2.0) -> nn.Module:
    """Build the local training loss: cross-entropy, or focal loss with ``gamma`` and no class weighting (alpha)."""
    if num_classes == 2:
        return nn.BCEWithLogitsLoss() if name == "cross_entropy" else FocalLoss(alpha=None, gamma=gamma)
    inner = nn.CrossEntropyLoss() if name == "cross_entropy" else FocalLoss(alpha=None, gamma=gamma)
    return _IntegerTargets(inner)


def evaluate_model(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int) -> dict[str, float | None]:
    """Return accuracy, balanced accuracy, ROC AUC, F1 and recall metrics of ``model`` on (x, y).

    Binary: ``minority_f1`` (F1 of the rarer class at threshold 0.5) and ROC AUC, from ``binary_metrics``.
    Multi-class: ``macro_f1``, ``worst_class_recall`` (the lowest per-class recall) and macro one-vs-rest ROC AUC.
    """
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32))
    if num_classes == 2:
        scores = torch.sigmoid(logits).numpy().astype(np.float64)
        binary = binary_metrics(y, scores)
        return {key: binary[key] for key in ("accuracy", "balanced_accuracy", "roc_auc", "minority_f1")}

    probabilities = torch.softmax(logits, dim=1).numpy().astype(np.float64)
    predicted = probabilities.argmax(axis=1)
    labels = list(range(num_classes))
    recalls = recall_score(y, predicted, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
        "roc_auc": float(roc_auc_score(y, probabilities, multi_class="ovr", average="macro", labels=labels)),
        "macro_f1": float(f1_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "worst_class_recall": float(np.min(recalls)),
    }


def run_federated(
    sites: Sequence[SiteData],
    test: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    factory: ModelFactory,
    config: FederatedConfig,
    seed: int,
    on_round: RoundCallback | None = None,
) -> FederatedResult:
    """Run ``config.rounds`` rounds of federated training and evaluate the global model on ``test``.

    Each round the server draws the candidate sites, selects which of them upload, each selected site trains a
    copy of the global model, and ``RoundAggregator`` folds the models with ``num_examples`` and the site's mean
    training loss (used by Fed-Focal weighting). Uploaded bytes count the selected models plus, for CatFedAvg, every
    candidate's class histogram.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    global_model = factory()
    global_params = state_dict_to_numpy(global_model)
    num_params = sum(int(array.size) for array in global_params.values())
    loss_fn = make_loss(config.loss, num_classes, config.focal_gamma)
    aggregator = RoundAggregator(config.aggregation)
    histograms = {site.name: np.bincount(site.y.astype(np.int64), minlength=num_classes) for site in sites}

    history: list[RoundRecord] = []
    cumulative = 0
    for round_index in range(config.rounds):
        candidates = _draw_candidates(sites, config.candidates_per_round, rng)
        selected = _select(candidates, histograms, config, rng, seed * 1000 + round_index)
        aggregator.reset()
        for offset, site in enumerate(selected):
            local = factory()
            load_numpy_params(local, global_params)
            local_config = replace(config.local, seed=seed * 100_000 + round_index * 100 + offset)
            outcome = train_local(local, site.x, site.y.astype(np.float32), local_config, loss_fn=loss_fn)
            aggregator.add(site.name, state_dict_to_numpy(local), float(site.y.size), outcome.mean_loss)
        global_params = aggregator.result(global_params)

        cumulative += _round_upload_bytes(config, len(selected), len(candidates), num_params, num_classes)
        metrics = None
        if config.evaluate_every_round or round_index == config.rounds - 1:
            load_numpy_params(global_model, global_params)
            metrics = evaluate_model(global_model, test[0], test[1], num_classes)
        history.append(RoundRecord(round_index, len(selected), cumulative, metrics))
        if on_round is not None:
            on_round(round_index)

    final = history[-1].metrics
    assert final is not None  # the last round is always evaluated
    return FederatedResult(params=global_params, metrics=final, history=history)


def train_single(
    x: np.ndarray,
    y: np.ndarray,
    *,
    factory: ModelFactory,
    local: LocalTrainingConfig,
    num_classes: int,
    loss: LossName = "cross_entropy",
) -> nn.Module:
    """Train one model on (x, y) alone, for the centralized and local-only baselines; returns the model."""
    torch.manual_seed(local.seed)
    model = factory()
    train_local(model, x, y.astype(np.float32), local, loss_fn=make_loss(loss, num_classes))
    return model


def _draw_candidates(
    sites: Sequence[SiteData], candidates_per_round: int | None, rng: np.random.Generator
) -> list[SiteData]:
    if candidates_per_round is None or candidates_per_round >= len(sites):
        return list(sites)
    chosen = np.sort(rng.choice(len(sites), size=candidates_per_round, replace=False))
    return [sites[index] for index in chosen]


def _select(
    candidates: list[SiteData],
    histograms: dict[str, np.ndarray],
    config: FederatedConfig,
    rng: np.random.Generator,
    tie_seed: int,
) -> list[SiteData]:
    if config.selection == "all":
        return candidates
    by_name = {site.name: site for site in candidates}
    if config.selection == "random":
        size = min(_require_budget(config), len(candidates))
        chosen = np.sort(rng.choice(len(candidates), size=size, replace=False))
        return [candidates[index] for index in chosen]
    budget = _require_budget(config) if config.selection == "budget" else None
    names = select_by_category_coverage(
        {site.name: histograms[site.name].tolist() for site in candidates},
        variant=config.selection,
        budget=budget,
        seed=tie_seed,
    )
    return [by_name[name] for name in names]


def _require_budget(config: FederatedConfig) -> int:
    if config.budget is None or config.budget < 1:
        raise ValueError(f"selection {config.selection!r} needs budget >= 1; got budget={config.budget!r}")
    return config.budget


def _round_upload_bytes(
    config: FederatedConfig, num_selected: int, num_candidates: int, num_params: int, num_classes: int
) -> int:
    if config.selection in ("full_coverage", "budget"):
        return catfedavg_upload_bytes(
            num_selected=num_selected,
            num_sites=num_candidates,
            num_params=num_params,
            num_classes=num_classes,
            bytes_per_value=BYTES_PER_VALUE,
        )
    return num_selected * num_params * BYTES_PER_VALUE
