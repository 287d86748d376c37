"""The privacy ledger: differential-privacy spends from ``privacy.spent`` events, and the epsilon each site spent.

What the FLARE side sends (``app_custom/flare/privacy.py``):

- DP-SGD at the sites (mechanism ``dp-sgd``, kind ``sample_level``): one event per site per round, with the site, the
  job's cumulative epsilon at that site so far (the site's RDP accountant, ``dp_site.py``) and its delta.
- DP-FedAvg on the server (mechanism ``dp-fedavg``, kind ``client_level``): one event per round without a site,
  with the job's cumulative client-level epsilon so far. It protects every site of the job.

Both report the cumulative epsilon of the job after the round, not the round's increment, so adding up the rounds
would count the first rounds again and again. How the totals are formed:

1. a job's epsilon of one kind at one site is the largest (the latest) cumulative epsilon recorded for it;
2. a job that used both kinds at a site spent their sum there (sequential composition; a client-level guarantee
   also bounds each record of the site);
3. a site's total is the sum over its jobs of each job's epsilon, and likewise of the deltas: basic composition, the
   rule the site's own budget applies (``app_custom/core/privacy/budget.py``).

A client-level spend is counted at every site the job lists when the totals are read, so a site that the job's
events name later is still charged. An event whose mechanism is missing or unknown counts as sample-level when it
names a site and as client-level when not. ``epsilon_budget`` and ``epsilon_remaining`` are read from the payload
when the event carries them as numbers; the FLARE side does not send them yet.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, cast, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from admin_api.models import Job, PrivacyKind, PrivacySpend, Site
from admin_api.schemas.events import PrivacySpentEvent
from admin_api.schemas.privacy import (
    PrivacyLedgerEntryPublic,
    SiteJobPrivacyPublic,
    SitePrivacyPublic,
)
from admin_api.services.audit import next_audit_seq
from admin_api.services.jobs import IngestRows

__all__ = [
    "MECHANISM_KINDS",
    "job_privacy_by_site",
    "list_privacy_ledger",
    "org_site_names",
    "record_privacy_spend",
    "site_privacy_totals",
]

MECHANISM_KINDS = {"dp-sgd": PrivacyKind.SAMPLE_LEVEL, "dp-fedavg": PrivacyKind.CLIENT_LEVEL}
"""Mechanism names the FLARE side sends, to the kind of guarantee they give."""
_MAX_MECHANISM_LENGTH = 64


def _extra_number(extras: dict[str, Any], key: str) -> float | None:
    """Return a payload field that is a finite number >= 0 as a float, else None (the audit event keeps it as sent)."""
    value = extras.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond the float range
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _total(values: Iterable[float]) -> float:
    """Return the exact sum of ``values``, or the largest float when it overflows (JSON has no infinity).

    Each epsilon is finite, but a sum of huge ones can exceed the float range. Reporting the largest float keeps the
    total an upper bound instead of failing the request.
    """
    try:
        total = math.fsum(values)
    except OverflowError:
        return sys.float_info.max
    return total if math.isfinite(total) else sys.float_info.max


def _matches(column: InstrumentedAttribute[Any], value: Any) -> ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _spend_key(spend: PrivacySpend) -> tuple[str, str | None]:
    return (spend.kind, spend.site)


def record_privacy_spend(
    session: Session, event: PrivacySpentEvent, job: Job, *, rows: IngestRows | None = None
) -> dict[str, Any]:
    """Add the event's spend to the ledger inside the ingestion transaction; return the effects for the audit event.

    One row per (job, round, site, kind), and client-level rows name no site. A replay with the same or smaller
    epsilon and delta changes nothing. A larger epsilon or delta replaces the row's values with the larger of each,
    so the ledger never under-counts. Runs under the audit chain lock, which
    also makes the lookup of an existing row race-free. With ``rows``, the row is looked up through that cache and
    the audit seq is taken from its ``audit_seq`` when set.
    """
    extras = event.payload.model_extra or {}
    mechanism = extras.get("mechanism")
    if not isinstance(mechanism, str) or not 0 < len(mechanism) <= _MAX_MECHANISM_LENGTH:
        mechanism = None
    kind = MECHANISM_KINDS.get(mechanism or "") or (
        PrivacyKind.SAMPLE_LEVEL if event.site is not None else PrivacyKind.CLIENT_LEVEL
    )
    # A client-level spend covers every site of the job, so its row names no site even when the event does.
    site = None if kind == PrivacyKind.CLIENT_LEVEL else event.site
    values = {
        "mechanism": mechanism,
        "epsilon": event.payload.epsilon,
        "delta": event.payload.delta,
        "epsilon_budget": _extra_number(extras, "epsilon_budget"),
        "epsilon_remaining": _extra_number(extras, "epsilon_remaining"),
        "recorded_at": event.occurred_at,
        "audit_seq": next_audit_seq(session) if rows is None or rows.audit_seq is None else rows.audit_seq,
    }
    statement = select(PrivacySpend).where(
        PrivacySpend.job_pk == job.id,
        PrivacySpend.kind == kind.value,
        _matches(PrivacySpend.site, site),
        _matches(PrivacySpend.round, event.round),
    )
    key = (kind.value, site)
    if rows is None:
        existing = session.scalar(statement)
    else:
        existing = rows.round_row(session, PrivacySpend, job, event.round, key, _spend_key)
    if existing is None:
        spend = PrivacySpend(job_pk=job.id, site=site, round=event.round, kind=kind.value, **values)
        session.add(spend)
        if rows is not None:
            rows.add_round_row(PrivacySpend, job, event.round, key, spend)
        outcome = "recorded"
    elif event.payload.epsilon > existing.epsilon or event.payload.delta > existing.delta:
        values["epsilon"] = max(event.payload.epsilon, existing.epsilon)
        values["delta"] = max(event.payload.delta, existing.delta)
        for name, value in values.items():
            setattr(existing, name, value)
        outcome = "replaced"
    else:
        outcome = "unchanged"
    return {"kind": kind.value, "ledger": outcome}


def org_site_names(session: Session, org: str, org_sites: Collection[str]) -> set[str]:
    """Return the sites of ``org``: those the consortium file gives it and those an event reported it for."""
    return set(org_sites) | set(session.scalars(select(Site.name).where(Site.org == org)))


def _job_lists_any(sites: Collection[str]) -> ColumnElement[bool]:
    # ``jobs.sites`` is a JSON list, matched as text as in services.jobs.org_jobs_condition; names hold no quotes.
    sites_text = cast(Job.sites, String)
    escaped = (site.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") for site in sorted(sites))
    return or_(*(sites_text.like(f'%"{site}"%', escape="\\") for site in escaped))


def list_privacy_ledger(
    session: Session,
    *,
    site: str | None = None,
    job_id: str | None = None,
    visible_sites: Collection[str] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[PrivacyLedgerEntryPublic], int]:
    """Return one page of ledger entries, newest first, and the number matching the filters.

    Args:
        session: A read session.
        site: Only entries of this site, and the client-level entries of jobs that list it.
        job_id: Only entries of this job.
        visible_sites: Limit the entries as ``site`` does, to these sites (an org admin's); None for all.
        limit: Page size.
        offset: Entries to skip.
    """
    statement = select(PrivacySpend, Job.job_id).join(Job, PrivacySpend.job_pk == Job.id)
    for sites in ([site] if site is not None else None, visible_sites):
        if sites is None:
            continue
        if not sites:
            return [], 0
        job_wide = and_(PrivacySpend.site.is_(None), _job_lists_any(sites))
        statement = statement.where(or_(PrivacySpend.site.in_(sorted(sites)), job_wide))
    if job_id is not None:
        statement = statement.where(Job.job_id == job_id)
    count = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    page = statement.order_by(PrivacySpend.recorded_at.desc(), PrivacySpend.id.desc()).limit(limit).offset(offset)
    entries = [
        PrivacyLedgerEntryPublic(
            job_id=job_id_value,
            site=spend.site,
            round=spend.round,
            kind=spend.kind,
            mechanism=spend.mechanism,
            epsilon=spend.epsilon,
            delta=spend.delta,
            epsilon_budget=spend.epsilon_budget,
            epsilon_remaining=spend.epsilon_remaining,
            recorded_at=spend.recorded_at,
            audit_seq=spend.audit_seq,
        )
        for spend, job_id_value in session.execute(page).tuples()
    ]
    return entries, count


@dataclass
class _JobSiteSpend:
    """What one job spent at one site: per kind, the largest cumulative epsilon and its delta."""

    job_id: str
    site: str
    epsilon: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    last_round: int | None = None
    last_recorded_at: datetime | None = None

    def add(self, spend: PrivacySpend) -> None:
        if spend.epsilon >= self.epsilon.get(spend.kind, -1.0):
            self.epsilon[spend.kind] = spend.epsilon
            self.delta[spend.kind] = spend.delta
        if spend.round is not None and (self.last_round is None or spend.round > self.last_round):
            self.last_round = spend.round
        if self.last_recorded_at is None or spend.recorded_at > self.last_recorded_at:
            self.last_recorded_at = spend.recorded_at

    def public(self) -> SiteJobPrivacyPublic:
        assert self.last_recorded_at is not None  # set by the first add
        return SiteJobPrivacyPublic(
            job_id=self.job_id,
            site=self.site,
            epsilon=_total(self.epsilon.values()),
            delta=_total(self.delta.values()),
            sample_level_epsilon=self.epsilon.get(PrivacyKind.SAMPLE_LEVEL.value),
            client_level_epsilon=self.epsilon.get(PrivacyKind.CLIENT_LEVEL.value),
            last_round=self.last_round,
            last_recorded_at=self.last_recorded_at,
        )


def _job_site_spends(
    rows: Iterable[tuple[PrivacySpend, str, list[str] | None]],
) -> dict[tuple[str, str], _JobSiteSpend]:
    """Group spends by (site, job), counting a client-level spend at every site its job lists."""
    spends: dict[tuple[str, str], _JobSiteSpend] = {}
    for spend, job_id, job_sites in rows:
        for site in [spend.site] if spend.site is not None else (job_sites or []):
            key = (site, job_id)
            if key not in spends:
                spends[key] = _JobSiteSpend(job_id=job_id, site=site)
            spends[key].add(spend)
    return spends


def _spend_rows(session: Session, job: Job | None = None) -> list[tuple[PrivacySpend, str, list[str] | None]]:
    statement = select(PrivacySpend, Job.job_id, Job.sites).join(Job, PrivacySpend.job_pk == Job.id)
    if job is not None:
        statement = statement.where(PrivacySpend.job_pk == job.id)
    return list(session.execute(statement.order_by(PrivacySpend.id)).tuples())


def job_privacy_by_site(session: Session, job: Job) -> list[SiteJobPrivacyPublic]:
    """Return the epsilon ``job`` spent at each site, by site name; empty when the job used no differential privacy."""
    spends = _job_site_spends(_spend_rows(session, job))
    return [spends[key].public() for key in sorted(spends)]


def _latest_budgets(rows: Iterable[tuple[PrivacySpend, str, list[str] | None]]) -> dict[str, PrivacySpend]:
    latest: dict[str, PrivacySpend] = {}
    for spend, _, _ in rows:
        if spend.site is None or (spend.epsilon_budget is None and spend.epsilon_remaining is None):
            continue
        known = latest.get(spend.site)
        if known is None or (spend.recorded_at, spend.id) > (known.recorded_at, known.id):
            latest[spend.site] = spend
    return latest


def site_privacy_totals(session: Session, *, visible_sites: Collection[str] | None = None) -> list[SitePrivacyPublic]:
    """Return the epsilon each site spent across jobs, by site name (see the module docstring for the sums).

    Args:
        session: A read session.
        visible_sites: Only these sites (an org admin's); None for all.
    """
    rows = _spend_rows(session)
    by_site: dict[str, list[_JobSiteSpend]] = defaultdict(list)
    for (site, _), spend in sorted(_job_site_spends(rows).items()):
        if visible_sites is None or site in visible_sites:
            by_site[site].append(spend)
    orgs = dict(session.execute(select(Site.name, Site.org).where(Site.name.in_(sorted(by_site)))).tuples().all())
    budgets = _latest_budgets(rows)
    totals = []
    for site, spends in sorted(by_site.items()):
        jobs = [spend.public() for spend in spends]
        budget = budgets.get(site)
        totals.append(
            SitePrivacyPublic(
                site=site,
                org=orgs.get(site),
                epsilon_spent=_total(job.epsilon for job in jobs),
                delta_spent=_total(job.delta for job in jobs),
                num_jobs=len(jobs),
                epsilon_budget=budget.epsilon_budget if budget is not None else None,
                epsilon_remaining=budget.epsilon_remaining if budget is not None else None,
                jobs=jobs,
            )
        )
    return totals
