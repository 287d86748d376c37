"""Site read routes: the sites and their participants' certificates."""

from __future__ import annotations

from fastapi import APIRouter

from admin_api.api.auth import visible_org
from admin_api.api.deps import CertificateReaderDep, ReaderDep, SessionDep, SettingsDep
from admin_api.schemas.certificates import CertificatesPublic
from admin_api.schemas.sites import SitePublic, SitesPublic
from admin_api.services.certificates import current_certificates
from admin_api.services.sites import list_sites

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])


@router.get("")
def read_sites(session: SessionDep, principal: ReaderDep) -> SitesPublic:
    """List recorded sites by name; an org admin sees only the sites of its org."""
    sites = list_sites(session, org=visible_org(principal), org_sites=principal.org_sites)
    return SitesPublic(data=[SitePublic.model_validate(site) for site in sites], count=len(sites))


@router.get("/certificates")
def read_certificates(
    session: SessionDep, principal: CertificateReaderDep, settings: SettingsDep
) -> CertificatesPublic:
    """List each participant's current certificate (site, user or server), soonest expiry first.

    ``warning`` is set on a certificate that is not revoked and expires in fewer than ``CONSORTIA_CERT_WARN_DAYS``
    days (default 30), expired ones included. Certificates come from ``kit.issued`` events; a site revoked with
    ``consortia site revoke`` shows ``revoked_at``. An org admin sees only its org's participants.
    """
    certificates = current_certificates(
        session, warn_days=settings.cert_warn_days, org=visible_org(principal), org_sites=principal.org_sites
    )
    return CertificatesPublic(
        data=certificates,
        count=len(certificates),
        warn_days=settings.cert_warn_days,
        num_warning=sum(certificate.warning for certificate in certificates),
    )
