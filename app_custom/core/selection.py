"""Server-side choice of which site updates enter the aggregate, and with what aggregation weight.

Two algorithms by Sarkar, Narang and Rai, both known to us only from their abstracts, so both rules here are our
reading of those abstracts and not a reproduction of the papers:

- ``loss_weighted_aggregation_weights``: the "tunable sampling framework" of Fed-Focal Loss (FL-IJCAI 2020,
  arXiv 2011.06283), which focuses the server on "selective client model contributions".
- ``select_by_category_coverage``: CatFedAvg (arXiv 2011.07229), where sites send metadata about their training
  data and the server requests a subset of updates by "category coverage maximization", in two variants.
"""

from __future__ import annotations

import logging
import math
import numbers
import random
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from app_custom.core.errors import InvalidSetting

__all__ = ["catfedavg_upload_bytes", "loss_weighted_aggregation_weights", "select_by_category_coverage"]

logger = logging.getLogger(__name__)

CoverageVariant = Literal["full_coverage", "budget"]


def loss_weighted_aggregation_weights(
    num_examples: Mapping[str, float],
    local_losses: Mapping[str, float],
    *,
    beta: float = 0.0,
    top_fraction: float = 1.0,
) -> dict[str, float]:
    """Return an aggregation weight per kept site that favours sites with a high local loss.

    Our reading of Fed-Focal's tunable sampling: site k gets a weight proportional to ``n_k * L_k**beta``,
    where ``L_k`` is its mean local training loss. ``beta = 0`` is plain FedAvg and larger ``beta`` lets sites
    that fit their data worse, often those holding minority classes, move the global model more. With
    ``top_fraction < 1`` only the ``ceil(top_fraction * K)`` sites with the highest loss are kept (at least one;
    ties by site name). ``beta`` and ``top_fraction`` are our parameters, not values from the paper.

    Args:
        num_examples: Site name to its number of training examples, finite and greater than zero.
        local_losses: Site name to its reported local loss, finite and >= 0, for the same sites. It must be
            greater than zero when ``beta`` is not 0.
        beta: Exponent on the loss; any finite number. Negative values favour low-loss sites.
        top_fraction: rho in (0, 1], the fraction of sites kept.

    Returns:
        Site name to aggregation weight for the kept sites only, normalised to sum to 1. Dropped sites are absent.

    Raises:
        InvalidSetting: If a setting or input value is invalid, or the two mappings name different sites.
    """
    _check_finite_number("beta", beta)
    _check_finite_number("top_fraction", top_fraction)
    if not 0.0 < top_fraction <= 1.0:
        raise InvalidSetting(f"top_fraction is {top_fraction!r}; expected a value in (0, 1], where 1 keeps every site")
    if not num_examples:
        raise InvalidSetting("num_examples is empty; expected at least one site")
    if num_examples.keys() != local_losses.keys():
        only_examples = sorted(num_examples.keys() - local_losses.keys())
        only_losses = sorted(local_losses.keys() - num_examples.keys())
        raise InvalidSetting(
            f"num_examples and local_losses name different sites (only in num_examples: {only_examples}, only in "
            f"local_losses: {only_losses}); every site must report both"
        )
    for site, count in num_examples.items():
        _check_finite_number(f"num_examples[{site!r}]", count)
        if count <= 0:
            raise InvalidSetting(f"num_examples[{site!r}] is {count!r}; expected a number greater than zero")
    for site, loss in local_losses.items():
        _check_finite_number(f"local_losses[{site!r}]", loss)
        if loss < 0 or (beta != 0 and loss == 0):
            expected = "greater than zero when beta is not 0" if loss == 0 else ">= 0"
            raise InvalidSetting(f"local_losses[{site!r}] is {loss!r}; expected a value {expected}")

    ranked = sorted(num_examples, key=lambda site: (-float(local_losses[site]), site))
    kept = ranked[: max(1, math.ceil(top_fraction * len(ranked)))]

    # Weights are built in log space, so a large beta cannot overflow.
    log_weights = {site: math.log(num_examples[site]) + (beta * math.log(local_losses[site]) if beta else 0.0)
                   for site in kept}
    largest = max(log_weights.values())
    raw = {site: math.exp(value - largest) for site, value in log_weights.items()}
    total = sum(raw.values())
    weights = {site: value / total for site, value in raw.items()}
    logger.debug("loss-weighted selection kept %d of %d sites (beta=%s, top_fraction=%s)",
                 len(kept), len(ranked), beta, top_fraction)
    return weights


def select_by_category_coverage(
    class_counts: Mapping[str, Sequence[int]],
    *,
    variant: CoverageVariant,
    budget: int | None = None,
    min_count: int = 1,
    seed: int = 0,
) -> list[str]:
    """Select the sites whose updates the server requests this round, by greedy category-coverage maximisation.

    Our reading of CatFedAvg. Each site reports its class histogram ``h_k``. Class c counts as covered once the
    selected sites hold ``target_c = min(min_count, sum_k h_k[c])`` examples of it, so classes that no site has are
    ignored. Coverage is ``sum_c min(1, selected_c / target_c)``. Each greedy step adds the site with

    1. the largest coverage gain,
    2. then the most examples of still-rare classes, ``sum_c h_k[c] / (1 + selected_c)``,
    3. then the earliest place in a site order shuffled with ``seed``.

    Variants:
        ``full_coverage``: stop as soon as every class present anywhere is covered; the smallest greedy set.
        ``budget``: select exactly ``min(budget, K)`` sites. After full coverage, the remaining places go to
            sites with the most examples of still-rare classes. This uploads more updates for more data.

    Args:
        class_counts: Site name to its number of training examples per class, all of the same length C.
        variant: ``"full_coverage"`` or ``"budget"``.
        budget: The number of sites for ``budget``, at least 1; must be None for ``full_coverage``.
        min_count: Examples of a class needed to count it as covered, at least 1.
        seed: Seed for the final tie-break, so the selection is deterministic.

    Returns:
        Selected site names in the order they were chosen.

    Raises:
        InvalidSetting: If a setting is invalid or the histograms are empty, ragged, negative or non-integer.
    """
    if variant not in ("full_coverage", "budget"):
        raise InvalidSetting(f"variant is {variant!r}; expected 'full_coverage' or 'budget'")
    if variant == "budget":
        if isinstance(budget, bool) or not isinstance(budget, numbers.Integral) or budget < 1:
            raise InvalidSetting(f"budget is {budget!r}; the 'budget' variant needs an integer number of sites >= 1")
    elif budget is not None:
        raise InvalidSetting(f"budget is {budget!r} but variant is 'full_coverage'; pass budget=None")
    if isinstance(min_count, bool) or not isinstance(min_count, numbers.Integral) or min_count < 1:
        raise InvalidSetting(f"min_count is {min_count!r}; expected an integer >= 1")

    sites, counts = _histogram_matrix(class_counts)
    totals = counts.sum(axis=0)
    targets = np.minimum(totals, min_count).astype(np.float64)
    present = targets > 0
    tie_order = {site: position for position, site in enumerate(random.Random(seed).sample(sites, len(sites)))}

    limit = len(sites) if variant == "full_coverage" else min(int(budget), len(sites))  # type: ignore[arg-type]
    selected: list[str] = []
    selected_counts = np.zeros(counts.shape[1], dtype=np.float64)
    remaining = list(range(len(sites)))
    while remaining and len(selected) < limit:
        coverage = _coverage(selected_counts, targets, present)
        if variant == "full_coverage" and coverage >= present.sum():
            break

        def key(row: int) -> tuple[float, float, int]:
            gain = _coverage(selected_counts + counts[row], targets, present) - coverage
            rare = float((counts[row] / (1.0 + selected_counts)).sum())
            return (-round(gain, 12), -rare, tie_order[sites[row]])

        best = min(remaining, key=key)
        remaining.remove(best)
        selected.append(sites[best])
        selected_counts += counts[best]

    logger.debug("category coverage (%s) selected %d of %d sites", variant, len(selected), len(sites))
    return selected


def catfedavg_upload_bytes(
    *, num_selected: int, num_sites: int, num_params: int, num_classes: int, bytes_per_value: int = 4
) -> int:
    """Return bytes uploaded by sites in one CatFedAvg round: every site's histogram plus the selected models.

    FedAvg with all K sites uploads ``K * num_params * bytes_per_value``; compare against that.
    """
    for name, value in (("num_selected", num_selected), ("num_sites", num_sites), ("num_params", num_params),
                        ("num_classes", num_classes), ("bytes_per_value", bytes_per_value)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise InvalidSetting(f"{name} is {value!r}; expected an integer >= 0")
    if num_selected > num_sites:
        raise InvalidSetting(f"num_selected is {num_selected} but num_sites is {num_sites}; expected at most num_sites")
    return (num_selected * num_params + num_sites * num_classes) * bytes_per_value


def _coverage(selected_counts: np.ndarray, targets: np.ndarray, present: np.ndarray) -> float:
    ratios = np.minimum(1.0, selected_counts[present] / targets[present])
    return float(ratios.sum())


def _histogram_matrix(class_counts: Mapping[str, Sequence[int]]) -> tuple[list[str], np.ndarray]:
    if not class_counts:
        raise InvalidSetting("class_counts is empty; expected a class histogram from at least one site")
    sites = sorted(class_counts)
    rows = []
    num_classes: int | None = None
    for site in sites:
        row = np.asarray(class_counts[site])
        if row.ndim != 1 or row.size == 0:
            raise InvalidSetting(f"class_counts[{site!r}] has shape {row.shape}; expected a non-empty 1-D histogram")
        if num_classes is None:
            num_classes = row.size
        elif row.size != num_classes:
            raise InvalidSetting(
                f"class_counts[{site!r}] has {row.size} classes; expected {num_classes} as for {sites[0]!r}"
            )
        if row.dtype.kind not in "iu" and not (row.dtype.kind == "f" and np.isfinite(row).all()
                                               and (row == np.round(row)).all()):
            raise InvalidSetting(f"class_counts[{site!r}] is {row.tolist()}; expected integer counts")
        if (row < 0).any():
            raise InvalidSetting(f"class_counts[{site!r}] is {row.tolist()}; expected counts >= 0")
        rows.append(row.astype(np.float64))
    return sites, np.stack(rows)


def _check_finite_number(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidSetting(f"{name} is {value!r}; expected a finite number")
