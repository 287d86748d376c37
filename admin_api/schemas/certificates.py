"""Read schemas of participant certificates and their expiry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CertificatePublic", "CertificatesPublic"]

_CERTIFICATE_EXAMPLE: dict[str, Any] = {
    "participant": "hospital-a",
    "org": "hospital_a",
    "kind": "site",
    "role": "site",
    "fingerprint": "3A:9F:...:C4",
    "issued_at": "2026-12-04T18:00:00.000000Z",
    "issued_by": "admin@hq.org",
    "not_after": "2027-01-01T18:00:00.000000Z",
    "days_to_expiry": 27,
    "warning": True,
    "revoked_at": None,
    "revocation_reason": None,
}


class CertificatePublic(BaseModel):
    """A participant's current certificate: the one in its most recently issued kit."""

    model_config = ConfigDict(json_schema_extra={"examples": [_CERTIFICATE_EXAMPLE]})

    participant: str
    org: str | None
    kind: str = Field(description="site, user or server.")
    role: str = Field(description="Kit role as issued: site, server, lead, project_admin, ...")
    fingerprint: str = Field(description="SHA-256 fingerprint of the certificate, as the kit manifest gives it.")
    issued_at: datetime
    issued_by: str | None
    not_after: datetime = Field(description="End of the certificate's validity.")
    days_to_expiry: int = Field(description="Whole days until not_after; negative once the certificate expired.")
    warning: bool = Field(description="True when not revoked and days_to_expiry is below the warning threshold.")
    revoked_at: datetime | None
    revocation_reason: str | None


class CertificatesPublic(BaseModel):
    """Each participant's current certificate, soonest expiry first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"data": [_CERTIFICATE_EXAMPLE], "count": 1, "warn_days": 30, "num_warning": 1}]
        }
    )

    data: list[CertificatePublic]
    count: int
    warn_days: int = Field(description="Warning threshold in days (CONSORTIA_CERT_WARN_DAYS).")
    num_warning: int = Field(description="Certificates listed with warning set.")
