"""ORM models of the admin service. Importing this package registers every table on ``Base.metadata``."""

from admin_api.models.audit import AuditEvent
from admin_api.models.base import Base, UtcDateTime
from admin_api.models.event import IngestedEvent
from admin_api.models.job import Contribution, Job, JobStatusTransition, RoundMetrics
from admin_api.models.site import Site, SiteStatus

__all__ = [
    "AuditEvent",
    "Base",
    "Contribution",
    "IngestedEvent",
    "Job",
    "JobStatusTransition",
    "RoundMetrics",
    "Site",
    "SiteStatus",
    "UtcDateTime",
]
