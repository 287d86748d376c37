"""Private jobs on provisioned federations: DP-SGD, DP-FedAvg, site budgets, CKKS secure aggregation and DP + HE.

The plaintext jobs share the session's 2-site federation. The HE jobs need kits provisioned with FLARE's HEBuilder,
so this module starts its own 2-site HE federation once and stops it by PID at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tenseal as ts

from app_custom.core.privacy.he_model import ENCRYPTED_MODEL_FILE, decrypt_model_file, load_encrypted_model
from app_custom.models.mlp import TabularMLP
from consortia import federation
from provisioning.provision import provision
from tests.integration.conftest import Federation, two_site_consortium

pytestmark = pytest.mark.integration

SITES = {"hospital-a", "hospital-b"}


def finished(job: dict) -> bool:
    return job["status"].startswith("FINISHED")


def audit_events(fed: Federation, job_id: str, action: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{fed.api}/jobs/{job_id}/report", params={"format": "json"}, headers=fed.headers, timeout=30)
    report = response.raise_for_status().json()
    return [event for event in report["audit_events"] if event["action"] == action]


def accepted_sites(job: dict, round_number: int) -> set[str]:
    entry = next(r for r in job["rounds"] if r["round"] == round_number)
    return {c["site"] for c in entry["contributions"] if c["accepted"]}


def ledger(fed: Federation, site: str) -> dict[str, Any]:
    path = fed.workspace.kit_dir(fed.state, site) / "privacy-ledger.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"version": 1, "jobs": []}


@pytest.fixture(scope="module")
def he_federation(tmp_path_factory) -> Iterator[Federation]:
    tmp_path = tmp_path_factory.mktemp("he_federation")
    consortium = two_site_consortium(tmp_path)
    consortium.write_text(consortium.read_text(encoding="utf-8").replace("consortia_it", "consortia_he"))
    result = provision(consortium, tmp_path / "workspace", he=True)
    try:
        state = federation.up(result.workspace)
        yield Federation(workspace=result.workspace, state=state, scratch=tmp_path)
    finally:
        federation.down(result.workspace)


def test_dp_sgd_job_reports_epsilon(running_federation):
    fed = running_federation
    job_id = fed.submit("dp_sgd_clinical", num_rounds=2)
    job = fed.wait_for(job_id, finished, timeout=300)
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 0) == SITES
    assert accepted_sites(job, 1) == SITES

    spent = audit_events(fed, job_id, "privacy.spent")
    assert len(spent) == 4
    by_site: dict[str, list[float]] = {}
    for event in spent:
        payload = event["details"]["payload"]
        assert payload["mechanism"] == "dp-sgd"
        assert payload["delta"] == pytest.approx(1e-5)
        assert payload["noise_multiplier"] > 0
        by_site.setdefault(event["details"]["site"], []).append(payload["epsilon"])
    assert set(by_site) == SITES
    for epsilons in by_site.values():
        assert 0 < min(epsilons) < max(epsilons) <= 3.0

    for site in SITES:
        entry = next(e for e in ledger(fed, site)["jobs"] if e["job_id"] == job_id)
        assert entry["epsilon"] <= 3.0
        assert entry["mechanism"] == "dp-sgd"


def test_dp_fedavg_job_accounts_per_round(running_federation):
    fed = running_federation
    job_id = fed.submit("dp_fedavg_clinical", num_rounds=2)
    job = fed.wait_for(job_id, finished, timeout=300)
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 1) == SITES

    spent = audit_events(fed, job_id, "privacy.spent")
    payloads = [event["details"]["payload"] for event in spent]
    assert [event["details"]["site"] for event in spent] == [None, None]
    assert [p["mechanism"] for p in payloads] == ["dp-fedavg", "dp-fedavg"]
    assert [p["rounds"] for p in payloads] == [1, 2]
    assert 0 < payloads[0]["epsilon"] < payloads[1]["epsilon"]


def test_budget_exhausted_site_refuses(running_federation):
    """A site whose budget cannot pay for a round sends no params, and the refusal is audited with its reason."""
    fed = running_federation
    site_config = fed.workspace.kit_dir(fed.state, "hospital-b") / "local" / "consortia_site.json"
    original = site_config.read_text(encoding="utf-8")
    spent = sum(entry["epsilon"] for entry in ledger(fed, "hospital-b")["jobs"])
    config = json.loads(original)
    config["privacy_budget"] = {"epsilon": spent + 0.05, "delta": 1e-3}
    site_config.write_text(json.dumps(config), encoding="utf-8")
    try:
        job_id = fed.submit(
            "dp_sgd_clinical", num_rounds=1, min_sites=1, round_timeout=120, wait_time_after_min_received=60
        )
        job = fed.wait_for(job_id, finished, timeout=300)
    finally:
        site_config.write_text(original, encoding="utf-8")
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 0) == {"hospital-a"}
    rejected = [c for r in job["rounds"] for c in r["contributions"] if not c["accepted"]]
    assert [(c["site"], c["reason_code"]) for c in rejected] == [("hospital-b", "privacy_budget_exhausted")]
    assert "budget" in rejected[0]["reason"]
    refusals = audit_events(fed, job_id, "contribution.rejected")
    assert refusals[0]["details"]["payload"]["reason_code"] == "privacy_budget_exhausted"
    assert all(entry["job_id"] != job_id for entry in ledger(fed, "hospital-b")["jobs"])


def test_he_server_kit_has_no_secret_key(he_federation):
    kits = Path(he_federation.state.kits_dir)
    server_startup = kits / he_federation.state.server_name / "startup"
    assert not (server_startup / "client_context.tenseal").exists()
    assert ts.context_from((server_startup / "server_context.tenseal").read_bytes()).is_private() is False
    for site in SITES:
        site_context = kits / site / "startup" / "client_context.tenseal"
        assert ts.context_from(site_context.read_bytes()).is_private() is True


def test_he_job_matches_plaintext_quality(he_federation):
    fed = he_federation
    job_id = fed.submit("he_fedavg_clinical", num_rounds=2)
    job = fed.wait_for(job_id, finished, timeout=300)
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 0) == SITES
    assert accepted_sites(job, 1) == SITES
    by_round = {r["round"]: r for r in job["rounds"]}
    # Each encrypted contribution is a few CKKS ciphertexts of about 235 KB, far more than the plaintext model.
    accepted = audit_events(fed, job_id, "contribution.accepted")
    assert accepted
    assert all(event["details"]["payload"]["upload_bytes"] > 200_000 for event in accepted)
    assert by_round[2]["global_metrics"]["roc_auc"] > by_round[0]["global_metrics"]["roc_auc"]


def download_result(fed: Federation, job_id: str) -> Path:
    destination = fed.scratch / f"result-{job_id}"
    destination.mkdir(exist_ok=True)
    with federation.flare_session(fed.workspace, fed.state, fed.state.lead_user) as session:
        return Path(session.download_job_result(job_id, destination=str(destination)))


def test_he_server_keeps_encrypted_model(he_federation):
    fed = he_federation
    job_id = fed.submit("he_fedavg_clinical", num_rounds=2)
    job = fed.wait_for(job_id, finished, timeout=300)
    assert job["status"] == "FINISHED:COMPLETED"

    result = download_result(fed, job_id)
    saved = sorted(result.rglob(ENCRYPTED_MODEL_FILE))
    assert len(saved) == 1
    assert load_encrypted_model(saved[0]).round == 1
    params = decrypt_model_file(saved[0], fed.workspace.kit_dir(fed.state, "hospital-a"))
    expected = TabularMLP(hidden=(32, 16), seed=0).state_dict()
    assert {key: value.shape for key, value in params.items()} == {
        key: tuple(value.shape) for key, value in expected.items()
    }
    assert all(np.all(np.isfinite(value)) for value in params.values())
    assert any(not np.allclose(params[key], expected[key].numpy()) for key in expected)  # trained, not initial

    assert not list(result.rglob("client_context.tenseal"))
    for path in result.rglob("*"):
        if path.is_file() and path.stat().st_size > 100_000:  # a secret context is about 480 KB
            try:
                context = ts.context_from(path.read_bytes())
            except (ValueError, TypeError, RuntimeError):
                continue
            assert not context.is_private(), f"{path} contains a secret key"


def test_dp_he_job_completes(he_federation):
    fed = he_federation
    job_id = fed.submit("dp_he_fedavg_clinical", num_rounds=1)
    job = fed.wait_for(job_id, finished, timeout=300)
    assert job["status"] == "FINISHED:COMPLETED"
    assert accepted_sites(job, 0) == SITES
    spent = audit_events(fed, job_id, "privacy.spent")
    assert {event["details"]["site"] for event in spent} == SITES
    assert all(event["details"]["payload"]["mechanism"] == "dp-sgd" for event in spent)
    assert all(event["details"]["payload"]["epsilon"] <= 3.0 for event in spent)
