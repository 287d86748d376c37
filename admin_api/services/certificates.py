"""Participant certificates from ``kit.issued`` events, their revocation, and their expiry.

``consortia kit build`` posts a ``kit.issued`` event per kit (``provisioning/kit_issuance.py``) with the participant,
the kit role, the certificate's SHA-256 fingerprint and its expiry; the actor is who issued it. ``consortia site
revoke`` posts a ``site.left`` event with ``revoked: true``, a ``reason`` and the site certificate's fingerprint
(``provisioning/revocation.py``). FLARE rejects a revoked site by name, so the revocation covers every certificate
of the site issued up to then. Key rotation (``consortia site rotate``) posts a ``site.left`` event with
``revoked: true`` and ``scope: certificate``, which revokes only the certificate with that fingerprint; the site
stays a member and its new certificate becomes current when its kit is issued.

A participant's current certificate is its most recently issued one. Revocations and issuances may arrive in either
order: a certificate recorded after its site's revocation is marked revoked from the revocation's audit event.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.models import AuditEvent, Certificate, CertificateKind, Site, User
from admin_api.schemas.certificates import CertificatePublic
from admin_api.schemas.events import KitIssuedEvent
from admin_api.services.audit import next_audit_seq, site_target
from admin_api.services.jobs import utc_now

__all__ = [
    "CERTIFICATE_SCOPE",
    "count_expiring_certificates",
    "current_certificates",
    "kind_of_role",
    "record_certificate",
    "revoke_certificate",
    "revoke_site_certificates",
]

CERTIFICATE_SCOPE = "certificate"
"""``scope`` of a ``site.left`` revocation that retires one certificate, not the site."""

_MAX_ORG_LENGTH = 128


def kind_of_role(role: str) -> CertificateKind:
    """Return the certificate kind of a kit role: ``site`` and ``server`` as they are, any other role a user."""
    if role == CertificateKind.SITE.value:
        return CertificateKind.SITE
    if role == CertificateKind.SERVER.value:
        return CertificateKind.SERVER
    return CertificateKind.USER


def _org_of(session: Session, participant: str, extras: dict[str, Any]) -> str | None:
    org = extras.get("org")
    if isinstance(org, str) and 0 < len(org) <= _MAX_ORG_LENGTH:
        return org
    site_org = session.scalar(select(Site.org).where(Site.name == participant))
    if site_org is not None:
        return site_org
    return session.scalar(select(User.org).where(User.name == participant))


def _revocation_of(
    session: Session, participant: str, fingerprint: str, issued_at: datetime
) -> tuple[datetime, str | None] | None:
    """Return the time and reason of a recorded revocation of this certificate at or after ``issued_at``.

    A revocation of the whole site covers the certificate; a revocation of one certificate only when the
    fingerprints match.
    """
    events = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.target == site_target(participant), AuditEvent.action == "site.left")
        .order_by(AuditEvent.seq)
    )
    for event in events:
        payload = (event.details or {}).get("payload") or {}
        revoked_fingerprint = payload.get("certificate_fingerprint")
        if payload.get("scope") == CERTIFICATE_SCOPE and (
            not isinstance(revoked_fingerprint, str) or revoked_fingerprint.strip() != fingerprint
        ):
            continue
        if payload.get("revoked") is True and event.occurred_at >= issued_at:
            reason = payload.get("reason")
            return event.occurred_at, reason if isinstance(reason, str) else None
    return None


def record_certificate(session: Session, event: KitIssuedEvent) -> dict[str, Any]:
    """Record the certificate a ``kit.issued`` event announces; return the effects for the audit event.

    A certificate is identified by participant and fingerprint. A later issuance of the same certificate (a kit
    built again) updates its issue time, issuer and expiry; an earlier one changes nothing.
    """
    payload = event.payload
    participant = payload.participant
    extras = payload.model_extra or {}
    values: dict[str, Any] = {
        "kind": kind_of_role(payload.role).value,
        "role": payload.role,
        "not_after": payload.expires_at,
        "issued_at": event.occurred_at,
        "issued_by": event.actor,
        "audit_seq": next_audit_seq(session),
    }
    org = _org_of(session, participant, extras)
    if org is not None:
        values["org"] = org
    fingerprint = payload.certificate_fingerprint.strip()
    certificate = session.scalar(
        select(Certificate).where(Certificate.participant == participant, Certificate.fingerprint == fingerprint)
    )
    if certificate is None:
        certificate = Certificate(participant=participant, fingerprint=fingerprint, **values)
        revocation = (
            _revocation_of(session, participant, fingerprint, event.occurred_at) if values["kind"] == "site" else None
        )
        if revocation is not None:
            certificate.revoked_at, certificate.revocation_reason = revocation
        session.add(certificate)
        outcome = "recorded"
    elif event.occurred_at >= certificate.issued_at:
        for name, value in values.items():
            setattr(certificate, name, value)
        outcome = "updated"
    else:
        outcome = "unchanged"
    return {"certificate": outcome, "kind": values["kind"], "revoked": certificate.revoked_at is not None}


def revoke_certificate(
    session: Session, site: str, fingerprint: str, *, at: datetime, reason: str | None
) -> list[str]:
    """Mark the certificate of ``site`` with ``fingerprint`` as revoked at ``at``; return its fingerprint if found.

    The revocation is kept in the audit chain either way, so a certificate recorded later is marked revoked when
    its ``kit.issued`` event arrives.
    """
    certificate = session.scalar(
        select(Certificate).where(
            Certificate.participant == site, Certificate.fingerprint == fingerprint.strip(), Certificate.revoked_at.is_(None)
        )
    )
    if certificate is None:
        return []
    certificate.revoked_at = at
    certificate.revocation_reason = reason[:4000] if reason else None
    return [certificate.fingerprint]


def revoke_site_certificates(session: Session, site: str, *, at: datetime, reason: str | None) -> list[str]:
    """Mark every certificate of ``site`` issued up to ``at`` as revoked at ``at``; return their fingerprints."""
    certificates = session.scalars(
        select(Certificate)
        .where(Certificate.participant == site, Certificate.revoked_at.is_(None), Certificate.issued_at <= at)
        .order_by(Certificate.id)
    )
    revoked = []
    for certificate in certificates:
        certificate.revoked_at = at
        certificate.revocation_reason = reason[:4000] if reason else None
        revoked.append(certificate.fingerprint)
    return revoked


def _current(session: Session) -> list[Certificate]:
    newest: dict[str, Certificate] = {}
    for certificate in session.scalars(select(Certificate).order_by(Certificate.id)):
        known = newest.get(certificate.participant)
        if known is None or certificate.issued_at >= known.issued_at:
            newest[certificate.participant] = certificate
    return list(newest.values())


def _display_org(session: Session, certificates: list[Certificate]) -> dict[str, str | None]:
    names = sorted({certificate.participant for certificate in certificates})
    site_orgs = dict(session.execute(select(Site.name, Site.org).where(Site.name.in_(names))).tuples().all())
    user_orgs = dict(session.execute(select(User.name, User.org).where(User.name.in_(names))).tuples().all())
    return {c.participant: c.org or site_orgs.get(c.participant) or user_orgs.get(c.participant) for c in certificates}


def current_certificates(
    session: Session,
    *,
    warn_days: int,
    org: str | None = None,
    org_sites: frozenset[str] | set[str] = frozenset(),
    now: datetime | None = None,
) -> list[CertificatePublic]:
    """Return each participant's current certificate, soonest expiry first.

    Args:
        session: A read session.
        warn_days: A certificate that is not revoked and expires in fewer whole days gets ``warning``.
        org: Only the certificates of this org (an org admin's): the participant's org, or a site of ``org_sites``.
        org_sites: The sites of ``org`` from the consortium file.
        now: The time to count days from; the current time when None.
    """
    now = now or utc_now()
    certificates = _current(session)
    orgs = _display_org(session, certificates)
    listed = []
    for certificate in certificates:
        participant_org = orgs[certificate.participant]
        if org is not None and participant_org != org and certificate.participant not in org_sites:
            continue
        days = (certificate.not_after - now) // timedelta(days=1)
        listed.append(
            CertificatePublic(
                participant=certificate.participant,
                org=participant_org,
                kind=certificate.kind,
                role=certificate.role,
                fingerprint=certificate.fingerprint,
                issued_at=certificate.issued_at,
                issued_by=certificate.issued_by,
                not_after=certificate.not_after,
                days_to_expiry=days,
                warning=certificate.revoked_at is None and days < warn_days,
                revoked_at=certificate.revoked_at,
                revocation_reason=certificate.revocation_reason,
            )
        )
    return sorted(listed, key=lambda item: (item.not_after, item.participant))


def count_expiring_certificates(session: Session, *, warn_days: int, now: datetime | None = None) -> int:
    """Return how many current, unrevoked certificates expire in fewer than ``warn_days`` days (expired included)."""
    return sum(certificate.warning for certificate in current_certificates(session, warn_days=warn_days, now=now))
