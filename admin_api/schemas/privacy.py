"""Read schemas of the privacy ledger and of the epsilon each site has spent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PrivacyLedgerEntryPublic", "PrivacyLedgerPublic", "SiteJobPrivacyPublic", "SitePrivacyPublic",
           "SitesPrivacyPublic"]  # fmt: skip

_JOB_ID_EXAMPLE = "4f1c2a9e-8b3d-4e6f-9a7c-1d2e3f4a5b6c"
_ENTRY_EXAMPLE: dict[str, Any] = {
    "job_id": _JOB_ID_EXAMPLE,
    "site": "hospital-a",
    "round": 2,
    "kind": "sample_level",
    "mechanism": "dp-sgd",
    "epsilon": 1.9,
    "delta": 1e-05,
    "epsilon_budget": None,
    "epsilon_remaining": None,
    "recorded_at": "2026-12-04T18:03:02.000000Z",
    "audit_seq": 57,
}
_SITE_JOB_EXAMPLE: dict[str, Any] = {
    "job_id": _JOB_ID_EXAMPLE,
    "site": "hospital-a",
    "epsilon": 1.9,
    "delta": 1e-05,
    "sample_level_epsilon": 1.9,
    "client_level_epsilon": None,
    "last_round": 2,
    "last_recorded_at": "2026-12-04T18:03:02.000000Z",
}
_SITE_EXAMPLE: dict[str, Any] = {
    "site": "hospital-a",
    "org": "hospital_a",
    "epsilon_spent": 1.9,
    "delta_spent": 1e-05,
    "num_jobs": 1,
    "epsilon_budget": None,
    "epsilon_remaining": None,
    "jobs": [_SITE_JOB_EXAMPLE],
}


class PrivacyLedgerEntryPublic(BaseModel):
    """One round's privacy spend, as the FLARE side reported it in a ``privacy.spent`` event."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ENTRY_EXAMPLE]})

    job_id: str
    site: str | None = Field(description="Site that spent; None for a client-level spend, which covers every site.")
    round: int | None
    kind: str = Field(description="sample_level (DP-SGD at a site) or client_level (DP-FedAvg on the server).")
    mechanism: str | None = Field(description="Mechanism as sent, for example dp-sgd or dp-fedavg.")
    epsilon: float = Field(description="The job's cumulative epsilon after this round, not the round's increment.")
    delta: float = Field(description="The delta the epsilon is stated at.")
    epsilon_budget: float | None = Field(description="The site's total epsilon budget, when the event gave it.")
    epsilon_remaining: float | None = Field(description="The site's remaining epsilon, when the event gave it.")
    recorded_at: datetime = Field(description="When the FLARE side recorded the spend (the event's occurred_at).")
    audit_seq: int = Field(description="seq of the audit event the entry came from.")


class PrivacyLedgerPublic(BaseModel):
    """One page of the privacy ledger, newest first; ``count`` is the number matching the filters on all pages."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"data": [_ENTRY_EXAMPLE], "count": 1, "limit": 50, "offset": 0}]}
    )

    data: list[PrivacyLedgerEntryPublic]
    count: int
    limit: int
    offset: int


class SiteJobPrivacyPublic(BaseModel):
    """The epsilon one job has spent at one site: its latest cumulative epsilon of each kind, added up."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SITE_JOB_EXAMPLE]})

    job_id: str
    site: str
    epsilon: float = Field(description="sample_level_epsilon + client_level_epsilon (sequential composition).")
    delta: float = Field(description="Sum of the deltas the two epsilons are stated at.")
    sample_level_epsilon: float | None = Field(description="Cumulative DP-SGD epsilon of the job at this site.")
    client_level_epsilon: float | None = Field(description="Cumulative DP-FedAvg epsilon of the job.")
    last_round: int | None
    last_recorded_at: datetime


class SitePrivacyPublic(BaseModel):
    """The epsilon one site has spent across jobs, under basic composition (epsilons and deltas add up)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SITE_EXAMPLE]})

    site: str
    org: str | None
    epsilon_spent: float = Field(description="Sum over jobs of each job's epsilon at this site.")
    delta_spent: float = Field(description="Sum over jobs of each job's delta at this site.")
    num_jobs: int
    epsilon_budget: float | None = Field(description="The budget the site's latest spend reported, if any.")
    epsilon_remaining: float | None = Field(description="The remaining epsilon the site's latest spend reported.")
    jobs: list[SiteJobPrivacyPublic]


class SitesPrivacyPublic(BaseModel):
    """Every site with a recorded privacy spend, by name."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"data": [_SITE_EXAMPLE], "count": 1}]})

    data: list[SitePrivacyPublic]
    count: int
