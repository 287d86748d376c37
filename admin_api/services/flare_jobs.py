"""FLARE job list access for the reconciler: the source protocol, the FLARE API source and the job meta model.

This is the only admin service module that talks to FLARE. ``nvflare`` is imported when a source first connects, so
the service runs, and its tests pass, without FLARE configured.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from admin_api.core.status import JobStatus, is_terminal
from admin_api.errors import FlareSourceError

__all__ = ["FlareApiJobSource", "FlareJobMeta", "FlareJobSource", "FlareSystemSnapshot", "flare_output_to_log"]

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^(?:(?P<days>\d+) days?, )?(?P<hours>\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2}(?:\.\d+)?)$")


class FlareJobSource(Protocol):
    """Anything that returns FLARE's detailed job list (one job meta dict per job)."""

    def list_jobs(self) -> list[dict[str, Any]]:
        """Return the meta of every job in FLARE's job store.

        Raises:
            FlareSourceError: The list could not be read.
        """
        ...


@dataclass(frozen=True, slots=True)
class FlareSystemSnapshot:
    """What the FLARE server reports about itself: when it started and which jobs have a running job process."""

    server_started_at: datetime | None
    running_job_ids: frozenset[str]


class _LogWriter(io.TextIOBase):
    """Text stream that turns each written line into an INFO log record."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                logger.info("FLARE: %s", line.strip())
        return len(text)


@contextmanager
def flare_output_to_log() -> Iterator[None]:
    """Send what FLARE prints (for example "Connecting to FLARE ...") to the log, keeping the log JSON lines.

    NOTE: this swaps sys.stdout and sys.stderr for the whole process while a FLARE call runs. A print from another
    thread in that window is logged too, which is harmless because the admin service itself does not print.
    """
    writer = _LogWriter()
    with redirect_stdout(writer), redirect_stderr(writer):
        yield


class FlareApiJobSource:
    """FLARE job source that uses the FLARE API (``nvflare.fuel.flare_api``) with an admin startup kit.

    The session is opened on first use and reopened after any failure, so a restarted server is picked up again.

    Args:
        admin_kit_dir: Admin startup kit folder, the one that contains ``startup/``.
        username: The admin user the kit was provisioned for.
        timeout_s: Seconds to wait for a connection.
    """

    def __init__(self, admin_kit_dir: str, username: str, *, timeout_s: float = 15.0) -> None:
        self.admin_kit_dir = admin_kit_dir
        self.username = username
        self.timeout_s = timeout_s
        self._session: Any = None

    def _connect(self) -> Any:
        # Imported here so the admin service starts, and its tests run, without loading FLARE unless configured.
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        return new_secure_session(self.username, self.admin_kit_dir, timeout=self.timeout_s)

    def list_jobs(self) -> list[dict[str, Any]]:
        """Return FLARE's detailed job list.

        Raises:
            FlareSourceError: Connecting or listing failed; the next call reconnects.
        """
        try:
            with flare_output_to_log():
                if self._session is None:
                    self._session = self._connect()
                    logger.info("connected to FLARE as %s using kit %s", self.username, self.admin_kit_dir)
                jobs = self._session.list_jobs(detailed=True)
        except Exception as exc:  # FLARE raises many unrelated types (NoConnection, ConfigError, AssertionError, ...)
            self.close()
            raise FlareSourceError(
                f"listing FLARE jobs as {self.username} with kit {self.admin_kit_dir} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return list(jobs or [])

    def system_snapshot(self) -> FlareSystemSnapshot:
        """Return the server's start time and the jobs it runs now (``get_system_info``).

        Raises:
            FlareSourceError: Connecting or the status command failed; the next call reconnects.
        """
        try:
            with flare_output_to_log():
                if self._session is None:
                    self._session = self._connect()
                info = self._session.get_system_info()
        except Exception as exc:  # FLARE raises many unrelated types, as in list_jobs
            self.close()
            raise FlareSourceError(
                f"reading FLARE system info as {self.username} failed: {type(exc).__name__}: {exc}"
            ) from exc
        start_time = getattr(info.server_info, "start_time", None)
        started_at = datetime.fromtimestamp(start_time, UTC) if isinstance(start_time, int | float) else None
        job_ids = frozenset(str(job.job_id) for job in info.job_info or [] if job.job_id)
        return FlareSystemSnapshot(server_started_at=started_at, running_job_ids=job_ids)

    def close(self) -> None:
        """Close the FLARE session, if one is open."""
        session, self._session = self._session, None
        if session is None:
            return
        try:
            with flare_output_to_log():
                session.close()
        except Exception as exc:  # noqa: BLE001  # closing a broken session may fail in any way; it is dropped anyway
            logger.warning("closing the FLARE session failed: %s: %s", type(exc).__name__, exc)


def _parse_time(value: Any) -> datetime | None:
    """Parse a FLARE timestamp; FLARE writes local time with an offset, and naive values are taken as UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        # NOTE: FLARE 2.9 writes offsets; a naive value would come from an older server, and its zone is a guess.
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _parse_duration(value: Any) -> timedelta | None:
    """Parse ``str(timedelta)`` as FLARE stores ``duration`` (for example ``0:00:21.868592``)."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    return timedelta(
        days=int(match["days"] or 0),
        hours=int(match["hours"]),
        minutes=int(match["minutes"]),
        seconds=float(match["seconds"]),
    )


class FlareJobMeta(BaseModel):
    """The fields of FLARE's job meta that the reconciler uses; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    name: Annotated[str, Field(max_length=255)] | None = None
    status: JobStatus
    submitter_name: Annotated[str, Field(max_length=255)] | None = None
    submitter_org: Annotated[str, Field(max_length=128)] | None = None
    submitter_role: Annotated[str, Field(max_length=64)] | None = None
    submit_time_iso: str | None = None
    start_time: str | None = None
    duration: str | None = None
    deploy_map: dict[str, list[Any]] | None = None

    @field_validator("job_id")
    @classmethod
    def _check_job_id(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", value):
            raise ValueError(f"job_id {value!r} is not a FLARE job id")
        return value

    def sites(self) -> list[str]:
        """Return the sites in ``deploy_map``, without ``server`` and the ``@ALL`` wildcard."""
        names: set[str] = set()
        for targets in (self.deploy_map or {}).values():
            for target in targets:
                # deploy_map entries are site names; resource-spec style entries are dicts with a "name".
                name = target.get("name") if isinstance(target, dict) else target
                if isinstance(name, str) and name not in ("server", "@ALL"):
                    names.add(name)
        return sorted(names)

    def submitted_at(self) -> datetime | None:
        """Return the submission time in UTC, when FLARE recorded one."""
        return _parse_time(self.submit_time_iso)

    def started_at(self) -> datetime | None:
        """Return the start time in UTC, when the job has started."""
        return _parse_time(self.start_time)

    def finished_at(self) -> datetime | None:
        """Return start time plus duration for a finished job, when both are known."""
        started = self.started_at()
        duration = _parse_duration(self.duration)
        if started is None or duration is None or not is_terminal(self.status):
            return None
        return started + duration
