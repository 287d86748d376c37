"""ORM model of the append-only audit chain. Only ``admin_api.services.audit`` writes it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["AuditEvent"]


class AuditEvent(Base):
    """One link of the audit chain; see ``admin_api.core.chain`` for how ``hash`` is computed.

    ``details`` uses the JSON type, which PostgreSQL stores as the exact text written, so the values read back hash
    to the same digest. ``prev_hash`` is unique, so two events can never extend the same predecessor.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    actor: Mapped[str] = mapped_column(Text)
    role: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
