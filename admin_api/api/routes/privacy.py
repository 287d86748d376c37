"""Privacy ledger routes: the spends of every round and the epsilon each site spent across jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.orm import Session

from admin_api.api.auth import Principal, visible_org
from admin_api.api.deps import PrivacyReaderDep, SessionDep
from admin_api.schemas.events import JOB_ID_PATTERN, SITE_NAME_PATTERN
from admin_api.schemas.privacy import PrivacyLedgerPublic, SitesPrivacyPublic
from admin_api.services.privacy import list_privacy_ledger, org_site_names, site_privacy_totals

router = APIRouter(prefix="/api/v1/privacy", tags=["privacy"])

MAX_OFFSET = 2**63 - 1
"""Largest offset a 64-bit database integer holds; a larger one would fail in the database driver."""


def _visible_sites(session: Session, principal: Principal) -> set[str] | None:
    """Return the sites an org admin may see (its org's), or None for a role that sees every site."""
    org = visible_org(principal)
    return None if org is None else org_site_names(session, org, principal.org_sites)


@router.get("/ledger")
def read_privacy_ledger(
    session: SessionDep,
    principal: PrivacyReaderDep,
    site: Annotated[
        str | None, Query(pattern=SITE_NAME_PATTERN, description="Spends of this site and of its jobs.")
    ] = None,
    job_id: Annotated[str | None, Query(pattern=JOB_ID_PATTERN, description="Spends of this job.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> PrivacyLedgerPublic:
    """List recorded privacy spends, newest first: one per job, round, site and kind.

    ``epsilon`` is the job's cumulative epsilon after the round, as the FLARE side reports it. A client-level spend
    (DP-FedAvg) has no site and covers every site of its job. An org admin sees the spends of its org's sites and
    the client-level spends of jobs deployed to them.
    """
    entries, count = list_privacy_ledger(
        session,
        site=site,
        job_id=job_id,
        visible_sites=_visible_sites(session, principal),
        limit=limit,
        offset=offset,
    )
    return PrivacyLedgerPublic(data=entries, count=count, limit=limit, offset=offset)


@router.get("/sites")
def read_site_privacy(session: SessionDep, principal: PrivacyReaderDep) -> SitesPrivacyPublic:
    """Return the epsilon each site spent, summed over jobs; an org admin sees only its org's sites.

    Both DP mechanisms report the job's cumulative epsilon after each round, so a job's spend is its latest (largest)
    cumulative epsilon, never the sum of its rounds. A job that used both DP-SGD and DP-FedAvg at a site spent the
    sum of the two there. Across jobs the epsilons and deltas add up (basic composition), as the site's own budget
    counts them. A DP-FedAvg spend counts at every site its job lists.
    """
    sites = site_privacy_totals(session, visible_sites=_visible_sites(session, principal))
    return SitesPrivacyPublic(data=sites, count=len(sites))
