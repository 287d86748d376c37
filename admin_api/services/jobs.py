"""Jobs: creation, forward-only status changes and queries.

Status changes follow ``admin_api.core.status.should_apply_status``. Every applied change adds a row to
``job_status_transitions``. An ignored one (a late event that would regress the job) changes nothing here, and the
caller records it in the audit event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, cast, func, or_, select
from sqlalchemy.orm import Session

from admin_api.core.chain import format_timestamp
from admin_api.core.status import JobStatus, StatusSource, is_terminal, should_apply_status
from admin_api.errors import JobNotFoundError
from admin_api.models import Contribution, Job, JobStatusTransition, RoundMetrics, Site
from admin_api.schemas.jobs import (
    ContributionPublic,
    JobDetailPublic,
    JobPublic,
    RoundPublic,
    StatusTransitionPublic,
)

__all__ = [
    "FINISHED_FILTER",
    "IngestRows",
    "StatusChange",
    "apply_status",
    "create_job",
    "get_job",
    "get_job_detail",
    "list_jobs",
    "merge_job_sites",
    "org_jobs_condition",
    "require_job",
    "utc_now",
]

FINISHED_FILTER = "FINISHED"
"""Status filter value that matches every final status."""


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A status change that was applied to a job."""

    from_status: str | None
    to_status: str
    at: datetime
    source: StatusSource

    def as_details(self) -> dict[str, Any]:
        """Return the change as JSON for an audit event."""
        return {
            "from": self.from_status,
            "to": self.to_status,
            "at": format_timestamp(self.at),
            "source": self.source.value,
        }


@dataclass
class IngestRows:
    """Rows that one ingestion transaction read or added, so that a batch reads each row at most once.

    The ingestion transaction holds the audit chain lock, which the service's writers of these tables take
    (ingestion, the reconciler, job actions, the stuck-job check), so no other transaction changes the rows
    meanwhile. A lookup therefore returns what a new query would: the same object from the session's identity map,
    or no row. ``new_job_pks`` holds the jobs created in this transaction. No row
    in the database refers to them yet, so a lookup of their rounds, contributions and privacy spends needs no query.
    Valid only until the transaction ends.
    """

    jobs: dict[str, Job | None] = field(default_factory=dict)
    """FLARE job id to its job, or None when the job is not recorded."""
    new_job_pks: set[int] = field(default_factory=set)
    sites: dict[str, Site] = field(default_factory=dict)
    rows: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    """Rows of a job's rounds (metrics, contributions, privacy spends): table name, job pk, round, then their key."""
    _loaded_rounds: set[tuple[str, int, int | None]] = field(default_factory=set)
    audit_seq: int | None = None
    """seq of the audit event that will record the event being applied."""

    def job(self, session: Session, job_id: str) -> Job | None:
        """Return the job with FLARE id ``job_id``, or None, like ``get_job`` but cached."""
        if job_id not in self.jobs:
            self.jobs[job_id] = get_job(session, job_id)
        return self.jobs[job_id]

    def add_job(self, job: Job) -> None:
        """Cache a job created in this transaction. It must have been flushed, so that its ``id`` is set."""
        self.jobs[job.job_id] = job
        self.new_job_pks.add(job.id)

    def round_row(
        self,
        session: Session,
        model: type[Any],
        job: Job,
        round_number: int | None,
        key: tuple[Any, ...],
        key_of: Callable[[Any], tuple[Any, ...]],
    ) -> Any | None:
        """Return the row of ``model`` (a table with ``job_pk`` and ``round``) for ``job``, a round and ``key``.

        The first lookup in a job's round reads all of that round's rows of ``model`` in one query, so a round of
        many sites costs one query, not one per site. It runs without autoflush: every row this transaction added
        to the round is already in the cache, because it was added after a lookup in the same round.

        Args:
            session: The ingestion session.
            model: RoundMetrics, Contribution or PrivacySpend.
            job: The row's job.
            round_number: The row's round; None matches rows without a round.
            key: The row's key within its round, such as ``(site,)``.
            key_of: Returns that key of a row read from the database.
        """
        scope = (model.__tablename__, job.id, round_number)
        if scope not in self._loaded_rounds:
            self._loaded_rounds.add(scope)
            if job.id not in self.new_job_pks:
                round_column = model.round
                statement = select(model).where(
                    model.job_pk == job.id,
                    round_column.is_(None) if round_number is None else round_column == round_number,
                )
                with session.no_autoflush:
                    found: list[Any] = list(session.scalars(statement))
                for row in found:
                    self.rows[(*scope, *key_of(row))] = row
        return self.rows.get((*scope, *key))

    def add_round_row(
        self, model: type[Any], job: Job, round_number: int | None, key: tuple[Any, ...], row: Any
    ) -> None:
        """Keep a row added to the session after ``round_row`` found none for the same arguments."""
        self.rows[(model.__tablename__, job.id, round_number, *key)] = row


def get_job(session: Session, job_id: str) -> Job | None:
    """Return the job with FLARE id ``job_id``, or None."""
    return session.scalar(select(Job).where(Job.job_id == job_id))


def require_job(session: Session, job_id: str) -> Job:
    """Return the job with FLARE id ``job_id``.

    Raises:
        JobNotFoundError: No such job is recorded.
    """
    job = get_job(session, job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    return job


def create_job(
    session: Session,
    job_id: str,
    *,
    status: JobStatus,
    at: datetime,
    source: StatusSource,
    event_id: str | None = None,
) -> tuple[Job, StatusChange]:
    """Record a job seen for the first time, with ``status`` as its first transition.

    Returns:
        The new job and its first status change.
    """
    now = utc_now()
    job = Job(job_id=job_id, status=status.value, sites=[], created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    change = StatusChange(from_status=None, to_status=status.value, at=at, source=source)
    _record_transition(session, job, change, event_id)
    _stamp_status_times(job, status, at)
    return job, change


def apply_status(
    session: Session,
    job: Job,
    status: JobStatus,
    *,
    at: datetime,
    source: StatusSource,
    event_id: str | None = None,
) -> StatusChange | None:
    """Move a job to ``status`` unless that would regress it.

    Args:
        session: Session of the current write transaction.
        job: The job to change.
        status: The reported status.
        at: When the job reached ``status``.
        source: Who reported it.
        event_id: The event that reported it, when ``source`` is an event.

    Returns:
        The applied change, or None when the status was ignored (unchanged or a regression).
    """
    current = JobStatus(job.status)
    if not should_apply_status(current, status, source):
        return None
    change = StatusChange(from_status=current.value, to_status=status.value, at=at, source=source)
    job.status = status.value
    job.updated_at = utc_now()
    _record_transition(session, job, change, event_id)
    _stamp_status_times(job, status, at)
    return change


def _record_transition(session: Session, job: Job, change: StatusChange, event_id: str | None) -> None:
    session.add(
        JobStatusTransition(
            job_pk=job.id,
            from_status=change.from_status,
            to_status=change.to_status,
            at=change.at,
            source=change.source.value,
            event_id=event_id,
        )
    )


def _stamp_status_times(job: Job, status: JobStatus, at: datetime) -> None:
    if status == JobStatus.RUNNING and job.started_at is None:
        job.started_at = at
    if is_terminal(status):
        job.finished_at = at


def merge_job_sites(job: Job, sites: Iterable[str]) -> list[str]:
    """Add sites to the job's site list, keeping it sorted and unique.

    Returns:
        The sites that were not listed before.
    """
    known = set(job.sites or [])
    added = sorted(set(sites) - known)
    if added:
        job.sites = sorted(known | set(added))
        job.updated_at = utc_now()
    return added


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def org_jobs_condition(org: str, org_sites: Collection[str]) -> ColumnElement[bool]:
    """Return the SQL condition of jobs that concern ``org``: submitted by it or deployed to one of its sites.

    ``sites`` is a JSON list, matched as text (``"hospital-a"`` with its quotes) so the same SQL runs on SQLite and
    PostgreSQL; site names contain no quotes.
    """
    conditions = [Job.submitter_org == org, Job.requested_by_org == org]
    sites_text = cast(Job.sites, String)
    for site in sorted(org_sites):
        conditions.append(sites_text.like(f'%"{_escape_like(site)}"%', escape="\\"))
    return or_(*conditions)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    submitter: str | None = None,
    name: str | None = None,
    org: str | None = None,
    org_sites: Collection[str] = (),
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Job], int]:
    """Return one page of jobs, newest submission first, and the number of jobs matching the filters.

    Args:
        session: A read session.
        status: Exact FLARE status, or ``FINISHED`` for every final status.
        submitter: Exact submitter name.
        name: Case-insensitive substring of the job name.
        org: Only jobs that concern this org (see ``org_jobs_condition``); all jobs when None.
        org_sites: The sites of ``org``.
        limit: Page size.
        offset: Jobs to skip.
    """
    statement = select(Job)
    if org is not None:
        statement = statement.where(org_jobs_condition(org, org_sites))
    if status == FINISHED_FILTER:
        statement = statement.where(Job.status.like("FINISHED%"))
    elif status is not None:
        statement = statement.where(Job.status == status)
    if submitter is not None:
        statement = statement.where(Job.submitter == submitter)
    if name is not None:
        statement = statement.where(Job.name.ilike(f"%{_escape_like(name)}%", escape="\\"))

    count = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    # Jobs without a known submission time go last; the id keeps the order stable across pages.
    page = statement.order_by(Job.submitted_at.is_(None), Job.submitted_at.desc(), Job.id.desc())
    jobs = list(session.scalars(page.limit(limit).offset(offset)))
    return jobs, count


def _build_rounds(metrics_rows: list[RoundMetrics], contributions: list[Contribution]) -> list[RoundPublic]:
    global_metrics: dict[int, dict[str, Any]] = {}
    site_metrics: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    by_round: dict[int, list[ContributionPublic]] = defaultdict(list)
    for row in metrics_rows:
        if row.site is None:
            global_metrics[row.round] = row.metrics
        else:
            site_metrics[row.round][row.site] = row.metrics
    for contribution in contributions:
        by_round[contribution.round].append(ContributionPublic.model_validate(contribution))

    rounds = sorted(set(global_metrics) | set(site_metrics) | set(by_round))
    return [
        RoundPublic(
            round=round_number,
            global_metrics=global_metrics.get(round_number),
            site_metrics=dict(sorted(site_metrics[round_number].items())),
            contributions=by_round[round_number],
        )
        for round_number in rounds
    ]


def get_job_detail(session: Session, job_id: str) -> JobDetailPublic:
    """Return a job with its status history, per-round metrics and contributions.

    Raises:
        JobNotFoundError: No such job is recorded.
    """
    job = require_job(session, job_id)
    transitions = session.scalars(
        select(JobStatusTransition).where(JobStatusTransition.job_pk == job.id).order_by(JobStatusTransition.id)
    )
    metrics_rows = session.scalars(
        select(RoundMetrics).where(RoundMetrics.job_pk == job.id).order_by(RoundMetrics.round, RoundMetrics.site)
    )
    contributions = session.scalars(
        select(Contribution).where(Contribution.job_pk == job.id).order_by(Contribution.round, Contribution.site)
    )
    return JobDetailPublic(
        **JobPublic.model_validate(job).model_dump(),
        status_history=[StatusTransitionPublic.model_validate(row) for row in transitions],
        rounds=_build_rounds(list(metrics_rows), list(contributions)),
    )
