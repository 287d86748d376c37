"""Long-form CSV rendering of job and period reports.

One value per row, with the columns ``section, item, round, site, field, value``. In a job report ``section`` is one
of ``report, job, status_transition, site, global_metric, site_metric, contribution, privacy_site, audit_event,
chain``; in a period report one of ``report, job, audit_count, privacy, chain``. ``item`` numbers the rows that belong
together (a transition's index, an audit event's seq). Text values that a spreadsheet would run as a formula
(starting with ``= + - @``, a tab or a carriage return) get a leading ``'``; the JSON file keeps every value unchanged.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from admin_api.core.chain import canonical_json, format_timestamp
from admin_api.schemas.audit import JobReportPublic
from admin_api.schemas.reports import PeriodReportPublic

__all__ = ["CSV_COLUMNS", "render_period_report_csv", "render_report_csv"]

CSV_COLUMNS = ("section", "item", "round", "site", "field", "value")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

CsvRow = tuple[str, str, str, str, str, str]


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict | list):
        return canonical_json(value).decode("utf-8")
    text = str(value)
    if text.startswith(_FORMULA_PREFIXES):
        return "'" + text
    return text


def _row(section: str, field: str, value: Any, *, item: Any = "", round_number: Any = "", site: Any = "") -> CsvRow:
    return (section, str(item), str(round_number), site or "", field, _format_value(value))


def _iter_job_rows(report: JobReportPublic) -> Iterator[CsvRow]:
    job = report.job
    yield _row("report", "report_version", report.report_version)
    yield _row("report", "generated_at", report.generated_at)
    for field in (
        "job_id", "name", "submitter", "submitter_org", "submitter_role", "status",
        "submitted_at", "started_at", "finished_at", "num_rounds", "sites",
    ):  # fmt: skip
        yield _row("job", field, getattr(job, field))
    for index, transition in enumerate(job.status_history, start=1):
        for field, value in transition.model_dump().items():
            yield _row("status_transition", field, value, item=index)
    for site in report.sites:
        for field in ("org", "status", "first_seen", "last_seen"):
            yield _row("site", field, getattr(site, field), site=site.name)


def _iter_round_rows(report: JobReportPublic) -> Iterator[CsvRow]:
    for round_result in report.job.rounds:
        number = round_result.round
        for field, value in sorted((round_result.global_metrics or {}).items()):
            yield _row("global_metric", field, value, round_number=number)
        for site, metrics in round_result.site_metrics.items():
            for field, value in sorted(metrics.items()):
                yield _row("site_metric", field, value, round_number=number, site=site)
        for contribution in round_result.contributions:
            for field in ("accepted", "reason_code", "reason", "num_examples", "occurred_at"):
                value = getattr(contribution, field)
                yield _row("contribution", field, value, round_number=number, site=contribution.site)


def _iter_privacy_rows(report: JobReportPublic) -> Iterator[CsvRow]:
    for spend in report.privacy_by_site:
        for field in ("epsilon", "delta", "sample_level_epsilon", "client_level_epsilon", "last_round",
                      "last_recorded_at"):  # fmt: skip
            yield _row("privacy_site", field, getattr(spend, field), site=spend.site)


def _iter_audit_rows(report: JobReportPublic) -> Iterator[CsvRow]:
    for event in report.audit_events:
        for field, value in event.model_dump().items():
            if field != "seq":
                yield _row("audit_event", field, value, item=event.seq)
    for field, value in report.chain.model_dump().items():
        yield _row("chain", field, value)


def render_report_csv(report: JobReportPublic) -> str:
    """Render a report as long-form CSV with the columns of ``CSV_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_iter_job_rows(report))
    writer.writerows(_iter_round_rows(report))
    writer.writerows(_iter_privacy_rows(report))
    writer.writerows(_iter_audit_rows(report))
    return buffer.getvalue()


def _iter_period_rows(report: PeriodReportPublic) -> Iterator[CsvRow]:
    for field in (
        "report_version",
        "kind",
        "generated_at",
        "start",
        "end",
        "num_audit_events",
        "first_seq",
        "last_seq",
    ):
        yield _row("report", field, getattr(report, field))
    for index, job in enumerate(report.jobs, start=1):
        for field, value in job.model_dump().items():
            yield _row("job", field, value, item=index)
    for action, count in report.audit_event_counts.items():
        yield _row("audit_count", action, count)
    for spend in report.privacy:
        for field, value in spend.model_dump(exclude={"seq", "site", "round"}).items():
            yield _row("privacy", field, value, item=spend.seq, round_number=_blank(spend.round), site=spend.site)
    for field, value in report.chain.model_dump().items():
        yield _row("chain", field, value)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def render_period_report_csv(report: PeriodReportPublic) -> str:
    """Render a period report as long-form CSV with the columns of ``CSV_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_iter_period_rows(report))
    return buffer.getvalue()
