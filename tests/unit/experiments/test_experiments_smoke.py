"""Smoke tests: each experiment runs end to end with tiny settings, so the scripts cannot rot."""

import numpy as np
import pytest
import torch

from experiments import baselines, communication, imbalance
from experiments.all import render_document
from experiments.datasets import AIDS_FEATURES, load_aids_dataset, load_digits_dataset, subsample_classes
from experiments.reporting import Section


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_aids_features_are_finite():
    dataset = load_aids_dataset(seed=0)
    assert dataset.num_features == len(AIDS_FEATURES)
    assert np.isfinite(dataset.x_train).all()
    assert dataset.y_train.size + dataset.y_test.size == 1151
    assert 0.06 < dataset.y_test.mean() < 0.11


def test_subsample_classes_keeps_test_set():
    dataset = load_digits_dataset(seed=0)
    unbalanced = subsample_classes(dataset, (3, 7), keep_fraction=0.1, seed=0)
    counts = np.bincount(unbalanced.y_train, minlength=10)
    assert counts[3] == round(0.1 * np.sum(dataset.y_train == 3))
    assert counts[0] == np.sum(dataset.y_train == 0)
    assert unbalanced.y_test is dataset.y_test


def test_imbalance_smoke():
    section = imbalance.run(imbalance.ImbalanceSettings.smoke(), show_progress=False)
    assert "digits-unbalanced" in section.markdown
    assert "Fed-Focal, β=1" in section.markdown


def test_communication_smoke():
    section = communication.run(communication.CommunicationSettings.smoke(), show_progress=False)
    assert "CatFedAvg, full_coverage" in section.markdown
    assert "accuracy at equal bytes" in section.markdown


def test_baselines_smoke():
    section = baselines.run(baselines.BaselineSettings.smoke(), show_progress=False)
    assert "flchain" in section.markdown
    assert "local-only" in section.markdown


def test_document_renders_sections():
    section = Section("baselines", "Centralized, federated and local-only training", "| a |\n|---|", 1.0)
    document = render_document([section], seeds=(0,), total_seconds=1.0)
    assert document.startswith("# Experiments")
    assert "## Centralized, federated and local-only training" in document
