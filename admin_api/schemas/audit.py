"""Read schemas of audit events, chain verification and job reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from admin_api.schemas.jobs import JobDetailPublic
from admin_api.schemas.sites import SitePublic

__all__ = ["AuditEventPublic", "AuditEventsPublic", "ChainVerificationPublic", "JobReportPublic"]


class AuditEventPublic(BaseModel):
    """One audit event, with the hashes that link it into the chain."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    occurred_at: datetime
    actor: str
    role: str | None
    action: str
    target: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditEventsPublic(BaseModel):
    """One page of audit events; ``count`` is the number matching the filters on all pages."""

    data: list[AuditEventPublic]
    count: int
    limit: int
    offset: int


class ChainVerificationPublic(BaseModel):
    """Result of walking the audit chain."""

    model_config = ConfigDict(from_attributes=True)

    ok: bool
    num_events: int = Field(description="Events checked, up to and including the first bad one.")
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = Field(description="seq expected at the first bad position; None when ok.")
    reason: str | None


class JobReportPublic(BaseModel):
    """Audit report of one job.

    ``chain`` is the verification of the whole audit chain when the report was generated. Its ``head_hash`` pins
    the chain, so a later chain whose events up to ``head_seq`` hash differently shows tampering.
    """

    report_version: int = 1
    generated_at: datetime
    job: JobDetailPublic
    sites: list[SitePublic]
    audit_events: list[AuditEventPublic]
    chain: ChainVerificationPublic
