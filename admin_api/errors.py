"""Exceptions raised by the admin service.

Tree::

    AdminApiError                  base of every error raised in admin_api
    ├── ConfigurationError         a setting is missing or invalid at start-up
    ├── AuthenticationError        a request carries no bearer token or an unknown one
    ├── PermissionDeniedError      a known token lacks the scope a route requires
    ├── NotFoundError              a requested record does not exist
    │   └── JobNotFoundError       no job with the requested FLARE job id
    ├── EventConflictError         an event_id was reused with different content
    ├── AuditChainError            an audit event cannot be appended (invalid field)
    └── FlareSourceError           the reconciler could not read FLARE's job list

Services raise these; only ``admin_api.api.problems`` maps them to HTTP status codes.
"""

from __future__ import annotations

__all__ = [
    "AdminApiError",
    "AuditChainError",
    "AuthenticationError",
    "ConfigurationError",
    "EventConflictError",
    "FlareSourceError",
    "JobNotFoundError",
    "NotFoundError",
    "PermissionDeniedError",
]


class AdminApiError(Exception):
    """Base class of every error raised by the admin service."""


class ConfigurationError(AdminApiError):
    """A setting is missing or invalid, so the service cannot start."""


class AuthenticationError(AdminApiError):
    """A request carries no bearer token, a malformed one or one the service does not know."""


class PermissionDeniedError(AdminApiError):
    """A request's token is valid but lacks the scope the route requires."""


class NotFoundError(AdminApiError):
    """A requested record does not exist."""


class JobNotFoundError(NotFoundError):
    """No job with the requested FLARE job id is recorded.

    Attributes:
        job_id: The FLARE job id that was requested.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"job {job_id!r} not found; list recorded jobs with GET /api/v1/jobs, "
            "or wait for the reconciler if the job was submitted moments ago"
        )
        self.job_id = job_id


class EventConflictError(AdminApiError):
    """An event_id was already ingested with different content.

    Attributes:
        event_id: The reused event id.
    """

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"event_id {event_id} was already ingested with different content; "
            "a retry must resend the same event unchanged, and a new event needs a new UUID"
        )
        self.event_id = event_id


class AuditChainError(AdminApiError):
    """An audit event cannot be appended because a field is invalid."""


class FlareSourceError(AdminApiError):
    """The reconciler could not read the job list from the FLARE server."""
