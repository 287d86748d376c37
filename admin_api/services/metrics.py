"""Prometheus metrics of the admin service.

Counters and histograms live in one process-wide registry (``REGISTRY``, not prometheus-client's default one, so
importing this module registers nothing globally). Job counts by status and the expiring certificates are read from
the database at scrape time, so they are right after a restart. Counters restart at zero with the process, which Prometheus' ``rate()`` expects.

==================================================  =========  ====================================================
metric                                              type       meaning
==================================================  =========  ====================================================
consortia_jobs{status}                              gauge      jobs recorded with each FLARE status
consortia_certificates_expiring                     gauge      current, unrevoked certificates expiring in fewer
                                                               than CONSORTIA_CERT_WARN_DAYS days (expired too)
consortia_events_ingested_total                     counter    events stored (new event_id)
consortia_events_duplicates_total                   counter    replays of an already ingested event_id
consortia_audit_chain_last_check_timestamp_seconds  gauge      Unix time of the last chain verification
consortia_audit_chain_last_check_ok                 gauge      1 when that verification passed, else 0
consortia_audit_chain_last_check_events             gauge      events that verification checked
consortia_http_request_duration_seconds{...}        histogram  request latency by method, route template, status
==================================================  =========  ====================================================
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from admin_api.core.chain import ChainVerification
from admin_api.core.status import JobStatus
from admin_api.models import Job

__all__ = [
    "CONTENT_TYPE",
    "REGISTRY",
    "observe_request",
    "record_chain_check",
    "record_ingest",
    "render_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Media type of the Prometheus text exposition format."""

REGISTRY = CollectorRegistry()

_EVENTS_INGESTED = Counter(
    "consortia_events_ingested", "Events stored by the admin service (new event_id).", registry=REGISTRY
)
_EVENTS_DUPLICATES = Counter(
    "consortia_events_duplicates", "Replays of an already ingested event_id; nothing was written.", registry=REGISTRY
)
_CHAIN_CHECK_TIME = Gauge(
    "consortia_audit_chain_last_check_timestamp_seconds",
    "Unix time of the last audit chain verification by this process.",
    registry=REGISTRY,
)
_CHAIN_CHECK_OK = Gauge(
    "consortia_audit_chain_last_check_ok",
    "1 when the last audit chain verification passed, 0 when not.",
    registry=REGISTRY,
)
_CHAIN_CHECK_EVENTS = Gauge(
    "consortia_audit_chain_last_check_events", "Audit events the last verification checked.", registry=REGISTRY
)
_REQUEST_DURATION = Histogram(
    "consortia_http_request_duration_seconds",
    "HTTP request latency by method, route template and status code.",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


def record_ingest(*, num_created: int, num_duplicates: int) -> None:
    """Count the events of one committed ingestion request."""
    _EVENTS_INGESTED.inc(num_created)
    _EVENTS_DUPLICATES.inc(num_duplicates)


def record_chain_check(result: ChainVerification) -> None:
    """Record the time and outcome of an audit chain verification."""
    _CHAIN_CHECK_TIME.set(time.time())
    _CHAIN_CHECK_OK.set(1 if result.ok else 0)
    _CHAIN_CHECK_EVENTS.set(result.num_events)


def observe_request(method: str, route: str, status: int, duration_s: float) -> None:
    """Record one request's latency.

    Args:
        method: HTTP method.
        route: Route template such as ``/api/v1/jobs/{job_id}``, never the raw path, which would create one series
            per job id.
        status: Response status code.
        duration_s: Seconds from receiving the request to the end of the response.
    """
    _REQUEST_DURATION.labels(method=method, route=route, status=str(status)).observe(duration_s)


class _ScrapeTimeCollector(Collector):
    def __init__(self, counts: dict[str, int], expiring_certificates: int, warn_days: int) -> None:
        self._counts = counts
        self._expiring_certificates = expiring_certificates
        self._warn_days = warn_days

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("consortia_jobs", "Jobs recorded with each FLARE status.", labels=["status"])
        for status in JobStatus:
            family.add_metric([status.value], self._counts.get(status.value, 0))
        yield family
        yield GaugeMetricFamily(
            "consortia_certificates_expiring",
            f"Current, unrevoked participant certificates that expire in fewer than {self._warn_days} days "
            "(CONSORTIA_CERT_WARN_DAYS), expired ones included.",
            value=self._expiring_certificates,
        )


def render_metrics(session: Session, *, cert_warn_days: int = 30) -> bytes:
    """Render every metric in the Prometheus text format, with job and certificate counts read from the database now.

    Args:
        session: A read session.
        cert_warn_days: Threshold of ``consortia_certificates_expiring`` (``CONSORTIA_CERT_WARN_DAYS``).
    """
    # Imported here: the certificate service imports the audit service, which imports this module.
    from admin_api.services.certificates import count_expiring_certificates

    counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples().all())
    expiring = count_expiring_certificates(session, warn_days=cert_warn_days)
    scrape_registry = CollectorRegistry()
    scrape_registry.register(_ScrapeTimeCollector(counts, expiring, cert_warn_days))
    return generate_latest(scrape_registry) + generate_latest(REGISTRY)
