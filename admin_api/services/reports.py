"""Audit reports of a job, as JSON and CSV.

A report contains the job with its submitter, status history, sites, per-round metrics and contributions, every audit
event of the job, and the verification of the whole chain with its head hash at generation time.

The CSV is long-form, one value per row, with the columns ``section, item, round, site, field, value``. ``section``
is one of ``report, job, status_transition, site, global_metric, site_metric, contribution, audit_event, chain``, and
``item`` numbers the rows that belong together (a transition's index, an audit event's seq). Text values that a
spreadsheet would run as a formula (starting with ``= + - @``, a tab or a carriage return) get a leading ``'``; the
JSON file keeps every value unchanged.

Period reports summarise every job active in a time range, the audit events of that range by action, and the
privacy spends. ``render_signed_job_report`` and ``render_signed_period_report`` render either kind as JSON, CSV or
PDF and sign it with the service key (``admin_api.services.signing``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from admin_api.core.chain import canonical_json, format_timestamp
from admin_api.errors import AdminApiError
from admin_api.models import AuditEvent, Contribution, Job, RoundMetrics, Site
from admin_api.schemas.audit import AuditEventPublic, ChainVerificationPublic, JobReportPublic
from admin_api.schemas.reports import PeriodJobSummaryPublic, PeriodReportPublic, PrivacySpendPublic
from admin_api.schemas.sites import SitePublic
from admin_api.services.audit import job_target, list_audit_events, verify_chain
from admin_api.services.jobs import get_job_detail, utc_now
from admin_api.services.signing import SIDECAR_SUFFIX, ReportSigner, SignatureStatement

__all__ = [
    "CSV_COLUMNS",
    "InvalidPeriodError",
    "ReportFormat",
    "SignedReport",
    "build_job_report",
    "build_period_report",
    "privacy_spends",
    "render_report_csv",
    "render_report_json",
    "render_signed_job_report",
    "render_signed_period_report",
    "write_job_report",
    "write_signed_report",
]

ReportFormat = Literal["json", "csv", "pdf"]
_MEDIA_TYPES: dict[str, str] = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}

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
    # NOTE: the whole chain is verified for every report, which took about 10 s per 100,000 audit events on a
    # 2-CPU machine (benchmarks/audit_ingest.py); large chains need verification from a stored, verified head.
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


class InvalidPeriodError(AdminApiError):
    """A period report was requested with a start that is not before its end, or without a timezone."""


def privacy_spends(events: Iterable[AuditEvent | AuditEventPublic]) -> list[PrivacySpendPublic]:
    """Extract the ``privacy.spent`` audit events as privacy spends, in seq order."""
    spends = []
    for event in events:
        if event.action != "privacy.spent":
            continue
        details = event.details or {}
        payload = dict(details.get("payload") or {})
        epsilon = payload.pop("epsilon", None)
        delta = payload.pop("delta", None)
        mechanism = payload.pop("mechanism", None)
        spends.append(
            PrivacySpendPublic(
                seq=event.seq,
                occurred_at=event.occurred_at,
                job_id=details.get("job_id"),
                site=details.get("site"),
                round=details.get("round"),
                epsilon=epsilon if isinstance(epsilon, int | float) else None,
                delta=delta if isinstance(delta, int | float) else None,
                mechanism=mechanism if isinstance(mechanism, str) else None,
                settings=payload,
            )
        )
    return spends


def _check_period(start: datetime, end: datetime) -> None:
    for name, value in (("start", start), ("end", end)):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidPeriodError(f"{name} {value.isoformat()} has no timezone; send ISO 8601 with Z or an offset")
    if start >= end:
        raise InvalidPeriodError(
            f"start {start.isoformat()} is not before end {end.isoformat()}; the period is [start, end)"
        )


def _period_jobs(session: Session, start: datetime, end: datetime) -> list[PeriodJobSummaryPublic]:
    began = func.coalesce(Job.submitted_at, Job.started_at, Job.created_at)
    jobs = session.scalars(
        select(Job)
        .where(began < end, or_(Job.finished_at.is_(None), Job.finished_at >= start))
        .order_by(began, Job.job_id)
    ).all()
    summaries = []
    for job in jobs:
        counts = dict(
            session.execute(
                select(Contribution.accepted, func.count())
                .where(Contribution.job_pk == job.id)
                .group_by(Contribution.accepted)
            ).tuples().all()
        )
        last_global = session.scalars(
            select(RoundMetrics.metrics)
            .where(RoundMetrics.job_pk == job.id, RoundMetrics.site.is_(None))
            .order_by(RoundMetrics.round.desc())
            .limit(1)
        ).first()
        summaries.append(
            PeriodJobSummaryPublic(
                job_id=job.job_id,
                name=job.name,
                submitter=job.submitter,
                status=job.status,
                submitted_at=job.submitted_at,
                finished_at=job.finished_at,
                num_rounds=job.num_rounds,
                sites=list(job.sites or []),
                num_accepted=counts.get(True, 0),
                num_rejected=counts.get(False, 0),
                final_global_metrics=last_global,
            )
        )
    return summaries


def build_period_report(session: Session, start: datetime, end: datetime) -> PeriodReportPublic:
    """Collect the report of the period ``[start, end)``.

    Raises:
        InvalidPeriodError: ``start`` is not before ``end``, or either has no timezone.
    """
    _check_period(start, end)
    in_period = (AuditEvent.occurred_at >= start, AuditEvent.occurred_at < end)
    counts = {
        action: count
        for action, count in session.execute(
            select(AuditEvent.action, func.count())
            .where(*in_period)
            .group_by(AuditEvent.action)
            .order_by(AuditEvent.action)
        ).tuples().all()
    }
    first_seq, last_seq = session.execute(
        select(func.min(AuditEvent.seq), func.max(AuditEvent.seq)).where(*in_period)
    ).one()
    privacy_events = session.scalars(
        select(AuditEvent).where(*in_period, AuditEvent.action == "privacy.spent").order_by(AuditEvent.seq)
    )
    return PeriodReportPublic(
        generated_at=utc_now(),
        start=start.astimezone(UTC),
        end=end.astimezone(UTC),
        jobs=_period_jobs(session, start, end),
        num_audit_events=sum(counts.values()),
        first_seq=first_seq,
        last_seq=last_seq,
        audit_event_counts=counts,
        privacy=privacy_spends(privacy_events),
        chain=ChainVerificationPublic.model_validate(verify_chain(session)),
    )


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


@dataclass(frozen=True, slots=True)
class SignedReport:
    """A rendered report and its signature statement.

    For JSON the statement is embedded in ``content`` under ``signature``; for CSV and PDF it belongs in a
    ``<file_name>.sig.json`` sidecar (``sidecar_json``).
    """

    content: bytes
    media_type: str
    file_name: str
    statement: SignatureStatement

    @property
    def sidecar_json(self) -> str:
        """Return the statement as the text of a ``.sig.json`` sidecar."""
        return json.dumps(self.statement.to_json(), indent=2, sort_keys=True) + "\n"


def _sign(
    report: JobReportPublic | PeriodReportPublic, fmt: ReportFormat, stem: str, signer: ReportSigner
) -> SignedReport:
    # Imported here: the PDF module pulls in reportlab and matplotlib, which JSON and CSV callers do not need.
    from admin_api.services.report_pdf import render_job_report_pdf, render_period_report_pdf

    file_name = f"{stem}.{fmt}"
    if fmt == "json":
        signed = signer.sign_json_report(
            report.model_dump(mode="json"), file_name=file_name, signed_at=report.generated_at
        )
        content = (json.dumps(signed, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        statement = SignatureStatement.from_json(signed["signature"])
        return SignedReport(content=content, media_type=_MEDIA_TYPES[fmt], file_name=file_name, statement=statement)
    if fmt == "csv":
        text = render_report_csv(report) if isinstance(report, JobReportPublic) else render_period_report_csv(report)
        content = text.encode("utf-8")
    elif isinstance(report, JobReportPublic):
        content = render_job_report_pdf(report, key_id=signer.key_id)
    else:
        content = render_period_report_pdf(report, key_id=signer.key_id)
    statement = signer.sign_bytes(
        content,
        content_type=_MEDIA_TYPES[fmt],
        file_name=file_name,
        chain_head=(report.chain.head_seq, report.chain.head_hash),
        signed_at=report.generated_at,
    )
    return SignedReport(content=content, media_type=_MEDIA_TYPES[fmt], file_name=file_name, statement=statement)


def render_signed_job_report(session: Session, job_id: str, fmt: ReportFormat, signer: ReportSigner) -> SignedReport:
    """Build the audit report of one job, render it as ``fmt`` and sign it.

    Raises:
        JobNotFoundError: No such job is recorded.
    """
    report = build_job_report(session, job_id)
    return _sign(report, fmt, f"job-{_UNSAFE_FILENAME_CHARS.sub('_', job_id)}-report", signer)


def _compact(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def render_signed_period_report(
    session: Session, start: datetime, end: datetime, fmt: ReportFormat, signer: ReportSigner
) -> SignedReport:
    """Build the report of the period ``[start, end)``, render it as ``fmt`` and sign it.

    Raises:
        InvalidPeriodError: ``start`` is not before ``end``, or either has no timezone.
    """
    report = build_period_report(session, start, end)
    return _sign(report, fmt, f"period-{_compact(start)}-{_compact(end)}-report", signer)


def write_signed_report(report: SignedReport, out_dir: Path | str) -> list[Path]:
    """Write a signed report into ``out_dir`` (created when missing), with a ``.sig.json`` sidecar for CSV and PDF.

    Returns:
        The report path, followed by the sidecar path when one was written.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / report.file_name
    _write_atomically_bytes(path, report.content)
    if report.media_type == _MEDIA_TYPES["json"]:
        return [path]
    sidecar = directory / f"{report.file_name}{SIDECAR_SUFFIX}"
    _write_atomically(sidecar, report.sidecar_json)
    return [path, sidecar]


def _write_atomically_bytes(path: Path, content: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
