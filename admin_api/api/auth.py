"""Bearer-token authentication and scope checks: the one place where access to routes is decided.

Each token maps to a principal with scopes, and a route declares the scope it needs. Users with roles (project_admin,
org_admin, lead, member, compliance_officer) will map to scopes here too, without changes to the routes.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from admin_api.errors import AuthenticationError, PermissionDeniedError
from admin_api.settings import Settings

__all__ = ["Principal", "Scope", "authenticate", "require_scope"]


class Scope(StrEnum):
    """A permission a route can require."""

    EVENTS_WRITE = "events:write"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request and the scopes granted to it."""

    name: str
    scopes: frozenset[Scope]


EVENT_FORWARDER = Principal(name="event-forwarder", scopes=frozenset({Scope.EVENTS_WRITE}))
API_CLIENT = Principal(name="api-client", scopes=frozenset({Scope.READ}))

_bearer_scheme = HTTPBearer(auto_error=False, description="CONSORTIA_EVENT_TOKEN or CONSORTIA_API_TOKEN")


def _matches(presented: bytes, expected: str | None) -> bool:
    if expected is None:
        # Compare against a dummy, so an unset token takes as long to reject as a wrong one.
        hmac.compare_digest(presented, presented)
        return False
    return hmac.compare_digest(presented, expected.encode("utf-8"))


def authenticate(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> Principal:
    """Map a bearer token to its principal with constant-time comparisons.

    Raises:
        AuthenticationError: The token is missing or matches no configured token.
    """
    if credentials is None:
        raise AuthenticationError("missing bearer token; send the header 'Authorization: Bearer <token>'")
    presented = credentials.credentials.encode("utf-8")
    api_token = settings.api_token.get_secret_value() if settings.api_token is not None else None
    # Both comparisons always run, so the response time does not tell which token was close.
    is_event_token = _matches(presented, settings.event_token.get_secret_value())
    is_api_token = _matches(presented, api_token)
    if is_event_token:
        return EVENT_FORWARDER
    if is_api_token:
        return API_CLIENT
    if api_token is None:
        raise AuthenticationError(
            "invalid bearer token; the read API is disabled until CONSORTIA_API_TOKEN is set on the service"
        )
    raise AuthenticationError("invalid bearer token; send CONSORTIA_API_TOKEN or CONSORTIA_EVENT_TOKEN as configured")


def require_scope(scope: Scope) -> Callable[..., Principal]:
    """Build a dependency that authenticates the request and requires ``scope``.

    Raises (from the dependency):
        AuthenticationError: No valid token.
        PermissionDeniedError: The token's principal lacks ``scope``.
    """

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
    ) -> Principal:
        settings: Settings = request.app.state.settings
        principal = authenticate(settings, credentials)
        if scope not in principal.scopes:
            raise PermissionDeniedError(
                f"the {principal.name} token lacks the {scope.value!r} scope this route requires; "
                "use the token configured for this purpose"
            )
        return principal

    return dependency
