"""ORM models of jobs, their status history, per-round metrics and site contributions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin_api.core.status import JobStatus, StatusSource
from admin_api.models.base import Base, UtcDateTime

__all__ = ["Contribution", "Job", "JobStatusTransition", "RoundMetrics"]

_STATUS_VALUES = ", ".join(f"'{status.value}'" for status in JobStatus)
_SOURCE_VALUES = ", ".join(f"'{source.value}'" for source in StatusSource)


class Job(Base):
    """A FLARE job, however it was submitted. ``job_id`` is FLARE's id; ``id`` is ours."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str | None] = mapped_column(String(255))
    submitter: Mapped[str | None] = mapped_column(String(255), index=True)
    submitter_org: Mapped[str | None] = mapped_column(String(128))
    submitter_role: Mapped[str | None] = mapped_column(String(64))
    # The person who asked the admin API to submit the job. FLARE records the service identity as submitter then.
    requested_by: Mapped[str | None] = mapped_column(String(255), index=True)
    requested_by_org: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32), index=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    num_rounds: Mapped[int | None] = mapped_column(Integer)
    sites: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # When the stuck-job detector first found the RUNNING job without a job process; None while one runs.
    missing_since: Mapped[datetime | None] = mapped_column(UtcDateTime())

    transitions: Mapped[list[JobStatusTransition]] = relationship(
        back_populates="job", order_by="JobStatusTransition.id"
    )


class JobStatusTransition(Base):
    """One recorded status change of a job. ``from_status`` is None for the job's first status."""

    __tablename__ = "job_status_transitions"
    __table_args__ = (CheckConstraint(f"source IN ({_SOURCE_VALUES})", name="source"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    source: Mapped[str] = mapped_column(String(16))
    # Event that caused the change; None for a reconciler change.
    event_id: Mapped[str | None] = mapped_column(String(36))

    job: Mapped[Job] = relationship(back_populates="transitions")


class RoundMetrics(Base):
    """Metrics of one round: global ones when ``site`` is None, else one site's.

    ``metrics`` maps a metric name (loss, roc_auc, accuracy, num_examples, ...) to a number, or to None when the
    metric is undefined for that round, for example ROC AUC on a single-class validation set.
    """

    __tablename__ = "round_metrics"
    __table_args__ = (
        # NULLs never collide in a plain unique constraint, so global and per-site rows get one partial index each.
        Index(
            "uq_round_metrics_site",
            "job_pk",
            "round",
            "site",
            unique=True,
            sqlite_where=text("site IS NOT NULL"),
            postgresql_where=text("site IS NOT NULL"),
        ),
        Index(
            "uq_round_metrics_global",
            "job_pk",
            "round",
            unique=True,
            sqlite_where=text("site IS NULL"),
            postgresql_where=text("site IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    round: Mapped[int] = mapped_column(Integer)
    site: Mapped[str | None] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Contribution(Base):
    """Whether the server accepted one site's update in one round, and why not when it did not."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("job_pk", "round", "site", name="uq_contributions_job_pk_round_site"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    round: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(128))
    accepted: Mapped[bool]
    reason_code: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    num_examples: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
