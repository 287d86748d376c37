"""Exceptions raised by the admin service.

Tree::

    AdminApiError                  base of every error raised in admin_api
    ├── ConfigurationError         a setting is missing or invalid at start-up
    ├── AuthenticationError        a request carries no bearer token or an unknown one
    ├── PermissionDeniedError      a known token lacks the scope a route requires
    ├── NotFoundError              a requested record does not exist
    │   ├── JobNotFoundError       no job with the requested FLARE job id
    │   ├── UserNotFoundError      no user of that name in the consortium file
    │   └── TokenNotFoundError     no API token with that id
    ├── EventConflictError         an event_id was reused with different content
    ├── JobStateConflictError      the job's status does not allow the requested action
    ├── InvalidJobRequestError     a job submission names an unknown job or an invalid parameter
    ├── FlareActionError           FLARE rejected or failed a submit or abort
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
    "FlareActionError",
    "FlareSourceError",
    "InvalidJobRequestError",
    "JobNotFoundError",
    "JobStateConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "TokenNotFoundError",
    "UserNotFoundError",
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


class UserNotFoundError(NotFoundError):
    """No user of the requested name was synced from the consortium file.

    Attributes:
        name: The requested user name.
    """

    def __init__(self, name: str) -> None:
        super().__init__(
            f"user {name!r} not found; add the user to the workspace's consortium.yml, or list users with "
            "'consortia users list'"
        )
        self.name = name


class TokenNotFoundError(NotFoundError):
    """No API token with the requested id exists.

    Attributes:
        token_id: The requested token id.
    """

    def __init__(self, token_id: str) -> None:
        super().__init__(f"token {token_id!r} not found; list token ids with 'consortia users list'")
        self.token_id = token_id


class JobStateConflictError(AdminApiError):
    """The job's recorded status does not allow the requested action, for example aborting a finished job."""


class InvalidJobRequestError(AdminApiError):
    """A job submission names an unknown job folder or a parameter the job cannot take."""


class FlareActionError(AdminApiError):
    """FLARE rejected or failed a job submission or abort made on behalf of a user."""


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
