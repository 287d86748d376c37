"""ORM models of the admin service. Importing this package registers every table on ``Base.metadata``."""

from admin_api.models.audit import AuditCheckpoint, AuditEvent
from admin_api.models.base import Base, UtcDateTime
from admin_api.models.certificate import Certificate, CertificateKind
from admin_api.models.event import IngestedEvent
from admin_api.models.job import Contribution, Job, JobStatusTransition, RoundMetrics
from admin_api.models.privacy import PrivacyKind, PrivacySpend
from admin_api.models.site import Site, SiteStatus
from admin_api.models.user import ApiToken, LogCursor, User

__all__ = [
    "ApiToken",
    "AuditCheckpoint",
    "AuditEvent",
    "Base",
    "Certificate",
    "CertificateKind",
    "Contribution",
    "IngestedEvent",
    "Job",
    "JobStatusTransition",
    "LogCursor",
    "PrivacyKind",
    "PrivacySpend",
    "RoundMetrics",
    "Site",
    "SiteStatus",
    "User",
    "UtcDateTime",
]
