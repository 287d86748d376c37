"""Read schemas of period reports and of the signature statements that sign every report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from admin_api.schemas.audit import ChainVerificationPublic, JobReportPublic

__all__ = [
    "PeriodJobSummaryPublic",
    "PeriodReportPublic",
    "PrivacySpendPublic",
    "SignatureStatementPublic",
    "SignedJobReportPublic",
    "SignedPeriodReportPublic",
]

_HEX_EXAMPLE = "9f2c6e0b5d41a7c3e8f1029b4d6a7c8e9f0a1b2c3d4e5f60718293a4b5c6d7e8"


class SignatureStatementPublic(BaseModel):
    """Ed25519 signature by the service key over the canonical JSON of every other field of this object."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 1,
                    "algorithm": "Ed25519",
                    "key_id": _HEX_EXAMPLE,
                    "content_type": "text/csv",
                    "file_name": "job-4f1c-report.csv",
                    "sha256": _HEX_EXAMPLE,
                    "chain_head_seq": 42,
                    "chain_head_hash": _HEX_EXAMPLE,
                    "signed_at": "2026-12-04T19:14:21.000000Z",
                    "signature": "bW9jayBzaWduYXR1cmUgb2YgNjQgYnl0ZXMgZm9yIHRoZSBleGFtcGxl",
                }
            ]
        }
    )

    version: int
    algorithm: Literal["Ed25519"]
    key_id: str = Field(description="SHA-256 hex of the DER public key that signed.")
    content_type: str
    file_name: str
    sha256: str = Field(description="SHA-256 hex of the file bytes, or of the canonical JSON of a JSON report.")
    chain_head_seq: int | None
    chain_head_hash: str | None
    signed_at: str
    signature: str = Field(description="Base64 Ed25519 signature.")


class PrivacySpendPublic(BaseModel):
    """One recorded differential-privacy spend (a ``privacy.spent`` audit event)."""

    seq: int = Field(description="seq of the audit event that records the spend.")
    occurred_at: datetime
    job_id: str | None
    site: str | None = Field(description="Site that spent the budget, or None for a server-side mechanism.")
    round: int | None
    epsilon: float | None
    delta: float | None
    mechanism: str | None
    settings: dict[str, Any] = Field(description="Other payload values, such as noise_multiplier and sample_rate.")


class PeriodJobSummaryPublic(BaseModel):
    """A job active during the period, with its contribution counts and last global metrics."""

    job_id: str
    name: str | None
    submitter: str | None
    status: str
    submitted_at: datetime | None
    finished_at: datetime | None
    num_rounds: int | None
    sites: list[str]
    num_accepted: int = Field(description="Contributions the server accepted, over all rounds.")
    num_rejected: int = Field(description="Contributions the server rejected, over all rounds.")
    final_global_metrics: dict[str, Any] | None = Field(description="Global metrics of the last reported round.")


class PeriodReportPublic(BaseModel):
    """Activity between ``start`` (inclusive) and ``end`` (exclusive).

    A job is listed when its life (submission, or first record, up to finishing) overlaps the period. Audit counts
    cover the audit events whose ``occurred_at`` lies in the period. ``chain`` verifies the whole chain at generation
    time and pins its head.
    """

    report_version: int = 1
    kind: Literal["period"] = "period"
    generated_at: datetime
    start: datetime
    end: datetime
    jobs: list[PeriodJobSummaryPublic]
    num_audit_events: int
    first_seq: int | None = Field(description="Lowest seq of an audit event in the period.")
    last_seq: int | None = Field(description="Highest seq of an audit event in the period.")
    audit_event_counts: dict[str, int] = Field(description="Audit action to the number of its events in the period.")
    privacy: list[PrivacySpendPublic]
    chain: ChainVerificationPublic


class SignedJobReportPublic(JobReportPublic):
    """A job report with its embedded signature statement; ``signature.sha256`` covers every other field."""

    signature: SignatureStatementPublic


class SignedPeriodReportPublic(PeriodReportPublic):
    """A period report with its embedded signature statement; ``signature.sha256`` covers every other field."""

    signature: SignatureStatementPublic
