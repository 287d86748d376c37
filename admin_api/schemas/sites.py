"""Read schemas of sites."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SitePublic", "SitesPublic"]


class SitePublic(BaseModel):
    """A site some event named."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    org: str | None
    status: str = Field(description="online, offline or unknown, as last reported by the server.")
    first_seen: datetime
    last_seen: datetime


class SitesPublic(BaseModel):
    """Every recorded site, by name."""

    data: list[SitePublic]
    count: int
