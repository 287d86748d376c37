"""Read schemas of sites."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SitePublic", "SitesPublic"]

SITE_EXAMPLE: dict[str, Any] = {
    "name": "hospital-a",
    "org": "hospital_a",
    "status": "online",
    "first_seen": "2026-12-04T18:02:11Z",
    "last_seen": "2026-12-04T19:14:21Z",
}


class SitePublic(BaseModel):
    """A site some event named."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [SITE_EXAMPLE]})

    name: str
    org: str | None
    status: str = Field(description="online, offline or unknown, as last reported by the server.")
    first_seen: datetime
    last_seen: datetime


class SitesPublic(BaseModel):
    """Every recorded site, by name."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [SITE_EXAMPLE], "count": 1}]})

    data: list[SitePublic]
    count: int
