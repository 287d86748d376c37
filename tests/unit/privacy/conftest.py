"""Shared fixtures for the privacy tests: a standardised breast-cancer split and a BatchNorm MLP."""

import warnings

import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # The test models are tiny: with several threads, each op waits on thread hand-offs, and on a loaded 2-core
    # machine the DP tests ran about 8 times slower than with one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _quiet_opacus():
    # Opacus warns about secure_mode=False and about the optimal RDP order sitting at the end of its range.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="opacus")
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (x_train, y_train, x_test, y_test), standardised on the training split."""
    features, labels = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.3, random_state=0, stratify=labels
    )
    scaler = StandardScaler().fit(x_train)
    return (
        torch.tensor(scaler.transform(x_train), dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(scaler.transform(x_test), dtype=torch.float32),
        torch.tensor(y_test),
    )


@pytest.fixture
def batch_norm_mlp() -> nn.Module:
    """Return an MLP with BatchNorm1d over 32 hidden units: Opacus' default fix puts one unit in each group."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(30, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(inplace=True),
        nn.Linear(32, 2),
    )
