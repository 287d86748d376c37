"""ORM models of the append-only audit chain and its verified checkpoints.

Only ``admin_api.services.audit`` writes audit events; only ``admin_api.services.checkpoints`` writes checkpoints.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["AuditCheckpoint", "AuditEvent"]


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


class AuditCheckpoint(Base):
    """A chain position that a verification found valid: the event at ``seq`` had ``hash`` at ``verified_at``.

    A later verification may start at the newest checkpoint instead of seq 1, after checking that the event at
    ``seq`` still has ``hash``. ``verified_from_seq`` is None when the walk that wrote the checkpoint started at
    seq 1, else the seq of the checkpoint it started from. Rows are append-only, like audit events.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)
    hash: Mapped[str] = mapped_column(String(64))
    verified_at: Mapped[datetime] = mapped_column(UtcDateTime())
    verified_from_seq: Mapped[int | None] = mapped_column(Integer)
