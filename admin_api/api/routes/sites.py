"""Site read routes."""

from __future__ import annotations

from fastapi import APIRouter

from admin_api.api.auth import visible_org
from admin_api.api.deps import ReaderDep, SessionDep
from admin_api.schemas.sites import SitePublic, SitesPublic
from admin_api.services.sites import list_sites

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


@router.get("")
def read_sites(session: SessionDep, principal: ReaderDep) -> SitesPublic:
    """List recorded sites by name; an org admin sees only the sites of its org."""
    sites = list_sites(session, org=visible_org(principal), org_sites=principal.org_sites)
    return SitesPublic(data=[SitePublic.model_validate(site) for site in sites], count=len(sites))
