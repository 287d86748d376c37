"""Audit reports of a job, as JSON and CSV.

A report contains the job with its submitter, status history, sites, per-round metrics and contributions, the epsilon
the job spent at each site (from the privacy ledger), every audit event of the job, and the verification of the
chain with its head hash at generation time. That verification starts at the newest verified checkpoint and records
a new one (``admin_api.services.checkpoints``), so a report does not walk the whole chain each time.

The long-form CSV is rendered by ``admin_api.services.report_csv``.

Period reports summarise every job active in a time range, the audit events of that range by action, and the
privacy spends. ``render_signed_job_report`` and ``render_signed_period_report`` render either kind as JSON, CSV or
PDF and sign it with the service key (``admin_api.services.signing``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from admin_api.errors import AdminApiError
from admin_api.models import AuditEvent, Contribution, Job, RoundMetrics, Site
from admin_api.schemas.audit import AuditEventPublic, ChainVerificationPublic, JobReportPublic
from admin_api.schemas.reports import PeriodJobSummaryPublic, PeriodReportPublic, PrivacySpendPublic
from admin_api.schemas.sites import SitePublic
from admin_api.services.audit import job_target, list_audit_events
from admin_api.services.checkpoints import verify_from_checkpoint
from admin_api.services.jobs import get_job_detail, require_job, utc_now
from admin_api.services.privacy import job_privacy_by_site
from admin_api.services.report_csv import CSV_COLUMNS, render_period_report_csv, render_report_csv
from admin_api.services.signing import SIDECAR_SUFFIX, ReportSigner, SignatureStatement

__all__ = [
    "CSV_COLUMNS",
    "InvalidPeriodError",
    "ReportFormat",
    "SignedReport",
    "build_job_report",
    "build_period_report",
    "privacy_spends",
    "render_period_report_csv",
    "render_report_csv",
    "render_report_json",
    "render_signed_job_report",
    "render_signed_period_report",
    "write_job_report",
    "write_signed_report",
]

ReportFormat = Literal["json", "csv", "pdf"]
_MEDIA_TYPES: dict[str, str] = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


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
    # A full walk took about 10 s per 100,000 audit events on a 2-CPU machine (benchmarks/audit_ingest.py), so
    # reports walk only from the newest verified checkpoint; GET /api/v1/audit/verify still walks everything.
    chain = verify_from_checkpoint(session)
    return JobReportPublic(
        generated_at=utc_now(),
        job=job,
        sites=[SitePublic.model_validate(site) for site in sites],
        privacy_by_site=job_privacy_by_site(session, require_job(session, job_id)),
        audit_events=[AuditEventPublic.model_validate(event) for event in audit_events],
        chain=ChainVerificationPublic.model_validate(chain),
    )


def render_report_json(report: JobReportPublic) -> str:
    """Render a report as indented JSON."""
    return report.model_dump_json(indent=2) + "\n"


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
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise InvalidPeriodError(
                f"{name} {value.isoformat()} is outside the years 1 to 9999 once converted to UTC; send a later time"
            ) from None
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
        chain=ChainVerificationPublic.model_validate(verify_from_checkpoint(session)),
    )


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
