"""Tests for the job status rules in admin_api.core.status."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from admin_api.core.status import JobStatus, StatusSource, is_terminal, should_apply_status


def test_strings_match_flare() -> None:
    from nvflare.apis.job_def import RunStatus

    assert {status.value for status in JobStatus} == {status.value for status in RunStatus}


@pytest.mark.parametrize(
    ("current", "new", "source", "expected"),
    [
        (None, JobStatus.RUNNING, StatusSource.EVENT, True),
        (JobStatus.SUBMITTED, JobStatus.RUNNING, StatusSource.EVENT, True),
        (JobStatus.RUNNING, JobStatus.SUBMITTED, StatusSource.EVENT, False),
        (JobStatus.RUNNING, JobStatus.RUNNING, StatusSource.EVENT, False),
        (JobStatus.RUNNING, JobStatus.FINISHED_COMPLETED, StatusSource.EVENT, True),
        (JobStatus.FINISHED_COMPLETED, JobStatus.RUNNING, StatusSource.EVENT, False),
        (JobStatus.FINISHED_COMPLETED, JobStatus.RUNNING, StatusSource.RECONCILER, False),
        (JobStatus.FINISHED_ABORTED, JobStatus.FINISHED_COMPLETED, StatusSource.EVENT, False),
        (JobStatus.FINISHED_COMPLETED, JobStatus.FINISHED_ABORTED, StatusSource.RECONCILER, True),
        (JobStatus.DISPATCHED, JobStatus.APPROVED, StatusSource.RECONCILER, False),
    ],
)
def test_should_apply_status(current: JobStatus | None, new: JobStatus, source: StatusSource, expected: bool) -> None:
    assert should_apply_status(current, new, source) is expected


@given(st.lists(st.tuples(st.sampled_from(JobStatus), st.sampled_from(StatusSource)), min_size=1, max_size=20))
def test_terminal_never_regresses(reports: list[tuple[JobStatus, StatusSource]]) -> None:
    current: JobStatus | None = None
    for status, source in reports:
        was_terminal = current is not None and is_terminal(current)
        if should_apply_status(current, status, source):
            current = status
        if was_terminal:
            assert current is not None and is_terminal(current)


def test_list_filter_covers_statuses() -> None:
    from admin_api.schemas.jobs import JobStatusFilter
    from admin_api.services.jobs import FINISHED_FILTER

    assert {f.value for f in JobStatusFilter} == {s.value for s in JobStatus} | {FINISHED_FILTER}
