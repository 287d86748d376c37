"""ORM models of the admin service. Importing this package registers every table on ``Base.metadata``."""

from admin_api.models.audit import AuditEvent
from admin_api.models.base import Base, UtcDateTime
from admin_api.models.event import IngestedEvent
from admin_api.models.job import Contribution, Job, JobStatusTransition, RoundMetrics
from admin_api.models.site import Site, SiteStatus
from admin_api.models.user import ApiToken, LogCursor, User

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "Contribution",
    "IngestedEvent",
    "Job",
    "JobStatusTransition",
    "LogCursor",
    "RoundMetrics",
    "Site",
    "SiteStatus",
    "User",
    "UtcDateTime",
]
