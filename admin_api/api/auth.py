"""Bearer-token authentication, the role matrix and every access decision of the admin API.

Three kinds of bearer token exist:

- ``CONSORTIA_EVENT_TOKEN``: the FLARE server's event forwarder; it may only post events.
- ``CONSORTIA_API_TOKEN``: the bootstrap service token; it acts with the ``project_admin`` role.
- User tokens from ``consortia users token NAME`` (``cst_`` followed by 43 URL-safe characters): they act with the
  role the consortium file gives that user.

A route declares the scope it needs with ``require_scope``. ``ROLE_SCOPES`` is the role matrix; ``docs/roles.md``
shows the same table. Scopes decide which routes a role may call. The row checks below (``can_read_job``,
``authorize_abort``, ``visible_org``) decide which jobs, sites, users, privacy spends and certificates an org admin
or a lead may see or change.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from admin_api.db import Database
from admin_api.errors import AuditChainError, AuthenticationError, PermissionDeniedError
from admin_api.settings import Settings

__all__ = [
    "API_CLIENT",
    "EVENT_FORWARDER",
    "ROLE_SCOPES",
    "Principal",
    "PrincipalKind",
    "Role",
    "Scope",
    "authenticate",
    "authorize_abort",
    "can_read_job",
    "client_address",
    "current_principal",
    "require_scope",
    "visible_org",
]

logger = logging.getLogger(__name__)


class Scope(StrEnum):
    """A permission a route can require."""

    EVENTS_WRITE = "events:write"
    READ = "read"
    AUDIT_READ = "audit:read"
    REPORTS_READ = "reports:read"
    USERS_READ = "users:read"
    JOBS_SUBMIT = "jobs:submit"
    JOBS_ABORT = "jobs:abort"
    PRIVACY_READ = "privacy:read"
    CERTIFICATES_READ = "certificates:read"


class Role(StrEnum):
    """A consortium role: FLARE's four roles plus ``compliance_officer``, which exists only in the admin service."""

    PROJECT_ADMIN = "project_admin"
    ORG_ADMIN = "org_admin"
    LEAD = "lead"
    MEMBER = "member"
    COMPLIANCE_OFFICER = "compliance_officer"


ROLE_SCOPES: Mapping[Role, frozenset[Scope]] = {
    Role.PROJECT_ADMIN: frozenset(
        {
            Scope.READ,
            Scope.AUDIT_READ,
            Scope.REPORTS_READ,
            Scope.USERS_READ,
            Scope.JOBS_SUBMIT,
            Scope.JOBS_ABORT,
            Scope.PRIVACY_READ,
            Scope.CERTIFICATES_READ,
        }
    ),
    # Row checks narrow an org admin to its org's jobs, sites, users, privacy spends and certificates, and its
    # aborts to jobs its org submitted.
    Role.ORG_ADMIN: frozenset(
        {
            Scope.READ,
            Scope.REPORTS_READ,
            Scope.USERS_READ,
            Scope.JOBS_ABORT,
            Scope.PRIVACY_READ,
            Scope.CERTIFICATES_READ,
        }
    ),
    # A lead may abort only the jobs it submitted (a row check). It reads the privacy ledger, whose per-site epsilons
    # its job reports show anyway, but not certificates, which list the users it may not list.
    Role.LEAD: frozenset({Scope.READ, Scope.REPORTS_READ, Scope.JOBS_SUBMIT, Scope.JOBS_ABORT, Scope.PRIVACY_READ}),
    Role.MEMBER: frozenset({Scope.READ}),
    Role.COMPLIANCE_OFFICER: frozenset(
        {
            Scope.READ,
            Scope.AUDIT_READ,
            Scope.REPORTS_READ,
            Scope.USERS_READ,
            Scope.PRIVACY_READ,
            Scope.CERTIFICATES_READ,
        }
    ),
}
"""The role matrix: the scopes each role holds. Keep ``docs/roles.md`` in step with it."""


class PrincipalKind(StrEnum):
    """Kind of credential a principal authenticated with."""

    FORWARDER = "forwarder"
    SERVICE = "service"
    USER = "user"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: its name, role, org and the scopes granted to it.

    Attributes:
        name: User name from the consortium file, or ``event-forwarder`` / ``api-client`` for the configured tokens.
        scopes: What the caller may do.
        kind: How the caller authenticated.
        role: The caller's role; None for the event forwarder.
        org: The caller's org; None for the configured tokens.
        org_sites: Sites of the caller's org, from the consortium file; used to scope an org admin.
        token_id: Id of the user token presented; None for the configured tokens.
    """

    name: str
    scopes: frozenset[Scope]
    kind: PrincipalKind = PrincipalKind.SERVICE
    role: Role | None = None
    org: str | None = None
    org_sites: frozenset[str] = field(default_factory=frozenset)
    token_id: str | None = None


EVENT_FORWARDER = Principal(
    name="event-forwarder", scopes=frozenset({Scope.EVENTS_WRITE}), kind=PrincipalKind.FORWARDER
)
API_CLIENT = Principal(name="api-client", scopes=ROLE_SCOPES[Role.PROJECT_ADMIN], role=Role.PROJECT_ADMIN)
"""Principal of ``CONSORTIA_API_TOKEN``: a bootstrap service token with the ``project_admin`` role."""

_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="A user token from 'consortia users token NAME', CONSORTIA_API_TOKEN or CONSORTIA_EVENT_TOKEN",
)


def _matches(presented: bytes, expected: str | None) -> bool:
    if expected is None:
        # Compare against a dummy, so an unset token takes as long to reject as a wrong one.
        hmac.compare_digest(presented, presented)
        return False
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def _match_configured_token(settings: Settings, presented: bytes) -> Principal | None:
    api_token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    # Both comparisons always run, so the response time does not tell which token was close.
    is_event_token = _matches(presented, settings.event_token.get_secret_value())
    is_api_token = _matches(presented, api_token)
    if is_event_token:
        return EVENT_FORWARDER
    if is_api_token:
        return API_CLIENT
    return None


def _user_principal(database: Database, presented: str, site_orgs: Mapping[str, str]) -> Principal:
    # Imported here because the token service imports this module's Role.
    from admin_api.services.tokens import authenticate_user_token

    with database.session() as session:
        user, token = authenticate_user_token(session, presented, now=datetime.now(UTC))
        role = Role(user.role)
        return Principal(
            name=user.name,
            scopes=ROLE_SCOPES[role],
            kind=PrincipalKind.USER,
            role=role,
            org=user.org,
            org_sites=frozenset(site for site, org in site_orgs.items() if org == user.org),
            token_id=token.token_id,
        )


def authenticate(
    settings: Settings,
    credentials: HTTPAuthorizationCredentials | None,
    *,
    database: Database | None = None,
    site_orgs: Mapping[str, str] | None = None,
) -> Principal:
    """Map a bearer token to its principal.

    The configured tokens are compared in constant time. A user token is looked up by its SHA-256 digest, which
    leaks nothing useful through timing because the token carries 256 random bits.

    Args:
        settings: The service settings with the configured tokens.
        credentials: The presented bearer credentials, or None when the header is missing.
        database: Database holding user tokens; user tokens are rejected when None.
        site_orgs: Site name to org, from the consortium file.

    Raises:
        AuthenticationError: The token is missing, malformed, unknown, expired or revoked, or its user is gone.
    """
    if credentials is None:
        raise AuthenticationError("missing bearer token; send the header 'Authorization: Bearer <token>'")
    presented = credentials.credentials
    principal = _match_configured_token(settings, presented.encode("utf-8"))
    if principal is not None:
        return principal

    from admin_api.services.tokens import TOKEN_PREFIX

    if presented.startswith(TOKEN_PREFIX) and database is not None:
        return _user_principal(database, presented, site_orgs or {})
    if settings.api_token is None:
        raise AuthenticationError(
            "invalid bearer token; send a user token from 'consortia users token NAME' (the read API accepts no "
            "other token until CONSORTIA_API_TOKEN is set on the service)"
        )
    raise AuthenticationError(
        "invalid bearer token; send a user token from 'consortia users token NAME', or CONSORTIA_API_TOKEN or "
        "CONSORTIA_EVENT_TOKEN as configured"
    )


def _record_denial(request: Request, principal: Principal, scope: Scope) -> None:
    """Append an ``access.denied`` audit event, because FLARE does not log the commands it denies."""
    from admin_api.services.audit import append_audit_event

    database: Database = request.app.state.database
    try:
        with database.write_session() as session:
            append_audit_event(
                session,
                occurred_at=datetime.now(UTC),
                actor=principal.name,
                role=principal.role.value if principal.role is not None else None,
                action="access.denied",
                target=f"api:{request.method} {request.url.path}"[:255],
                details={"scope": scope.value, "source_address": client_address(request)},
            )
            session.commit()
    except (AuditChainError, SQLAlchemyError) as exc:
        logger.error("recording the denied request of %s failed: %s", principal.name, exc)


def client_address(request: Request) -> str | None:
    """Return the address the request came from.

    NOTE: this is the TCP peer. Behind a reverse proxy it is the proxy's address, because X-Forwarded-For is not
    trusted.
    """
    return request.client.host if request.client is not None else None


def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Principal:
    """Authenticate the request without requiring a scope; a dependency.

    Raises:
        AuthenticationError: No valid token.
    """
    settings: Settings = request.app.state.settings
    return authenticate(
        settings,
        credentials,
        database=getattr(request.app.state, "database", None),
        site_orgs=getattr(request.app.state, "site_orgs", {}),
    )


def require_scope(scope: Scope) -> Callable[..., Principal]:
    """Build a dependency that authenticates the request and requires ``scope``.

    A denied request of a known user is recorded as an ``access.denied`` audit event.

    Raises (from the dependency):
        AuthenticationError: No valid token.
        PermissionDeniedError: The principal lacks ``scope``.
    """

    def dependency(request: Request, principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if scope in principal.scopes:
            return principal
        if principal.kind == PrincipalKind.USER:
            _record_denial(request, principal, scope)
            raise PermissionDeniedError(
                f"user {principal.name} has role {principal.role} without the {scope.value!r} scope this route "
                "requires; ask a project admin for a role that grants it (see docs/roles.md)"
            )
        raise PermissionDeniedError(
            f"the {principal.name} token lacks the {scope.value!r} scope this route requires; "
            "use the token configured for this purpose"
        )

    return dependency


def visible_org(principal: Principal) -> str | None:
    """Return the org a principal's reads are limited to, or None when it reads across orgs.

    Only an org admin is limited: FLARE lets every role list every job, and an org admin runs its org's sites.
    """
    return principal.org if principal.role == Role.ORG_ADMIN else None


def can_read_job(
    principal: Principal, *, submitter_org: str | None, requested_by_org: str | None, sites: list[str]
) -> bool:
    """Return whether a principal may see a job.

    An org admin sees jobs submitted by its org (through FLARE or through this API) or deployed to its sites.
    """
    org = visible_org(principal)
    if org is None:
        return True
    return org in (submitter_org, requested_by_org) or bool(principal.org_sites & set(sites))


def authorize_abort(
    principal: Principal,
    *,
    job_id: str,
    submitter: str | None,
    submitter_org: str | None,
    requested_by: str | None,
    requested_by_org: str | None,
) -> None:
    """Decide whether a principal may abort a job, as FLARE's default authorization policy does.

    FLARE 2.9's default ``authorization.json`` grants ``manage_job`` to a project admin for any job, to an org admin
    for jobs whose submitter is in its org (``o:submitter``), and to a lead for its own jobs (``n:submitter``).
    Jobs submitted through this API are submitted by the service identity, so the requester is treated as the submitter.

    Raises:
        PermissionDeniedError: The principal may not abort this job; the message names the rule.
    """
    if Scope.JOBS_ABORT not in principal.scopes:
        raise PermissionDeniedError(f"{principal.name} may not abort jobs; ask a project admin")
    if principal.role == Role.PROJECT_ADMIN:
        return
    if principal.role == Role.LEAD and principal.name in (submitter, requested_by):
        return
    if principal.role == Role.ORG_ADMIN and principal.org in (submitter_org, requested_by_org):
        return
    rule = "its own jobs" if principal.role == Role.LEAD else f"jobs submitted by org {principal.org}"
    raise PermissionDeniedError(
        f"{principal.name} ({principal.role}) may abort only {rule}, and job {job_id!r} was submitted by "
        f"{requested_by or submitter or 'an unknown user'}; ask that user, their org admin or a project admin"
    )
