"""ORM model of the privacy ledger: the differential-privacy spends the FLARE side reported, one row per round."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Double, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["PrivacyKind", "PrivacySpend"]


class PrivacyKind(StrEnum):
    """What a spend protects.

    ``sample_level``: one training record (DP-SGD at a site, mechanism ``dp-sgd``). ``client_level``: a whole site's
    contribution (DP-FedAvg on the server, mechanism ``dp-fedavg``).
    """

    SAMPLE_LEVEL = "sample_level"
    CLIENT_LEVEL = "client_level"


class PrivacySpend(Base):
    """The epsilon a job had spent after one round, for one site or for every site of the job.

    ``epsilon`` is cumulative: both FLARE mechanisms report the job's RDP-accounted epsilon so far, not the round's
    increment. ``site`` is None for a client-level spend, which covers every site of the job. There is one row per
    (job, round, site, kind); a replay leaves it as it is and a larger epsilon for the same key replaces it.
    """

    __tablename__ = "privacy_spends"
    __table_args__ = (
        CheckConstraint("kind IN ('sample_level', 'client_level')", name="kind"),
        # NULLs never collide in a plain unique constraint, so per-site and job-wide rows get one partial index each.
        # A spend without a round is deduplicated by the handler, which runs under the audit chain lock.
        Index(
            "uq_privacy_spends_site",
            "job_pk",
            "round",
            "site",
            "kind",
            unique=True,
            sqlite_where=text("site IS NOT NULL AND round IS NOT NULL"),
            postgresql_where=text("site IS NOT NULL AND round IS NOT NULL"),
        ),
        Index(
            "uq_privacy_spends_job",
            "job_pk",
            "round",
            "kind",
            unique=True,
            sqlite_where=text("site IS NULL AND round IS NOT NULL"),
            postgresql_where=text("site IS NULL AND round IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    site: Mapped[str | None] = mapped_column(String(128), index=True)
    round: Mapped[int | None] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    # As the FLARE side sent it: dp-sgd, dp-fedavg, or None when the event named none.
    mechanism: Mapped[str | None] = mapped_column(String(64))
    epsilon: Mapped[float] = mapped_column(Double())
    delta: Mapped[float] = mapped_column(Double())
    epsilon_budget: Mapped[float | None] = mapped_column(Double())
    epsilon_remaining: Mapped[float | None] = mapped_column(Double())
    # When the FLARE side recorded the spend: the event's occurred_at.
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    audit_seq: Mapped[int] = mapped_column(Integer)
