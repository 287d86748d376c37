"""Clinical tabular data: the flchain cohort, site partitions on disk, and site-local preprocessing.

Data source: scikit-survival's bundled ``flchain`` set (Dispenzieri et al. 2012, serum free light chain study,
7,874 residents of Olmsted County). The label is death during follow-up (27.5%). The ``chapter`` column (the
cause-of-death chapter) is dropped because it is only filled for patients who died, so it leaks the label.
``futime`` (follow-up time) is also dropped: it is an outcome, not a baseline covariate.

Each site's folder holds ``train.csv``, ``test.csv`` (its own held-out split) and ``schema.json``. The training code at
a site reads only that folder.

Features are scaled by fixed constants that are part of the feature definition, identical at every site, rather than
by statistics fitted on each site's rows: with label-skewed sites, per-site centring would erase exactly the
between-site differences (older cohorts die more) that the shared model has to learn. Missing creatinine is filled
with 1.0 mg/dL, a typical adult value, and flagged by ``creatinine_missing``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app_custom.core.errors import CoreError

logger = logging.getLogger(__name__)

DATASET = "flchain"
LABEL = "death"
RAW_COLUMNS = ("age", "sex", "sample.yr", "kappa", "lambda", "flc.grp", "creatinine", "mgus")
FEATURES = (
    "age",
    "sex_male",
    "sample_yr",
    "log_kappa",
    "log_lambda",
    "flc_grp",
    "log_creatinine",
    "creatinine_missing",
    "mgus",
)
LEAKING_COLUMNS = ("chapter", "futime")


class DataError(CoreError):
    """Raised when site data is missing, malformed or cannot be partitioned."""


def load_flchain() -> pd.DataFrame:
    """Load the flchain cohort as raw columns plus the binary label ``death``.

    Raises:
        DataError: when scikit-survival (which carries the data) is not installed.
    """
    try:
        from sksurv.datasets import load_flchain as _load
    except ImportError:
        raise DataError(
            "the flchain dataset comes with scikit-survival, which is not installed: run 'pip install scikit-survival'"
        ) from None
    features, outcome = _load()
    frame = features.drop(columns=[c for c in LEAKING_COLUMNS if c in features.columns]).copy()
    frame = frame[list(RAW_COLUMNS)]
    for column in ("sex", "flc.grp", "mgus"):
        frame[column] = frame[column].astype(str)
    frame[LABEL] = outcome["death"].astype(int)
    return frame.reset_index(drop=True)


TYPICAL_CREATININE_MG_DL = 1.0


def encode_features(frame: pd.DataFrame) -> np.ndarray:
    """Turn raw flchain columns into the scaled numeric feature matrix (``FEATURES`` order, float32).

    Raises:
        DataError: naming the missing column when the frame lacks a raw column.
    """
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"site data is missing columns {missing}; expected {list(RAW_COLUMNS)}")
    creatinine = pd.to_numeric(frame["creatinine"], errors="coerce")
    encoded = pd.DataFrame(
        {
            "age": (pd.to_numeric(frame["age"], errors="coerce") - 60.0) / 15.0,
            "sex_male": (frame["sex"].astype(str) == "M").astype(float),
            "sample_yr": (pd.to_numeric(frame["sample.yr"], errors="coerce") - 1997.0) / 5.0,
            "log_kappa": np.log1p(pd.to_numeric(frame["kappa"], errors="coerce")),
            "log_lambda": np.log1p(pd.to_numeric(frame["lambda"], errors="coerce")),
            "flc_grp": (pd.to_numeric(frame["flc.grp"], errors="coerce") - 5.5) / 3.0,
            "log_creatinine": np.log1p(creatinine.fillna(TYPICAL_CREATININE_MG_DL)),
            "creatinine_missing": creatinine.isna().astype(float),
            "mgus": frame["mgus"].astype(str).isin(["yes", "1", "1.0", "True"]).astype(float),
        }
    )
    matrix = encoded[list(FEATURES)].to_numpy(dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad_rows.size:
        raise DataError(
            f"{bad_rows.size} rows have missing or non-numeric values outside creatinine (first row {bad_rows[0]}); "
            "fix or drop them in the site's data files"
        )
    return matrix


@dataclass
class SiteData:
    """One site's preprocessed training and held-out data."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def read_split(data_dir: str | Path, split: str) -> pd.DataFrame:
    """Read ``train`` or ``test`` from a site folder.

    Raises:
        DataError: naming the file when it is missing or has no rows.
    """
    path = Path(data_dir) / f"{split}.csv"
    if not path.is_file():
        raise DataError(f"site data file not found: {path}; run 'consortia provision' or place the site's data there")
    frame = pd.read_csv(path)
    if frame.empty:
        raise DataError(f"site data file {path} has no rows")
    if LABEL not in frame.columns:
        raise DataError(f"site data file {path} has no label column {LABEL!r}")
    return frame


def load_site_data(data_dir: str | Path) -> SiteData:
    """Load and encode a site's training and held-out rows."""
    train = read_split(data_dir, "train")
    test = read_split(data_dir, "test")
    return SiteData(
        x_train=encode_features(train),
        y_train=train[LABEL].to_numpy(dtype=np.float32),
        x_test=encode_features(test),
        y_test=test[LABEL].to_numpy(dtype=np.float32),
    )


def split_train_test(indices: np.ndarray, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split one site's rows into training and held-out rows, stratified by label when both classes allow it."""
    from sklearn.model_selection import train_test_split

    site_labels = labels[indices]
    counts = np.bincount(site_labels.astype(int), minlength=2)
    stratify = site_labels if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=stratify)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise DataError(f"a site with {len(indices)} rows cannot be split with test_fraction={test_fraction}")
    return np.sort(train_idx), np.sort(test_idx)


def write_site_partitions(
    site_dirs: dict[str, Path],
    *,
    seed: int,
    label_skew_alpha: float,
    test_fraction: float,
    min_rows: int = 200,
) -> dict[str, dict[str, float]]:
    """Split the cohort into disjoint, label-skewed site partitions and write each into its own folder.

    Args:
        site_dirs: data folder of each site.
        seed: seed of the partition and of each site's held-out split.
        label_skew_alpha: Dirichlet concentration; smaller values give each site a more different death rate.
        test_fraction: share of each site's rows kept as its held-out split.
        min_rows: minimum rows per site.

    Returns:
        Per site: training rows, held-out rows and death rate.
    """
    from app_custom.data.partition import dirichlet_label_skew

    frame = load_flchain()
    labels = frame[LABEL].to_numpy()
    names: Sequence[str] = list(site_dirs)
    parts = dirichlet_label_skew(labels, len(names), alpha=label_skew_alpha, seed=seed, min_size=min_rows)
    summary: dict[str, dict[str, float]] = {}
    for offset, (name, indices) in enumerate(zip(names, parts, strict=True)):
        train_idx, test_idx = split_train_test(np.asarray(indices), labels, test_fraction, seed + offset)
        folder = Path(site_dirs[name])
        folder.mkdir(parents=True, exist_ok=True)
        frame.iloc[train_idx].to_csv(folder / "train.csv", index=False)
        frame.iloc[test_idx].to_csv(folder / "test.csv", index=False)
        info = {
            "site": name,
            "dataset": DATASET,
            "label": LABEL,
            "raw_columns": list(RAW_COLUMNS),
            "features": list(FEATURES),
            "train_rows": len(train_idx),
            "test_rows": len(test_idx),
            "death_rate": round(float(labels[indices].mean()), 4),
            "seed": seed,
            "label_skew_alpha": label_skew_alpha,
        }
        (folder / "schema.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        summary[name] = {
            "train_rows": float(len(train_idx)),
            "test_rows": float(len(test_idx)),
            "death_rate": float(info["death_rate"]),  # type: ignore[arg-type]
        }
        logger.info("wrote %s data for site %s into %s", DATASET, name, folder)
    return summary
