"""ORM model of the idempotency record kept for every ingested event."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["IngestedEvent"]


class IngestedEvent(Base):
    """An event already ingested. A second event with the same ``event_id`` is a replay and changes nothing."""

    __tablename__ = "ingested_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    job_id: Mapped[str | None] = mapped_column(String(128))
    site: Mapped[str | None] = mapped_column(String(128))
    # SHA-256 of the event's canonical JSON, to tell a faithful retry from a reused event_id.
    content_sha256: Mapped[str] = mapped_column(String(64))
    audit_seq: Mapped[int]
