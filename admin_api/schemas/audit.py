"""Read schemas of audit events, chain verification and job reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from admin_api.schemas.jobs import JOB_DETAIL_EXAMPLE, JOB_ID_EXAMPLE, JobDetailPublic
from admin_api.schemas.privacy import SiteJobPrivacyPublic
from admin_api.schemas.sites import SITE_EXAMPLE, SitePublic

__all__ = ["AuditEventPublic", "AuditEventsPublic", "ChainVerificationPublic", "JobReportPublic"]

HASH_EXAMPLE = "9f2c6e0b5d41a7c3e8f1029b4d6a7c8e9f0a1b2c3d4e5f60718293a4b5c6d7e8"
AUDIT_EVENT_EXAMPLE: dict[str, Any] = {
    "seq": 42,
    "occurred_at": "2026-12-04T18:02:11.000000Z",
    "actor": "lead@hospital-a.org",
    "role": "lead",
    "action": "job.submitted",
    "target": f"job:{JOB_ID_EXAMPLE}",
    "details": {
        "name": "fedavg_clinical",
        "submitter_org": "hospital_a",
        "event_id": "c3d1e2f4-5a6b-4c7d-8e9f-0a1b2c3d4e5f",
    },
    "prev_hash": "4b8e1f0c9d2a7e6b5c3f1a0d9e8b7c6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c",
    "hash": HASH_EXAMPLE,
}
CHAIN_EXAMPLE: dict[str, Any] = {
    "ok": True,
    "num_events": 42,
    "head_seq": 42,
    "head_hash": HASH_EXAMPLE,
    "first_bad_seq": None,
    "reason": None,
}
_BROKEN_CHAIN_EXAMPLE: dict[str, Any] = {
    "ok": False,
    "num_events": 17,
    "head_seq": 18,
    "head_hash": "1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c",
    "first_bad_seq": 17,
    "reason": "expected seq 17 but found seq 18: an event is missing or out of order",
}
JOB_REPORT_EXAMPLE: dict[str, Any] = {
    "report_version": 1,
    "generated_at": "2026-12-04T19:14:21.000000Z",
    "job": JOB_DETAIL_EXAMPLE,
    "sites": [SITE_EXAMPLE],
    "audit_events": [AUDIT_EVENT_EXAMPLE],
    "chain": CHAIN_EXAMPLE,
}


class AuditEventPublic(BaseModel):
    """One audit event, with the hashes that link it into the chain."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [AUDIT_EVENT_EXAMPLE]})

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

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [AUDIT_EVENT_EXAMPLE], "count": 1, "limit": 100, "offset": 0}]}
    )

    data: list[AuditEventPublic]
    count: int
    limit: int
    offset: int


class ChainVerificationPublic(BaseModel):
    """Result of walking the audit chain."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [CHAIN_EXAMPLE, _BROKEN_CHAIN_EXAMPLE]}
    )

    ok: bool
    num_events: int = Field(description="Events checked, up to and including the first bad one.")
    head_seq: int | None
    head_hash: str | None
    first_bad_seq: int | None = Field(description="seq expected at the first bad position; None when ok.")
    reason: str | None
    verified_from_seq: int | None = Field(
        default=None,
        description="seq of the verified checkpoint the walk started at; None when it walked from seq 1.",
    )


class JobReportPublic(BaseModel):
    """Audit report of one job.

    ``chain`` is the verification of the audit chain when the report was generated, from the newest verified
    checkpoint (``verified_from_seq``) or from seq 1. Its ``head_hash`` pins the chain, so a later chain whose events
    up to ``head_seq`` hash differently shows tampering.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [JOB_REPORT_EXAMPLE]})

    report_version: int = 1
    generated_at: datetime
    job: JobDetailPublic
    sites: list[SitePublic]
    privacy_by_site: list[SiteJobPrivacyPublic] = Field(
        default_factory=list, description="Epsilon the job spent at each site, from the privacy ledger."
    )
    audit_events: list[AuditEventPublic]
    chain: ChainVerificationPublic
