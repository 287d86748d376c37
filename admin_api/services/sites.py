"""Sites: recorded from the events that name them."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from admin_api.models import Site, SiteStatus

if TYPE_CHECKING:
    from admin_api.services.jobs import IngestRows

__all__ = ["list_sites", "set_site_status", "touch_site"]


def touch_site(
    session: Session, name: str, *, at: datetime, org: str | None = None, rows: IngestRows | None = None
) -> Site:
    """Record that ``name`` was seen at ``at``, creating the site on first sight.

    ``first_seen`` and ``last_seen`` widen to include ``at``, so events arriving out of order give the same result.
    A non-None ``org`` replaces the recorded one. With ``rows``, the site is looked up in the database at most once
    per transaction, and a new site is left for the next flush to insert.
    """
    site = rows.sites.get(name) if rows is not None else None
    if site is None:
        site = session.scalar(select(Site).where(Site.name == name))
    if site is None:
        site = Site(name=name, org=org, first_seen=at, last_seen=at, status=SiteStatus.UNKNOWN.value)
        session.add(site)
        if rows is None:
            session.flush()
        else:
            rows.sites[name] = site
        return site
    if rows is not None:
        rows.sites[name] = site
    site.first_seen = min(site.first_seen, at)
    site.last_seen = max(site.last_seen, at)
    if org is not None:
        site.org = org
    return site


def set_site_status(site: Site, status: SiteStatus, *, at: datetime) -> bool:
    """Set a site's connection status unless a newer report already set it.

    Returns:
        True when the status was applied.
    """
    if site.status_at is not None and at < site.status_at:
        return False
    site.status = status.value
    site.status_at = at
    return True


def list_sites(session: Session, *, org: str | None = None, org_sites: Collection[str] = ()) -> list[Site]:
    """Return recorded sites by name: all of them, or those of ``org`` when given.

    A site belongs to ``org`` when an event reported that org for it or when ``org_sites`` (from the consortium
    file) names it.
    """
    statement = select(Site).order_by(Site.name)
    if org is not None:
        statement = statement.where(or_(Site.org == org, Site.name.in_(sorted(org_sites))))
    return list(session.scalars(statement))
