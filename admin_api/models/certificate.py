"""ORM model of the participant certificates announced by ``kit.issued`` events."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["Certificate", "CertificateKind"]


class CertificateKind(StrEnum):
    """Whose certificate it is."""

    SITE = "site"
    USER = "user"
    SERVER = "server"


class Certificate(Base):
    """One certificate of one participant. A participant's current certificate is its most recently issued one.

    ``role`` is the kit role as sent (``site``, ``server``, ``lead``, ``project_admin``, ...); ``kind`` groups it.
    ``revoked_at`` is set by a ``site.left`` event with ``revoked: true`` that names this certificate's fingerprint.
    """

    __tablename__ = "certificates"
    __table_args__ = (
        CheckConstraint("kind IN ('site', 'user', 'server')", name="kind"),
        UniqueConstraint("participant", "fingerprint", name="uq_certificates_participant_fingerprint"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    participant: Mapped[str] = mapped_column(String(255), index=True)
    org: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(255))
    not_after: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime())
    issued_by: Mapped[str | None] = mapped_column(String(255))
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revocation_reason: Mapped[str | None] = mapped_column(Text)
    # seq of the kit.issued audit event that recorded the certificate last.
    audit_seq: Mapped[int] = mapped_column(Integer)
