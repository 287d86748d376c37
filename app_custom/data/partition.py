"""Seeded, disjoint partitions of a data set across sites, for simulating non-IID federations.

Every partitioner returns one sorted ``int64`` index array per site. The arrays are disjoint and together cover
every index of the input exactly once. No site is ever left with fewer than ``min_size`` examples: when the request
cannot be met, a ``PartitionError`` names the site and the setting to change. The same arguments and seed always
give the same partition.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence

import numpy as np

from app_custom.core.errors import PartitionError

__all__ = ["dirichlet_label_skew", "one_class_sites", "quantity_skew"]

logger = logging.getLogger(__name__)


def dirichlet_label_skew(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    *,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Split examples so that each site's label distribution is skewed, with skew controlled by ``alpha``.

    For each class, the shares of its examples that go to the K sites are drawn from ``Dirichlet(alpha * 1_K)``.
    Small ``alpha`` (0.1) gives each site a few dominant classes; large ``alpha`` (100) approaches an IID split.
    When a draw leaves some site with fewer than ``min_size`` examples the whole split is redrawn from the same
    generator, up to ``max_attempts`` times.

    Args:
        labels: One integer class label per example.
        num_sites: K, the number of sites, at least 1.
        alpha: Dirichlet concentration, finite and greater than zero.
        seed: Seed of the random generator.
        min_size: Minimum number of examples per site, at least 1.
        max_attempts: Number of draws before giving up, at least 1.

    Raises:
        PartitionError: If an argument is invalid, or no draw in ``max_attempts`` gives every site ``min_size``
            examples.
    """
    label_array = _check_labels(labels)
    _check_sites(num_sites, min_size, label_array.size)
    _check_positive_int("max_attempts", max_attempts)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha is {alpha!r}; expected a finite Dirichlet concentration greater than zero")

    rng = np.random.default_rng(seed)
    classes = np.unique(label_array)
    sizes = np.zeros(num_sites, dtype=np.int64)
    for attempt in range(1, max_attempts + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(label_array == label))
            shares = rng.dirichlet(np.full(num_sites, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].append(chunk)
        sizes = np.array([sum(chunk.size for chunk in site_parts) for site_parts in parts])
        if sizes.min() >= min_size:
            logger.debug("Dirichlet label skew found on draw %d of %d", attempt, max_attempts)
            return [np.sort(np.concatenate(site_parts)).astype(np.int64) for site_parts in parts]

    smallest = int(sizes.argmin())
    raise PartitionError(
        f"Dirichlet label skew left site {smallest} (0-based) with {int(sizes[smallest])} example(s) in the last of "
        f"{max_attempts} draws; expected at least {min_size}. Raise alpha (now {alpha}), lower num_sites "
        f"(now {num_sites}) or lower min_size"
    )


def quantity_skew(n: int, num_sites: int, alpha: float, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """Split ``n`` examples at random into sites of unequal size, with skew controlled by ``alpha``.

    Each site first gets ``min_size`` examples. The other ``n - K * min_size`` are then shared by proportions drawn
    from ``Dirichlet(alpha * 1_K)``, so small ``alpha`` gives a few large sites and many small ones. Labels are not
    considered, so each site's label distribution matches the whole set in expectation.

    Args:
        n: Number of examples, indexed 0..n-1.
        num_sites: K, the number of sites, at least 1.
        alpha: Dirichlet concentration, finite and greater than zero.
        seed: Seed of the random generator.
        min_size: Minimum number of examples per site, at least 1.

    Raises:
        PartitionError: If an argument is invalid or ``n < num_sites * min_size``.
    """
    _check_positive_int("n", n)
    _check_sites(num_sites, min_size, n)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise PartitionError(f"alpha is {alpha!r}; expected a finite Dirichlet concentration greater than zero")

    rng = np.random.default_rng(seed)
    spare = n - num_sites * min_size
    extra = rng.multinomial(spare, rng.dirichlet(np.full(num_sites, float(alpha))))
    sizes = extra + min_size
    order = rng.permutation(n)
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(chunk).astype(np.int64) for chunk in np.split(order, cuts)]


def one_class_sites(
    labels: Sequence[int] | np.ndarray,
    num_sites: int,
    *,
    classes_per_site: int = 1,
    seed: int = 0,
    min_size: int = 1,
) -> list[np.ndarray]:
    """Give each site examples of only ``classes_per_site`` classes, the pathological non-IID split.

    Classes are shuffled with ``seed`` and dealt round-robin: site i gets classes
    ``order[(i * classes_per_site + j) % C]`` for ``j < classes_per_site``. Each class's examples are shuffled and
    split as evenly as possible among the sites that hold it.

    Args:
        labels: One integer class label per example.
        num_sites: K, the number of sites, at least 1.
        classes_per_site: Number of classes per site, from 1 to C.
        seed: Seed of the random generator.
        min_size: Minimum number of examples per site, at least 1.

    Raises:
        PartitionError: If an argument is invalid, ``num_sites * classes_per_site`` is too small to give every class
            to some site, or a class has too few examples to give each of its sites ``min_size`` in total.
    """
    label_array = _check_labels(labels)
    _check_sites(num_sites, min_size, label_array.size)
    _check_positive_int("classes_per_site", classes_per_site)
    classes = np.unique(label_array)
    if classes_per_site > classes.size:
        raise PartitionError(
            f"classes_per_site is {classes_per_site} but the labels hold only {classes.size} classes; "
            f"lower classes_per_site to at most {classes.size}"
        )
    if num_sites * classes_per_site < classes.size:
        raise PartitionError(
            f"{num_sites} site(s) x {classes_per_site} class(es) per site cannot cover {classes.size} classes, so "
            f"some examples would be dropped; raise num_sites to at least {math.ceil(classes.size / classes_per_site)} "
            "or raise classes_per_site"
        )

    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(label): [] for label in classes}
    for site in range(num_sites):
        for offset in range(classes_per_site):
            holders[int(order[(site * classes_per_site + offset) % classes.size])].append(site)

    parts: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label, sites in holders.items():
        members = rng.permutation(np.flatnonzero(label_array == label))
        for site, chunk in zip(sites, np.array_split(members, len(sites))):
            parts[site].append(chunk)

    result = [np.sort(np.concatenate(site_parts)).astype(np.int64) for site_parts in parts]
    for site, indices in enumerate(result):
        if indices.size < min_size:
            held = [int(order[(site * classes_per_site + offset) % classes.size]) for offset in range(classes_per_site)]
            raise PartitionError(
                f"site {site} (0-based) has classes {held} and got {indices.size} example(s); expected at least "
                f"{min_size}. Lower num_sites (now {num_sites}), raise classes_per_site or lower min_size"
            )
    return result


def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.size == 0:
        raise PartitionError(f"labels have shape {label_array.shape}; expected a non-empty 1-D sequence")
    if label_array.dtype.kind not in "iub":
        if label_array.dtype.kind != "f" or not np.array_equal(label_array, np.round(label_array)):
            raise PartitionError(f"labels have dtype {label_array.dtype}; expected integer class labels")
    return label_array.astype(np.int64)


def _check_sites(num_sites: int, min_size: int, n: int) -> None:
    _check_positive_int("num_sites", num_sites)
    _check_positive_int("min_size", min_size)
    if num_sites * min_size > n:
        raise PartitionError(
            f"{n} examples cannot give {num_sites} sites at least {min_size} each; lower num_sites to at most "
            f"{n // min_size} or lower min_size"
        )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PartitionError(f"{name} is {value!r}; expected an integer >= 1")
