"""Per-round metrics and site contributions of a job."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.models import Contribution, Job, RoundMetrics
from admin_api.services.jobs import IngestRows

__all__ = ["record_contribution", "record_round_metrics"]


def _site_key(row: RoundMetrics | Contribution) -> tuple[str | None]:
    return (row.site,)


def record_round_metrics(
    session: Session,
    job: Job,
    *,
    round_number: int,
    site: str | None,
    metrics: Mapping[str, Any],
    at: datetime,
    rows: IngestRows | None = None,
) -> RoundMetrics:
    """Merge metrics into a round's global row (``site`` None) or a site's row.

    A metric reported again replaces the earlier value, and other metrics stay. With ``rows``, the row is looked up
    through that cache and left for the next flush to write.
    """
    statement = select(RoundMetrics).where(RoundMetrics.job_pk == job.id, RoundMetrics.round == round_number)
    if site is None:
        statement = statement.where(RoundMetrics.site.is_(None))
    else:
        statement = statement.where(RoundMetrics.site == site)
    if rows is None:
        row = session.scalar(statement)
    else:
        row = rows.round_row(session, RoundMetrics, job, round_number, (site,), _site_key)
    if row is None:
        row = RoundMetrics(job_pk=job.id, round=round_number, site=site, metrics=dict(metrics), updated_at=at)
        session.add(row)
        if rows is not None:
            rows.add_round_row(RoundMetrics, job, round_number, (site,), row)
    else:
        # A new dict, because SQLAlchemy does not track changes made inside a JSON value.
        row.metrics = {**row.metrics, **metrics}
        row.updated_at = max(row.updated_at, at)
    if rows is None:
        session.flush()
    return row


def record_contribution(
    session: Session,
    job: Job,
    *,
    round_number: int,
    site: str,
    accepted: bool,
    at: datetime,
    num_examples: int | None = None,
    reason_code: str | None = None,
    reason: str | None = None,
    rows: IngestRows | None = None,
) -> Contribution:
    """Record whether a site's update was accepted in a round.

    A report for the same job, round and site replaces the recorded one only if it did not happen earlier, so a late
    delivery cannot overwrite a newer decision. With ``rows``, the row is looked up through that cache and left for
    the next flush to write.
    """
    statement = select(Contribution).where(
        Contribution.job_pk == job.id, Contribution.round == round_number, Contribution.site == site
    )
    if rows is None:
        row = session.scalar(statement)
    else:
        row = rows.round_row(session, Contribution, job, round_number, (site,), _site_key)
    if row is None:
        row = Contribution(job_pk=job.id, round=round_number, site=site, accepted=accepted, occurred_at=at)
        session.add(row)
        if rows is not None:
            rows.add_round_row(Contribution, job, round_number, (site,), row)
    elif at < row.occurred_at:
        return row
    row.accepted = accepted
    row.num_examples = num_examples
    row.reason_code = reason_code
    row.reason = reason
    row.occurred_at = at
    if rows is None:
        session.flush()
    return row
