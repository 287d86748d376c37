import numpy as np
import pandas as pd
import pytest

from app_custom.data import tabular
from app_custom.data.tabular import (
    FEATURES,
    DataError,
    encode_features,
    load_flchain,
    load_site_data,
    write_site_partitions,
)


@pytest.fixture(scope="module")
def cohort() -> pd.DataFrame:
    return load_flchain()


def test_flchain_drops_leaking_columns(cohort):
    assert "chapter" not in cohort.columns
    assert "futime" not in cohort.columns
    assert len(cohort) == 7874
    assert 0.25 < cohort["death"].mean() < 0.30


def test_encoding_is_finite_and_fixed(cohort):
    matrix = encode_features(cohort)
    assert matrix.shape == (7874, len(FEATURES))
    assert np.isfinite(matrix).all()
    # Fixed scaling: encoding one row alone gives the same values as encoding it with the cohort.
    np.testing.assert_array_equal(encode_features(cohort.iloc[[5]]), matrix[[5]])


def test_missing_column_named(cohort):
    with pytest.raises(DataError, match="kappa"):
        encode_features(cohort.drop(columns=["kappa"]))


def test_non_numeric_value_rejected(cohort):
    broken = cohort.head(3).copy()
    broken["age"] = broken["age"].astype(object)
    broken.loc[broken.index[1], "age"] = "unknown"
    with pytest.raises(DataError, match="1 rows"):
        encode_features(broken)


def test_partitions_disjoint_and_written(tmp_path):
    dirs = {name: tmp_path / name for name in ("a", "b", "c")}
    summary = write_site_partitions(dirs, seed=3, label_skew_alpha=1.0, test_fraction=0.2)
    assert set(summary) == set(dirs)
    total = sum(info["train_rows"] + info["test_rows"] for info in summary.values())
    assert total == 7874
    rates = [info["death_rate"] for info in summary.values()]
    assert max(rates) - min(rates) > 0.05  # label-skewed, not IID
    data = load_site_data(dirs["a"])
    assert data.x_train.shape[1] == len(FEATURES)
    assert len(data.y_test) == summary["a"]["test_rows"]


def test_partitions_are_seeded(tmp_path):
    first = write_site_partitions({"a": tmp_path / "1a", "b": tmp_path / "1b"}, seed=9, label_skew_alpha=0.5, test_fraction=0.2)
    second = write_site_partitions({"a": tmp_path / "2a", "b": tmp_path / "2b"}, seed=9, label_skew_alpha=0.5, test_fraction=0.2)
    assert first == second
    assert (tmp_path / "1a" / "train.csv").read_text() == (tmp_path / "2a" / "train.csv").read_text()


def test_missing_site_file_named(tmp_path):
    with pytest.raises(DataError, match="train.csv"):
        load_site_data(tmp_path)


def test_missing_package_explained(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sksurv"):
            raise ImportError("No module named 'sksurv'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match="pip install scikit-survival"):
        tabular.load_flchain()
