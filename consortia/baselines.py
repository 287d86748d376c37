"""Comparison models for the demo: centralized (trained on the union of all sites) and local-only (one per site).

Privacy: this module reads every site's data folder, which a real consortium can never do. It exists only so the
demo can show, on one machine, what federation buys against these two references; nothing here runs in a job.

All models are scored on the pooled held-out rows of every site, with the same fixed feature encoding the sites use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from app_custom.core.metrics import binary_metrics
from app_custom.data.tabular import LABEL, encode_features, read_split
from app_custom.models.mlp import TabularMLP
from app_custom.site.training import LocalTrainingConfig, load_numpy_params, predict_scores, train_local


@dataclass
class SiteFrames:
    """Raw training and held-out rows of one site."""

    train: pd.DataFrame
    test: pd.DataFrame


def read_sites(site_dirs: Mapping[str, Path]) -> dict[str, SiteFrames]:
    """Read every site's training and held-out rows."""
    return {site: SiteFrames(read_split(folder, "train"), read_split(folder, "test")) for site, folder in site_dirs.items()}


def _xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return encode_features(frame), frame[LABEL].to_numpy(dtype=np.float32)


def _pooled_test(sites: Mapping[str, SiteFrames]) -> tuple[np.ndarray, np.ndarray]:
    return _xy(pd.concat([frames.test for frames in sites.values()], ignore_index=True))


def _train(frame: pd.DataFrame, config: LocalTrainingConfig, hidden: tuple[int, ...]) -> TabularMLP:
    torch.manual_seed(config.seed)
    x, y = _xy(frame)
    model = TabularMLP(num_features=x.shape[1], hidden=hidden)
    train_local(model, x, y, config)
    return model


def score_federated(sites: Mapping[str, SiteFrames], params: Mapping[str, np.ndarray], hidden: tuple[int, ...]) -> dict:
    """Score the federated global model on the pooled held-out rows."""
    model = TabularMLP(hidden=hidden)
    load_numpy_params(model, params)
    x, y = _pooled_test(sites)
    return binary_metrics(y, predict_scores(model, x))


def score_centralized(sites: Mapping[str, SiteFrames], config: LocalTrainingConfig, hidden: tuple[int, ...]) -> dict:
    """Train on the union of all sites' training rows and score on the pooled held-out rows."""
    union = pd.concat([frames.train for frames in sites.values()], ignore_index=True)
    model = _train(union, config, hidden)
    x, y = _pooled_test(sites)
    return binary_metrics(y, predict_scores(model, x))


def score_local_only(
    sites: Mapping[str, SiteFrames], config: LocalTrainingConfig, hidden: tuple[int, ...]
) -> dict[str, dict]:
    """Train one model per site on its own rows only and score each on the pooled held-out rows."""
    x, y = _pooled_test(sites)
    return {site: binary_metrics(y, predict_scores(_train(frames.train, config, hidden), x)) for site, frames in sites.items()}
