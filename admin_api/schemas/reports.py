"""Read schemas of period reports and of the signature statements that sign every report."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from admin_api.schemas.audit import (
    CHAIN_EXAMPLE,
    HASH_EXAMPLE,
    JOB_REPORT_EXAMPLE,
    ChainVerificationPublic,
    JobReportPublic,
)
from admin_api.schemas.jobs import JOB_ID_EXAMPLE

__all__ = [
    "PeriodJobSummaryPublic",
    "PeriodReportPublic",
    "PrivacySpendPublic",
    "SignatureStatementPublic",
    "SignedJobReportPublic",
    "SignedPeriodReportPublic",
]

_KEY_ID_EXAMPLE = "5e8d1c7a2b9f4e6d0c3a8b1f7e2d9c4a6b0f3e8d1c5a7b2e9f4d6c0a3b8e1f7d"
_SIGNATURE_EXAMPLE: dict[str, Any] = {
    "version": 1,
    "algorithm": "Ed25519",
    "key_id": _KEY_ID_EXAMPLE,
    "content_type": "text/csv",
    "file_name": f"job-{JOB_ID_EXAMPLE}-report.csv",
    "sha256": "b7a3c9e1d5f2048a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a",
    "chain_head_seq": 42,
    "chain_head_hash": HASH_EXAMPLE,
    "signed_at": "2026-12-04T19:14:21.000000Z",
    "signature": "bW9jayBzaWduYXR1cmUgb2YgNjQgYnl0ZXMgZm9yIHRoZSBleGFtcGxl",
}
_PRIVACY_SPEND_EXAMPLE: dict[str, Any] = {
    "seq": 57,
    "occurred_at": "2026-12-04T18:03:02.000000Z",
    "job_id": JOB_ID_EXAMPLE,
    "site": "hospital-a",
    "round": 2,
    "epsilon": 1.8,
    "delta": 1e-05,
    "mechanism": "dp-fedavg",
    "settings": {"noise_multiplier": 1.1, "max_update_norm": 1.0},
}
_PERIOD_JOB_EXAMPLE: dict[str, Any] = {
    "job_id": JOB_ID_EXAMPLE,
    "name": "fedavg_clinical",
    "submitter": "lead@hospital-a.org",
    "status": "FINISHED:COMPLETED",
    "submitted_at": "2026-12-04T18:02:11.000000Z",
    "finished_at": "2026-12-04T18:03:40.000000Z",
    "num_rounds": 5,
    "sites": ["hospital-a", "hospital-b"],
    "num_accepted": 10,
    "num_rejected": 0,
    "final_global_metrics": {"loss": 0.41, "roc_auc": 0.78},
}
_PERIOD_REPORT_EXAMPLE: dict[str, Any] = {
    "report_version": 1,
    "kind": "period",
    "generated_at": "2026-12-08T09:00:00.000000Z",
    "start": "2026-12-01T00:00:00Z",
    "end": "2026-12-08T00:00:00Z",
    "jobs": [_PERIOD_JOB_EXAMPLE],
    "num_audit_events": 42,
    "first_seq": 1,
    "last_seq": 42,
    "audit_event_counts": {"job.submitted": 1, "round.completed": 6, "contribution.accepted": 10, "privacy.spent": 10},
    "privacy": [_PRIVACY_SPEND_EXAMPLE],
    "chain": CHAIN_EXAMPLE,
}


class SignatureStatementPublic(BaseModel):
    """Ed25519 signature by the service key over the canonical JSON of every other field of this object."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SIGNATURE_EXAMPLE]})

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

    model_config = ConfigDict(json_schema_extra={"examples": [_PRIVACY_SPEND_EXAMPLE]})

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

    model_config = ConfigDict(json_schema_extra={"examples": [_PERIOD_JOB_EXAMPLE]})

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

    model_config = ConfigDict(json_schema_extra={"examples": [_PERIOD_REPORT_EXAMPLE]})

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

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **JOB_REPORT_EXAMPLE,
                    "signature": {
                        **_SIGNATURE_EXAMPLE,
                        "content_type": "application/json",
                        "file_name": f"job-{JOB_ID_EXAMPLE}-report.json",
                    },
                }
            ]
        }
    )

    signature: SignatureStatementPublic


class SignedPeriodReportPublic(PeriodReportPublic):
    """A period report with its embedded signature statement; ``signature.sha256`` covers every other field."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PERIOD_REPORT_EXAMPLE,
                    "signature": {
                        **_SIGNATURE_EXAMPLE,
                        "content_type": "application/json",
                        "file_name": "period-20261201T000000Z-20261208T000000Z-report.json",
                    },
                }
            ]
        }
    )

    signature: SignatureStatementPublic
