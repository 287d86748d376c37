"""PDF rendering of job and period reports with reportlab, and the training-curve plot with matplotlib.

A job report has: the title, the job table (id, name, submitter, sites, status), a plot of the global ROC AUC and
loss by round, the site table (accepted and rejected contributions with the reasons), the epsilon spent per site
from the privacy ledger and the spends recorded by ``privacy.spent`` audit events, the timeline of the job's audit
events, and the audit chain head with the id of the signing key. The PDF cannot contain its own signature, so the signature statement is a ``.sig.json`` sidecar.

matplotlib is used through ``Figure`` and the Agg canvas directly, never through ``pyplot``, so rendering keeps no
global state and is safe in the service's worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet  # type: ignore[import-untyped]
from reportlab.lib.units import cm  # type: ignore[import-untyped]
from reportlab.platypus import Flowable, Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle  # type: ignore[import-untyped]

from admin_api.core.chain import format_timestamp
from admin_api.schemas.audit import ChainVerificationPublic, JobReportPublic
from admin_api.schemas.privacy import SiteJobPrivacyPublic
from admin_api.schemas.reports import PeriodReportPublic, PrivacySpendPublic

__all__ = ["render_job_report_pdf", "render_period_report_pdf", "render_training_curve_png"]

_STYLES = getSampleStyleSheet()
_CELL = ParagraphStyle("cell", parent=_STYLES["BodyText"], fontSize=7.5, leading=9)
_MONO = ParagraphStyle("mono", parent=_CELL, fontName="Courier", fontSize=7, leading=8.5)
_TABLE_STYLE = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8ecf1")),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("FONTSIZE", (0, 0), (-1, -1), 7.5),
    ]
)
_PAGE_WIDTH = A4[0] - 3 * cm
MAX_TIMELINE_ROWS = 2000
"""Maximum audit events in a job report's timeline. A longer job lists the first ones and a count of the rest."""


def _text(value: Any, style: ParagraphStyle = _CELL) -> Paragraph:
    """Wrap a value in a table cell; text is escaped because Paragraph parses markup."""
    if value is None:
        display = "-"
    elif isinstance(value, datetime):
        display = format_timestamp(value)
    elif isinstance(value, float):
        display = f"{value:.4g}"
    else:
        display = str(value)
    return Paragraph(escape(display), style)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], widths: Sequence[float] | None = None) -> Table:
    data = [[_text(cell) for cell in header]]
    data.extend([cell if isinstance(cell, Flowable) else _text(cell) for cell in row] for row in rows)
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(_TABLE_STYLE)
    return table


def _key_value_table(pairs: Sequence[tuple[str, Any]]) -> Table:
    table = Table([[_text(key), _text(value)] for key, value in pairs], colWidths=[4 * cm, _PAGE_WIDTH - 4 * cm])
    table.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("VALIGN", (0, 0), (-1, -1), "TOP")]))
    return table


def _heading(text: str) -> Paragraph:
    return Paragraph(escape(text), _STYLES["Heading2"])


def render_training_curve_png(
    rounds: Sequence[int], roc_auc: Sequence[float | None], loss: Sequence[float | None]
) -> bytes:
    """Plot the global ROC AUC and loss by round side by side; a round without a value has no point."""
    figure = Figure(figsize=(7.5, 2.6), dpi=150)
    FigureCanvasAgg(figure)
    for index, (values, label, color) in enumerate(((roc_auc, "ROC AUC", "#1f77b4"), (loss, "loss", "#d62728"))):
        axes = figure.add_subplot(1, 2, index + 1)
        points = [(r, v) for r, v in zip(rounds, values, strict=True) if v is not None]
        if points:
            axes.plot([r for r, _ in points], [v for _, v in points], marker="o", color=color)
        else:
            axes.text(0.5, 0.5, f"no {label} reported", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("round (0 = initial model)")
        axes.set_ylabel(f"global {label}")
        axes.grid(alpha=0.3)
        if rounds:
            axes.set_xticks(sorted(set(rounds)))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _training_curve(report: JobReportPublic) -> list[Flowable]:
    rounds = sorted(report.job.rounds, key=lambda entry: entry.round)
    with_metrics = [entry for entry in rounds if entry.global_metrics]
    if not with_metrics:
        return [Paragraph("No global metrics were reported for this job.", _STYLES["BodyText"])]

    def metric(entry: Any, name: str) -> float | None:
        value = entry.global_metrics.get(name)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    png = render_training_curve_png(
        [entry.round for entry in with_metrics],
        [metric(entry, "roc_auc") for entry in with_metrics],
        [metric(entry, "loss") for entry in with_metrics],
    )
    width = _PAGE_WIDTH
    return [Image(io.BytesIO(png), width=width, height=width * 2.6 / 7.5)]


def _site_rows(report: JobReportPublic) -> list[list[Any]]:
    orgs = {site.name: site.org for site in report.sites}
    accepted: dict[str, int] = {}
    rejected: dict[str, list[str]] = {}
    for entry in report.job.rounds:
        for contribution in entry.contributions:
            if contribution.accepted:
                accepted[contribution.site] = accepted.get(contribution.site, 0) + 1
            else:
                reason = f"round {entry.round}: {contribution.reason_code}: {contribution.reason}"
                rejected.setdefault(contribution.site, []).append(reason)
    names = sorted({*report.job.sites, *accepted, *rejected})
    return [
        [name, orgs.get(name), accepted.get(name, 0), len(rejected.get(name, [])), "; ".join(rejected.get(name, []))]
        for name in names
    ]


def _privacy_section(spends: Sequence[PrivacySpendPublic]) -> list[Flowable]:
    if not spends:
        return [Paragraph("No privacy.spent events were recorded: the job used no differential privacy.", _CELL)]
    rows = [
        [s.seq, s.round, s.site or "server", s.mechanism, s.epsilon, s.delta,
         ", ".join(f"{k}={v}" for k, v in sorted(s.settings.items()))]
        for s in spends
    ]  # fmt: skip
    widths = [1.2 * cm, 1.2 * cm, 2.6 * cm, 2.2 * cm, 1.8 * cm, 1.8 * cm, _PAGE_WIDTH - 10.8 * cm]
    return [_table(["seq", "round", "site", "mechanism", "epsilon", "delta", "settings"], rows, widths)]


def _site_privacy_section(spends: Sequence[SiteJobPrivacyPublic]) -> list[Flowable]:
    if not spends:
        return []
    rows = [[s.site, s.epsilon, s.delta, s.sample_level_epsilon, s.client_level_epsilon, s.last_round] for s in spends]
    headers = ["site", "epsilon spent", "delta", "DP-SGD epsilon", "DP-FedAvg epsilon", "last round"]
    widths = [3.4 * cm, 2.4 * cm, 2 * cm, 2.8 * cm, 3 * cm, _PAGE_WIDTH - 13.6 * cm]
    note = Paragraph(
        "Epsilon spent per site, from the privacy ledger: the job's latest cumulative epsilon of each kind, added.",
        _CELL,
    )
    return [note, _table(headers, rows, widths), Spacer(1, 0.2 * cm)]


def _chain_section(chain: ChainVerificationPublic, key_id: str, file_hint: str) -> list[Flowable]:
    checked: int | str = chain.num_events
    if chain.verified_from_seq is not None:
        checked = f"{chain.num_events} (from the verified checkpoint at seq {chain.verified_from_seq})"
    pairs = [
        ("chain verified", "yes" if chain.ok else f"NO: first bad seq {chain.first_bad_seq}: {chain.reason}"),
        ("events checked", checked),
        ("chain head seq", chain.head_seq),
        ("chain head hash", chain.head_hash),
        ("signing key id", key_id),
        ("signature", f"Ed25519 statement in {file_hint}; check it with 'consortia report verify'"),
    ]
    return [_heading("Audit chain and signature"), _key_value_table(pairs)]


def _build_pdf(title: str, story: list[Flowable]) -> bytes:
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer, pagesize=A4, title=title, author="Consortia admin service",
        leftMargin=1.5 * cm, rightMargin=1.5 * cm, topMargin=1.5 * cm, bottomMargin=1.5 * cm,
    )  # fmt: skip
    document.build([Paragraph(escape(title), _STYLES["Title"]), *story])
    return buffer.getvalue()


def render_job_report_pdf(report: JobReportPublic, *, key_id: str) -> bytes:
    """Render the audit report of one job as PDF.

    Args:
        report: The report from ``build_job_report``.
        key_id: Id of the key that signs the PDF, printed beside the chain head.
    """
    job = report.job
    story: list[Flowable] = [
        _key_value_table(
            [
                ("job id", job.job_id),
                ("name", job.name),
                (
                    "submitter",
                    f"{job.submitter or '-'} ({job.submitter_role or 'role unknown'}, {job.submitter_org or '-'})",
                ),
                ("sites", ", ".join(job.sites) or "-"),
                ("status", job.status),
                (
                    "submitted / started / finished",
                    " / ".join(_text(t).text for t in (job.submitted_at, job.started_at, job.finished_at)),
                ),
                ("rounds", job.num_rounds),
                ("report generated", report.generated_at),
            ]
        ),
        _heading("Training curve"),
        *_training_curve(report),
        _heading("Participating sites"),
        _table(
            ["site", "org", "accepted", "rejected", "rejection reasons"],
            _site_rows(report),
            [3 * cm, 2.6 * cm, 1.6 * cm, 1.6 * cm, _PAGE_WIDTH - 8.8 * cm],
        ),
        _heading("Privacy"),
        *_site_privacy_section(report.privacy_by_site),
        *_privacy_section(_privacy(report)),
        _heading("Event timeline"),
        *_timeline(report),
        Spacer(1, 0.3 * cm),
        *_chain_section(report.chain, key_id, "the .sig.json file beside this PDF"),
    ]
    return _build_pdf(f"Audit report of job {job.name or job.job_id}", story)


def _privacy(report: JobReportPublic) -> list[PrivacySpendPublic]:
    from admin_api.services.reports import privacy_spends  # reports imports this module lazily, so no cycle at import

    return privacy_spends(report.audit_events)


def _timeline(report: JobReportPublic) -> list[Flowable]:
    events = report.audit_events[:MAX_TIMELINE_ROWS]
    rows = [
        [e.seq, e.occurred_at, e.actor, e.action, e.details.get("site"), e.details.get("round"),
         Paragraph(escape(e.hash[:16] + "…"), _MONO)]
        for e in events
    ]  # fmt: skip
    widths = [1.2 * cm, 3.6 * cm, 3.2 * cm, 3.4 * cm, 2.4 * cm, 1.2 * cm, _PAGE_WIDTH - 15 * cm]
    story: list[Flowable] = [
        _table(["seq", "occurred at (UTC)", "actor", "action", "site", "round", "hash"], rows, widths)
    ]
    if len(report.audit_events) > len(events):
        left_out = len(report.audit_events) - len(events)
        story.append(Paragraph(f"{left_out} later events are left out here; the JSON and CSV reports list all.", _CELL))
    return story


def render_period_report_pdf(report: PeriodReportPublic, *, key_id: str) -> bytes:
    """Render a period report as PDF.

    Args:
        report: The report from ``build_period_report``.
        key_id: Id of the key that signs the PDF, printed beside the chain head.
    """
    job_rows = [
        [j.job_id, j.name, j.submitter, j.status, ", ".join(j.sites), j.num_accepted, j.num_rejected,
         (j.final_global_metrics or {}).get("roc_auc")]
        for j in report.jobs
    ]  # fmt: skip
    count_rows = [[action, count] for action, count in report.audit_event_counts.items()]
    story: list[Flowable] = [
        _key_value_table(
            [
                ("period start (inclusive)", report.start),
                ("period end (exclusive)", report.end),
                ("report generated", report.generated_at),
                ("audit events in period", f"{report.num_audit_events} (seq {report.first_seq} to {report.last_seq})"),
            ]
        ),
        _heading(f"Jobs active in the period ({len(report.jobs)})"),
        _table(
            ["job id", "name", "submitter", "status", "sites", "accepted", "rejected", "final ROC AUC"],
            job_rows,
            [3.2 * cm, 2.4 * cm, 3 * cm, 2.6 * cm, 2.8 * cm, 1.3 * cm, 1.3 * cm, _PAGE_WIDTH - 16.6 * cm],
        ),
        _heading("Audit events by action"),
        _table(["action", "events"], count_rows, [6 * cm, 3 * cm]),
        _heading("Privacy"),
        *_privacy_section(report.privacy),
        Spacer(1, 0.3 * cm),
        *_chain_section(report.chain, key_id, "the .sig.json file beside this PDF"),
    ]
    return _build_pdf("Consortia activity report", story)
