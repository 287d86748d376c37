"""Tests for the Prometheus endpoint: job counts, ingestion counters, chain checks and request latency."""

from __future__ import annotations

from admin_test_support import EventFactory
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families


def scrape(client: TestClient, headers: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_need_token(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401


def test_metrics_job_counts(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    events = [
        make_event("job.submitted", job_id="job-1"),
        make_event("job.started", job_id="job-2"),
        make_event("job.finished", job_id="job-3"),
    ]
    assert client.post("/api/v1/events:batch", json=events, headers=event_headers).status_code == 200

    samples = scrape(client, read_headers)
    assert samples[("consortia_jobs", (("status", "SUBMITTED"),))] == 1
    assert samples[("consortia_jobs", (("status", "RUNNING"),))] == 1
    assert samples[("consortia_jobs", (("status", "FINISHED:COMPLETED"),))] == 1
    assert samples[("consortia_jobs", (("status", "FINISHED:ABORTED"),))] == 0


def test_metrics_count_ingest_and_duplicates(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    before = scrape(client, read_headers)
    event = make_event("job.submitted")
    assert client.post("/api/v1/events", json=event, headers=event_headers).status_code == 201
    assert client.post("/api/v1/events", json=event, headers=event_headers).status_code == 200

    after = scrape(client, read_headers)
    assert after[("consortia_events_ingested_total", ())] - before[("consortia_events_ingested_total", ())] == 1
    assert after[("consortia_events_duplicates_total", ())] - before[("consortia_events_duplicates_total", ())] == 1


def test_metrics_chain_check(
    client: TestClient, event_headers: dict[str, str], read_headers: dict[str, str], make_event: EventFactory
) -> None:
    assert client.post("/api/v1/events", json=make_event("job.submitted"), headers=event_headers).status_code == 201
    assert client.get("/api/v1/audit/verify", headers=read_headers).json()["ok"] is True

    samples = scrape(client, read_headers)
    assert samples[("consortia_audit_chain_last_check_ok", ())] == 1
    assert samples[("consortia_audit_chain_last_check_events", ())] == 1
    assert samples[("consortia_audit_chain_last_check_timestamp_seconds", ())] > 1.7e9


def test_metrics_latency_by_route(client: TestClient, read_headers: dict[str, str]) -> None:
    assert client.get("/api/v1/jobs/some-job", headers=read_headers).status_code == 404

    samples = scrape(client, read_headers)
    labels = (("method", "GET"), ("route", "/api/v1/jobs/{job_id}"), ("status", "404"))
    assert samples[("consortia_http_request_duration_seconds_count", labels)] >= 1
    assert not any("some-job" in dict(key[1]).get("route", "") for key in samples)
