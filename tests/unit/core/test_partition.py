"""Tests for the seeded data partitioners."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app_custom.core.errors import CoreError, PartitionError
from app_custom.data.partition import dirichlet_label_skew, one_class_sites, quantity_skew


def _labels(n=1000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, size=n)


def _assert_disjoint_cover(parts, n):
    joined = np.concatenate(parts)
    assert joined.size == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert part.dtype == np.int64
        np.testing.assert_array_equal(part, np.sort(part))


def test_error_is_core_error():
    assert issubclass(PartitionError, CoreError)


def test_dirichlet_cover_and_min_size():
    labels = _labels()
    parts = dirichlet_label_skew(labels, 8, 0.5, seed=1, min_size=20)
    assert len(parts) == 8
    _assert_disjoint_cover(parts, labels.size)
    assert min(part.size for part in parts) >= 20


def test_dirichlet_seeded():
    labels = _labels()
    first = dirichlet_label_skew(labels, 5, 0.3, seed=7)
    second = dirichlet_label_skew(labels, 5, 0.3, seed=7)
    other = dirichlet_label_skew(labels, 5, 0.3, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_dirichlet_small_alpha_skews():
    labels = _labels(n=5000)
    skewed = dirichlet_label_skew(labels, 5, 0.05, seed=0)
    even = dirichlet_label_skew(labels, 5, 1000.0, seed=0)

    def top_class_share(parts):
        return np.mean([np.bincount(labels[p], minlength=10).max() / p.size for p in parts])

    assert top_class_share(skewed) > 0.4
    assert top_class_share(even) < 0.15


def test_dirichlet_impossible_names_site():
    labels = _labels(n=60, classes=2)
    with pytest.raises(PartitionError, match=r"left site \d+ \(0-based\).*Raise alpha \(now 0.01\)"):
        dirichlet_label_skew(labels, 6, 0.01, seed=0, min_size=5, max_attempts=5)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"alpha": 0.0}, "alpha is 0.0"),
        ({"alpha": float("nan")}, "alpha is nan"),
        ({"num_sites": 0}, "num_sites is 0"),
        ({"num_sites": 200, "min_size": 10}, "lower num_sites to at most 100"),
        ({"min_size": 0}, "min_size is 0"),
        ({"labels": []}, "non-empty 1-D"),
        ({"labels": [0.5, 1.0]}, "expected integer class labels"),
    ],
)
def test_dirichlet_bad_input(kwargs, fragment):
    arguments = {"labels": _labels(), "num_sites": 4, "alpha": 1.0, "seed": 0, **kwargs}
    with pytest.raises(PartitionError) as caught:
        dirichlet_label_skew(**arguments)
    assert fragment in str(caught.value)


def test_quantity_cover_and_min_size():
    parts = quantity_skew(500, 7, 0.2, seed=3, min_size=10)
    _assert_disjoint_cover(parts, 500)
    sizes = [part.size for part in parts]
    assert min(sizes) >= 10
    assert max(sizes) > 2 * min(sizes)


def test_quantity_seeded():
    first = quantity_skew(300, 4, 1.0, seed=1)
    second = quantity_skew(300, 4, 1.0, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_quantity_too_small():
    with pytest.raises(PartitionError, match="10 examples cannot give 4 sites at least 3 each"):
        quantity_skew(10, 4, 1.0, seed=0, min_size=3)


def test_quantity_exact_fit():
    parts = quantity_skew(12, 4, 1.0, seed=0, min_size=3)
    assert [part.size for part in parts] == [3, 3, 3, 3]


def test_one_class_each_site():
    labels = _labels(n=1000, classes=10)
    parts = one_class_sites(labels, 10, seed=0)
    _assert_disjoint_cover(parts, labels.size)
    for part in parts:
        assert np.unique(labels[part]).size == 1


def test_two_classes_per_site():
    labels = _labels(n=1000, classes=10)
    parts = one_class_sites(labels, 20, classes_per_site=2, seed=4)
    _assert_disjoint_cover(parts, labels.size)
    for part in parts:
        assert np.unique(labels[part]).size == 2


def test_one_class_too_few_sites():
    with pytest.raises(PartitionError, match="raise num_sites to at least 10"):
        one_class_sites(_labels(classes=10), 9)


def test_one_class_too_many_classes_per_site():
    with pytest.raises(PartitionError, match="lower classes_per_site to at most 10"):
        one_class_sites(_labels(classes=10), 4, classes_per_site=11)


def test_one_class_empty_site():
    labels = np.array([0] * 2 + [1] * 50)
    with pytest.raises(PartitionError, match=r"site \d \(0-based\) has classes \[0\] and got 0 example"):
        one_class_sites(labels, 6, seed=0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=50, max_value=400),
    st.integers(min_value=2, max_value=6),
    st.integers(min_value=1, max_value=8),
    st.floats(min_value=0.1, max_value=10.0),
    st.integers(min_value=0, max_value=10_000),
)
def test_prop_partitions_cover(n, classes, num_sites, alpha, seed):
    labels = _labels(n=n, classes=classes, seed=seed)
    try:
        parts = dirichlet_label_skew(labels, num_sites, alpha, seed=seed)
    except PartitionError as error:
        assert "Raise alpha" in str(error)
    else:
        _assert_disjoint_cover(parts, n)
        assert min(part.size for part in parts) >= 1
    _assert_disjoint_cover(quantity_skew(n, num_sites, alpha, seed=seed), n)
