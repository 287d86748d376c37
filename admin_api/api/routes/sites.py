"""Site read routes."""

from __future__ import annotations

from fastapi import APIRouter

from admin_api.api.deps import ReaderDep, SessionDep
from admin_api.schemas.sites import SitePublic, SitesPublic
from admin_api.services.sites import list_sites

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


@router.get("")
def read_sites(session: SessionDep, _principal: ReaderDep) -> SitesPublic:
    """List every recorded site by name."""
    sites = list_sites(session)
    return SitesPublic(data=[SitePublic.model_validate(site) for site in sites], count=len(sites))
