"""Bundled real data sets for the experiments, encoded as float32 features and integer labels, with site splits.

- ``aids``: scikit-survival's ``load_aids()``, 1,151 patients of the ACTG 320 trial (Hammer et al. 1997). The label is
  ``censor`` (an AIDS-defining event or death during follow-up, 8.3% positive). ``time`` is an outcome and is
  dropped. ``AIDS_FEATURES`` lists the baseline covariates used; nominal columns are one-hot encoded against a
  reference level.
- ``digits``: scikit-learn's ``load_digits()``, 1,797 8x8 images of 10 classes, pixels scaled from 0..16 to 0..1.

Nothing is downloaded: both sets ship inside the installed packages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from app_custom.data.partition import dirichlet_label_skew

__all__ = [
    "AIDS_FEATURES",
    "Dataset",
    "load_aids_dataset",
    "load_digits_dataset",
    "site_label_histograms",
    "split_sites",
    "subsample_classes",
]

# Features built from the ACTG 320 baseline covariates. Continuous values are centred and scaled by fixed constants
# close to the cohort's mean and standard deviation, so every site encodes a row identically. ``txgrp`` is left out
# because it repeats ``tx`` (3 of 1,151 patients are in its other two arms); ``karnof`` is ordinal and kept numeric.
AIDS_FEATURES: tuple[str, ...] = (
    "age",  # (years - 38) / 9
    "log_cd4",  # (log1p(CD4 cells/mm^3) - 4) / 1.2
    "log_priorzdv",  # (log1p(months of prior zidovudine) - 3.1) / 0.8
    "karnofsky",  # (Karnofsky score - 90) / 10
    "hemophilia",  # hemophil == 1
    "female",  # sex == 2
    "cd4_stratum_high",  # strat2 == 1, CD4 > 50 at screening
    "treatment_idv",  # tx == 1, the indinavir arm
    "ivdrug_current",  # ivdrug == 2
    "ivdrug_previous",  # ivdrug == 3; ivdrug == 1 (never) is the reference level
    "race_black",  # raceth == 2; raceth == 1 (white non-Hispanic) is the reference level
    "race_hispanic",  # raceth == 3
    "race_asian_pacific",  # raceth == 4
    "race_american_indian",  # raceth == 5
)


@dataclass(frozen=True)
class Dataset:
    """Features, labels and the train/test split of one data set."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def num_features(self) -> int:
        """Number of input features per example."""
        return int(self.x_train.shape[1])


def encode_aids(frame: pd.DataFrame) -> np.ndarray:
    """Encode the raw ``load_aids()`` covariates as the ``AIDS_FEATURES`` matrix (float32)."""

    def code(column: str) -> pd.Series:
        return frame[column].astype(str)

    encoded = {
        "age": (frame["age"].astype(float) - 38.0) / 9.0,
        "log_cd4": (np.log1p(frame["cd4"].astype(float)) - 4.0) / 1.2,
        "log_priorzdv": (np.log1p(frame["priorzdv"].astype(float)) - 3.1) / 0.8,
        "karnofsky": (code("karnof").astype(float) - 90.0) / 10.0,
        "hemophilia": code("hemophil") == "1",
        "female": code("sex") == "2",
        "cd4_stratum_high": code("strat2") == "1",
        "treatment_idv": code("tx") == "1",
        "ivdrug_current": code("ivdrug") == "2",
        "ivdrug_previous": code("ivdrug") == "3",
        "race_black": code("raceth") == "2",
        "race_hispanic": code("raceth") == "3",
        "race_asian_pacific": code("raceth") == "4",
        "race_american_indian": code("raceth") == "5",
    }
    return pd.DataFrame(encoded)[list(AIDS_FEATURES)].to_numpy(dtype=np.float32)


def load_aids_dataset(seed: int, test_fraction: float = 0.25) -> Dataset:
    """Load ``aids`` with a held-out split stratified by the label, so both splits keep the 8.3% event rate."""
    from sksurv.datasets import load_aids

    covariates, outcome = load_aids()
    x = encode_aids(covariates)
    y = outcome["censor"].astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset("aids", x_train, y_train, x_test, y_test, num_classes=2)


def load_digits_dataset(seed: int, test_fraction: float = 0.3) -> Dataset:
    """Load ``digits`` with a held-out split stratified by class, so the test set stays balanced."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


def subsample_classes(dataset: Dataset, minority_classes: tuple[int, ...], keep_fraction: float, seed: int) -> Dataset:
    """Keep only ``keep_fraction`` of the training examples of each minority class; the test set is unchanged.

    This builds the "unbalanced" variant: the minority classes become rare in the federation as a whole, while the
    balanced test set still measures every class with the same number of examples.
    """
    rng = np.random.default_rng(seed)
    keep = np.ones(dataset.y_train.size, dtype=bool)
    for label in minority_classes:
        members = np.flatnonzero(dataset.y_train == label)
        dropped = rng.permutation(members)[max(1, round(keep_fraction * members.size)):]
        keep[dropped] = False
    return Dataset(
        f"{dataset.name}-unbalanced",
        dataset.x_train[keep],
        dataset.y_train[keep],
        dataset.x_test,
        dataset.y_test,
        dataset.num_classes,
    )


def split_sites(dataset: Dataset, num_sites: int, alpha: float, seed: int, min_size: int) -> list[np.ndarray]:
    """Split the training examples across sites with Dirichlet(alpha) label skew; returns index arrays."""
    return dirichlet_label_skew(dataset.y_train, num_sites, alpha=alpha, seed=seed, min_size=min_size)


def site_label_histograms(labels: np.ndarray, sites: list[np.ndarray], num_classes: int) -> list[np.ndarray]:
    """Return each site's number of training examples per class."""
    return [np.bincount(labels[indices], minlength=num_classes) for indices in sites]
