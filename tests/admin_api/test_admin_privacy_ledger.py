"""The privacy ledger: spends from privacy.spent events, per-site totals, replays, filters and the job report."""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from admin_test_support import EventFactory
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from admin_api.db import Database
from admin_api.models import PrivacySpend

START = datetime(2026, 12, 4, 19, 0, tzinfo=UTC)
DELTA = 1e-5


def at(minutes: int) -> str:
    return (START + timedelta(minutes=minutes)).isoformat()


def dp_sgd(make_event: EventFactory, job_id: str, site: str, round_number: int, epsilon: float, **extra: Any) -> Any:
    """A spend as PrivateFedAvg._emit_site_privacy_spent sends it: cumulative epsilon of the job at the site."""
    payload = {"epsilon": epsilon, "delta": DELTA, "noise_multiplier": 1.1, "mechanism": "dp-sgd", **extra}
    return make_event("privacy.spent", job_id=job_id, site=site, round=round_number, occurred_at=at(round_number),
                      payload=payload)  # fmt: skip


def dp_fedavg(make_event: EventFactory, job_id: str, round_number: int, epsilon: float) -> Any:
    """A spend as PrivateFedAvg._emit_server_privacy_spent sends it: no site, the job's client-level epsilon."""
    payload = {"epsilon": epsilon, "delta": DELTA, "noise_multiplier": 1.0, "clip_norm": 1.0, "sample_rate": 1.0,
               "rounds": round_number + 1, "mechanism": "dp-fedavg"}  # fmt: skip
    return make_event("privacy.spent", job_id=job_id, round=round_number, occurred_at=at(10 + round_number),
                      payload=payload)  # fmt: skip


def ledger_events(make_event: EventFactory) -> list[dict[str, Any]]:
    """job-sgd: DP-SGD at two sites for three rounds; job-fed: DP-FedAvg on the server for two rounds."""
    return [
        make_event("site.joined", site="hospital-a", payload={"org": "hospital_a"}, occurred_at=at(0)),
        make_event("site.joined", site="hospital-b", payload={"org": "hospital_b"}, occurred_at=at(0)),
        make_event("job.started", job_id="job-sgd", payload={"sites": ["hospital-a", "hospital-b"]}),
        dp_sgd(make_event, "job-sgd", "hospital-a", 0, 0.5),
        dp_sgd(make_event, "job-sgd", "hospital-b", 0, 0.4),
        dp_sgd(make_event, "job-sgd", "hospital-a", 1, 0.9),
        dp_sgd(make_event, "job-sgd", "hospital-b", 1, 0.7),
        dp_sgd(make_event, "job-sgd", "hospital-a", 2, 1.2, epsilon_budget=10.0, epsilon_remaining=8.8),
        make_event("job.started", job_id="job-fed", payload={"sites": ["hospital-a", "hospital-b"]}),
        dp_fedavg(make_event, "job-fed", 0, 0.3),
        dp_fedavg(make_event, "job-fed", 1, 0.6),
    ]


def post_batch(client: TestClient, headers: dict[str, str], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    response = client.post("/api/v1/events:batch", json=events, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["results"]  # type: ignore[no-any-return]


@pytest.fixture
def ledger(client: TestClient, event_headers: dict[str, str], make_event: EventFactory) -> list[dict[str, Any]]:
    events = ledger_events(make_event)
    receipts = post_batch(client, event_headers, events)
    return [{**event, "audit_seq": receipt["audit_seq"]} for event, receipt in zip(events, receipts, strict=True)]


def get(client: TestClient, headers: dict[str, str], path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_one_row_per_round_with_audit_seq(
    client: TestClient, read_headers: dict[str, str], ledger: list[dict[str, Any]]
) -> None:
    body = get(client, read_headers, "/api/v1/privacy/ledger", limit=500)
    assert body["count"] == 7
    by_key = {(e["job_id"], e["site"], e["round"], e["kind"]): e for e in body["data"]}
    spent = {(e["job_id"], e["site"], e["round"]): e for e in ledger if e["type"] == "privacy.spent"}
    assert set(by_key) == {(job, site, rnd, "client_level" if site is None else "sample_level")
                           for job, site, rnd in spent}  # fmt: skip
    entry = by_key[("job-sgd", "hospital-a", 2, "sample_level")]
    assert entry["mechanism"] == "dp-sgd"
    assert entry["epsilon"] == 1.2
    assert entry["delta"] == DELTA
    assert (entry["epsilon_budget"], entry["epsilon_remaining"]) == (10.0, 8.8)
    assert entry["audit_seq"] == spent[("job-sgd", "hospital-a", 2)]["audit_seq"]
    assert entry["recorded_at"].startswith(at(2)[:19])
    fed = by_key[("job-fed", None, 1, "client_level")]
    assert (fed["mechanism"], fed["epsilon"], fed["epsilon_budget"]) == ("dp-fedavg", 0.6, None)
    # Newest first.
    recorded = [e["recorded_at"] for e in body["data"]]
    assert recorded == sorted(recorded, reverse=True)


def test_site_totals_use_latest_cumulative_epsilon(
    client: TestClient, read_headers: dict[str, str], ledger: list[dict[str, Any]]
) -> None:
    body = get(client, read_headers, "/api/v1/privacy/sites")
    sites = {site["site"]: site for site in body["data"]}
    assert body["count"] == 2
    a, b = sites["hospital-a"], sites["hospital-b"]
    # Per job the latest cumulative epsilon (1.2 after round 2, not 0.5 + 0.9 + 1.2); across jobs the sum.
    assert math.isclose(a["epsilon_spent"], 1.2 + 0.6)
    assert math.isclose(b["epsilon_spent"], 0.7 + 0.6)
    assert math.isclose(a["delta_spent"], 2 * DELTA)
    assert (a["org"], a["num_jobs"], b["num_jobs"]) == ("hospital_a", 2, 2)
    assert (a["epsilon_budget"], a["epsilon_remaining"]) == (10.0, 8.8)
    assert (b["epsilon_budget"], b["epsilon_remaining"]) == (None, None)
    jobs = {job["job_id"]: job for job in a["jobs"]}
    assert jobs["job-sgd"] | {"last_recorded_at": None} == {
        "job_id": "job-sgd", "site": "hospital-a", "epsilon": 1.2, "delta": DELTA, "sample_level_epsilon": 1.2,
        "client_level_epsilon": None, "last_round": 2, "last_recorded_at": None,
    }  # fmt: skip
    assert (jobs["job-fed"]["client_level_epsilon"], jobs["job-fed"]["sample_level_epsilon"]) == (0.6, None)


def test_both_kinds_in_one_job_add_up(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post_batch(client, event_headers, [
        make_event("job.started", job_id="job-both", payload={"sites": ["hospital-a"]}),
        dp_sgd(make_event, "job-both", "hospital-a", 0, 0.5),
        dp_fedavg(make_event, "job-both", 0, 0.25),
    ])  # fmt: skip
    (site,) = get(client, read_headers, "/api/v1/privacy/sites")["data"]
    (job,) = site["jobs"]
    assert (job["sample_level_epsilon"], job["client_level_epsilon"], job["epsilon"]) == (0.5, 0.25, 0.75)
    assert math.isclose(job["delta"], 2 * DELTA)


def test_client_level_spend_counts_at_sites_listed_later(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post_batch(client, event_headers, [dp_fedavg(make_event, "job-early", 0, 0.3)])
    assert get(client, read_headers, "/api/v1/privacy/sites")["data"] == []
    post_batch(client, event_headers, [make_event("job.started", job_id="job-early", payload={"sites": ["site-x"]})])
    (site,) = get(client, read_headers, "/api/v1/privacy/sites")["data"]
    assert (site["site"], site["epsilon_spent"]) == ("site-x", 0.3)


def test_replay_and_reemission_idempotent(
    client: TestClient,
    event_headers: dict[str, str],
    read_headers: dict[str, str],
    make_event: EventFactory,
    database: Database,
) -> None:
    first = dp_sgd(make_event, "job-r", "hospital-a", 0, 0.5)
    post_batch(client, event_headers, [first])
    replay = post_batch(client, event_headers, [first])
    assert replay[0]["duplicate"] is True
    # The same spend sent again under a new event_id (a forwarder that re-spooled it) changes nothing.
    again = post_batch(client, event_headers, [dp_sgd(make_event, "job-r", "hospital-a", 0, 0.5)])
    smaller = post_batch(client, event_headers, [dp_sgd(make_event, "job-r", "hospital-a", 0, 0.4)])
    (entry,) = get(client, read_headers, "/api/v1/privacy/ledger")["data"]
    assert (entry["epsilon"], entry["audit_seq"]) == (0.5, 1)
    events = get(client, read_headers, "/api/v1/audit/events", action="privacy.spent")["data"]
    effects = {event["seq"]: event["details"]["effects"]["privacy_ledger"] for event in events}
    assert effects[again[0]["audit_seq"]] == {"kind": "sample_level", "ledger": "unchanged"}
    assert effects[smaller[0]["audit_seq"]] == {"kind": "sample_level", "ledger": "unchanged"}
    # A larger epsilon for the same round replaces the row: the ledger never under-counts.
    larger = post_batch(client, event_headers, [dp_sgd(make_event, "job-r", "hospital-a", 0, 0.6)])
    (entry,) = get(client, read_headers, "/api/v1/privacy/ledger")["data"]
    assert (entry["epsilon"], entry["audit_seq"]) == (0.6, larger[0]["audit_seq"])
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(PrivacySpend)) == 1


def test_spend_without_round_or_mechanism(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    """An event without a round is deduplicated too; without a mechanism, a site makes it sample-level."""
    site_spend = make_event("privacy.spent", site="hospital-a", payload={"epsilon": 1.0, "delta": DELTA})
    job_spend = make_event("privacy.spent", payload={"epsilon": 2.0, "delta": DELTA, "mechanism": "other"})
    post_batch(client, event_headers, [site_spend, job_spend])
    post_batch(client, event_headers, [{**site_spend, "event_id": make_event("privacy.spent")["event_id"]}])
    entries = get(client, read_headers, "/api/v1/privacy/ledger")["data"]
    assert len(entries) == 2
    assert {(e["site"], e["round"], e["kind"], e["mechanism"]) for e in entries} == {
        ("hospital-a", None, "sample_level", None),
        (None, None, "client_level", "other"),
    }


def test_ledger_filters_and_pages(
    client: TestClient, read_headers: dict[str, str], ledger: list[dict[str, Any]]
) -> None:
    page = get(client, read_headers, "/api/v1/privacy/ledger", limit=2, offset=1)
    everything = get(client, read_headers, "/api/v1/privacy/ledger", limit=500)["data"]
    assert (page["count"], page["limit"], page["offset"]) == (7, 2, 1)
    assert page["data"] == everything[1:3]

    by_job = get(client, read_headers, "/api/v1/privacy/ledger", job_id="job-fed")
    assert {(e["job_id"], e["site"]) for e in by_job["data"]} == {("job-fed", None)}
    assert by_job["count"] == 2
    # A site's entries include the client-level spends of the jobs that list it.
    by_site = get(client, read_headers, "/api/v1/privacy/ledger", site="hospital-b", limit=500)
    assert sorted((e["job_id"], e["site"], e["round"]) for e in by_site["data"]) == [
        ("job-fed", None, 0), ("job-fed", None, 1), ("job-sgd", "hospital-b", 0), ("job-sgd", "hospital-b", 1),
    ]  # fmt: skip
    assert get(client, read_headers, "/api/v1/privacy/ledger", site="nowhere")["count"] == 0


def test_job_report_shows_epsilon_per_site(
    client: TestClient, read_headers: dict[str, str], ledger: list[dict[str, Any]]
) -> None:
    report = get(client, read_headers, "/api/v1/jobs/job-sgd/report")
    by_site = {entry["site"]: entry for entry in report["privacy_by_site"]}
    assert (by_site["hospital-a"]["epsilon"], by_site["hospital-b"]["epsilon"]) == (1.2, 0.7)
    assert get(client, read_headers, "/api/v1/jobs/job-fed/report")["privacy_by_site"][0]["client_level_epsilon"] == 0.6

    response = client.get("/api/v1/jobs/job-sgd/report", params={"format": "csv"}, headers=read_headers)
    rows = [row for row in csv.DictReader(io.StringIO(response.text)) if row["section"] == "privacy_site"]
    values = {(row["site"], row["field"]): row["value"] for row in rows}
    assert values[("hospital-a", "epsilon")] == "1.2"
    assert values[("hospital-b", "last_round")] == "1"
    assert values[("hospital-a", "client_level_epsilon")] == ""


def test_job_without_dp_has_no_privacy(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    post_batch(client, event_headers, [make_event("job.started", job_id="job-plain")])
    assert get(client, read_headers, "/api/v1/jobs/job-plain/report")["privacy_by_site"] == []


@pytest.mark.parametrize("budget", [10**400, -1.0, "10", True, None])
def test_unusable_budget_ignored(
    client: TestClient,
    event_headers: dict[str, str],
    read_headers: dict[str, str],
    make_event: EventFactory,
    budget: Any,
) -> None:
    post_batch(client, event_headers, [dp_sgd(make_event, "job-b", "hospital-a", 0, 0.5, epsilon_budget=budget)])
    (entry,) = get(client, read_headers, "/api/v1/privacy/ledger")["data"]
    assert (entry["epsilon"], entry["epsilon_budget"]) == (0.5, None)
