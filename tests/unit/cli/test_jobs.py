import json

import pytest

from consortia.jobs import JobDefinitionError, available_jobs, prepare_job


def test_fedavg_clinical_listed():
    assert "fedavg_clinical" in available_jobs()


def test_prepare_job_changes_copy_only(tmp_path):
    target = prepare_job("fedavg_clinical", tmp_path, job_name="short_run", num_rounds=2, script_args="--local-epochs 1")
    server = json.loads((target / "app/config/config_fed_server.json").read_text())
    client = json.loads((target / "app/config/config_fed_client.json").read_text())
    meta = json.loads((target / "meta.json").read_text())
    assert server["workflows"][0]["args"]["num_rounds"] == 2
    assert client["executors"][0]["executor"]["args"]["script_args"] == "--local-epochs 1"
    assert meta["name"] == "short_run"
    again = prepare_job("fedavg_clinical", tmp_path / "fresh")
    assert json.loads((again / "app/config/config_fed_server.json").read_text())["workflows"][0]["args"]["num_rounds"] == 5


def test_unknown_parameter_rejected(tmp_path):
    with pytest.raises(JobDefinitionError, match="learning_rat"):
        prepare_job("fedavg_clinical", tmp_path, learning_rat=0.1)


def test_unknown_job_lists_known(tmp_path):
    with pytest.raises(JobDefinitionError, match="fedavg_clinical"):
        prepare_job("nope", tmp_path)


def test_job_references_only_installed_classes():
    import importlib

    from consortia.jobs import job_path

    for config in (job_path("fedavg_clinical") / "app" / "config").glob("*.json"):
        text = config.read_text()
        for path in [p for p in json.dumps(json.loads(text)).split('"') if p.startswith(("app_custom.", "nvflare."))]:
            module, _, name = path.rpartition(".")
            assert hasattr(importlib.import_module(module), name), path
    assert not (job_path("fedavg_clinical") / "app" / "custom").exists()
