"""Audit reports of a job, as JSON and CSV.

A report contains the job with its submitter, status history, sites, per-round metrics and contributions, every audit
event of the job, and the verification of the whole chain with its head hash at generation time.

The CSV is long-form, one value per row, with the columns ``section, item, round, site, field, value``. ``section``
is one of ``report, job, status_transition, site, global_metric, site_metric, contribution, audit_event, chain``, and
``item`` numbers the rows that belong together (a transition's index, an audit event's seq). Text values that a
spreadsheet would run as a formula (starting with ``= + - @``, a tab or a carriage return) get a leading ``'``; the
JSON file keeps every value unchanged.
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.core.chain import canonical_json, format_timestamp
from admin_api.models import Site
from admin_api.schemas.audit import AuditEventPublic, ChainVerificationPublic, JobReportPublic
from admin_api.schemas.sites import SitePublic
from admin_api.services.audit import job_target, list_audit_events, verify_chain
from admin_api.services.jobs import get_job_detail, utc_now

__all__ = ["CSV_COLUMNS", "build_job_report", "render_report_csv", "render_report_json", "write_job_report"]

CSV_COLUMNS = ("section", "item", "round", "site", "field", "value")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")

CsvRow = tuple[str, str, str, str, str, str]


def build_job_report(session: Session, job_id: str) -> JobReportPublic:
    """Collect the audit report of one job.

    Raises:
        JobNotFoundError: No such job is recorded.
    """
    job = get_job_detail(session, job_id)
    sites: list[Site] = []
    if job.sites:
        sites = list(session.scalars(select(Site).where(Site.name.in_(job.sites)).order_by(Site.name)))
    audit_events = list_audit_events(session, target=job_target(job_id))
    chain = verify_chain(session)
    return JobReportPublic(
        generated_at=utc_now(),
        job=job,
        sites=[SitePublic.model_validate(site) for site in sites],
        audit_events=[AuditEventPublic.model_validate(event) for event in audit_events],
        chain=ChainVerificationPublic.model_validate(chain),
    )


def render_report_json(report: JobReportPublic) -> str:
    """Render a report as indented JSON."""
    return report.model_dump_json(indent=2) + "\n"


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
    writer.writerows(_iter_audit_rows(report))
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it, so readers never see half a report."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_job_report(session: Session, job_id: str, out_dir: Path | str) -> tuple[Path, Path]:
    """Write the audit report of one job as ``job-<job_id>-report.json`` and ``.csv`` into ``out_dir``.

    Args:
        session: A read session.
        job_id: FLARE job id.
        out_dir: Folder to write into; created when missing. Existing reports of the job are replaced.

    Returns:
        The paths of the JSON and the CSV file.

    Raises:
        JobNotFoundError: No such job is recorded.
    """
    report = build_job_report(session, job_id)
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"job-{_UNSAFE_FILENAME_CHARS.sub('_', job_id)}-report"
    json_path = directory / f"{stem}.json"
    csv_path = directory / f"{stem}.csv"
    _write_atomically(json_path, render_report_json(report))
    _write_atomically(csv_path, render_report_csv(report))
    return json_path, csv_path
