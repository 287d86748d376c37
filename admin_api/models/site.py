"""ORM model of a participating site."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from admin_api.models.base import Base, UtcDateTime

__all__ = ["Site", "SiteStatus"]


class SiteStatus(StrEnum):
    """Connection state of a site as last reported by the server."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


class Site(Base):
    """A site (FLARE client) that some event named."""

    __tablename__ = "sites"
    __table_args__ = (CheckConstraint("status IN ('unknown', 'online', 'offline')", name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    org: Mapped[str | None] = mapped_column(String(128))
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    status: Mapped[str] = mapped_column(String(16), default=SiteStatus.UNKNOWN.value)
    # Time of the event that set ``status``, so a late site.left cannot undo a newer site.joined.
    status_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
