import json
from pathlib import Path

import pytest

from app_custom.flare.site_trainer import SiteConfigError, SiteTrainer, script_path, site_data_dir


def make_site(tmp_path: Path, config: dict | None) -> Path:
    (tmp_path / "local").mkdir()
    if config is not None:
        (tmp_path / "local" / "consortia_site.json").write_text(json.dumps(config))
    return tmp_path


def test_relative_data_dir_resolved_in_kit(tmp_path):
    site = make_site(tmp_path, {"data_dir": "data"})
    (site / "data").mkdir()
    assert site_data_dir(site) == site / "data"


def test_missing_site_config_named(tmp_path):
    with pytest.raises(SiteConfigError, match="consortia_site.json"):
        site_data_dir(make_site(tmp_path, None))


def test_missing_data_folder_named(tmp_path):
    with pytest.raises(SiteConfigError, match="does not exist"):
        site_data_dir(make_site(tmp_path, {"data_dir": "/nonexistent/folder"}))


def test_script_resolves_to_installed_file():
    assert script_path("tabular").endswith("app_custom/site/train_tabular.py")


def test_unknown_script_rejected():
    with pytest.raises(ValueError, match="unknown training script 'evil'"):
        script_path("evil")


def test_job_cannot_choose_data_dir():
    with pytest.raises(ValueError, match="must not set --data-dir"):
        SiteTrainer(script="tabular", script_args="--data-dir /etc")


@pytest.mark.parametrize("interval", [0, -0.1, 6, True, "0.1"])
def test_bad_result_poll_interval(interval):
    with pytest.raises(ValueError, match="invalid result_poll_interval"):
        SiteTrainer(script="tabular", result_poll_interval=interval)
