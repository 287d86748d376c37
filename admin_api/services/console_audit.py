"""Console coverage: ingest the FLARE server's ``audit.log`` into ``console.command`` audit events.

FLARE 2.9 writes one line per admin command that passed authorization, whether it came from the stock console
(``fl_admin.sh``), the FLARE API or ``nvflare job``::

    [E:<uuid>][T:2026-12-04 19:17:21.116597][U:orgadmin@hospital-a.org][A:abort_job 73029aa3-...]

Lines are read incrementally from the byte offset stored in ``log_cursors``, in the same transaction as the audit
events they produce, so each line is ingested exactly once. A file shorter than the offset (truncated) or with a
different inode or first line (rotated, replaced) is read again from its start.

Limits:
    - FLARE does not log denied commands, so a console command FLARE refused leaves no trace here.
    - The submit line carries the job folder, not the job id. The job is matched to the newest job of the same
      submitter that the reconciler recorded within ``SUBMIT_MATCH_WINDOW`` after the line.
    - Commands of the service's own FLARE identity are skipped: the reconciler polls with it every few seconds, and
      every submit or abort it makes for a user is already audited with the real requester.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.models import AuditEvent, Job, LogCursor, User
from admin_api.services.audit import append_audit_event, job_target, lock_chain
from admin_api.services.jobs import utc_now

__all__ = [
    "CURSOR_NAME",
    "SUBMIT_MATCH_WINDOW",
    "ConsoleAuditIngester",
    "ConsoleIngestResult",
    "ConsoleLine",
    "parse_line",
]

logger = logging.getLogger(__name__)

CURSOR_NAME = "flare_server_audit_log"
SUBMIT_MATCH_WINDOW = timedelta(seconds=30)
"""How long after a submit line the job it created may appear in FLARE's job store."""

_SUBMIT_EARLY_TOLERANCE = timedelta(seconds=2)
_HEAD_BYTES = 512
_MAX_READ_BYTES = 4 * 1024 * 1024
_LINE = re.compile(
    r"^\[E:(?P<event_id>[^\]]*)\](?:\[R:(?P<ref>[^\]]*)\])?\[T:(?P<time>[^\]]*)\]\[U:(?P<user>[^\]]*)\]"
    r"\[A:(?P<command>.*)\](?P<message>[^\]]*)$"
)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_SUBMIT_COMMANDS = frozenset({"submit_job", "job_mgmt.submit_job"})


@dataclass(frozen=True, slots=True)
class ConsoleLine:
    """One parsed line of FLARE's server audit log."""

    flare_event_id: str
    occurred_at: datetime
    user: str
    command: str
    arguments: str

    @property
    def is_submit(self) -> bool:
        """Whether the line is a job submission."""
        return self.command in _SUBMIT_COMMANDS

    def job_id(self) -> str | None:
        """Return the first job id among the arguments, for example of ``abort_job <id>``."""
        match = _UUID.search(self.arguments)
        return match.group(0) if match else None


@dataclass(frozen=True, slots=True)
class ConsoleIngestResult:
    """Counts from one ingestion pass."""

    num_ingested: int = 0
    num_skipped: int = 0
    num_invalid: int = 0
    restarted: str | None = None


def parse_line(text: str) -> ConsoleLine | None:
    """Parse one audit log line; return None for a line that is not a command record.

    FLARE writes ``datetime.now()``, the server host's local time without a zone.

    NOTE: the line time is read in the admin service's local zone, which is right only when the service runs on the
    FLARE server's host or in the same zone, as ``consortia up`` deploys it.
    """
    match = _LINE.fullmatch(text.rstrip("\r\n"))
    if match is None:
        return None
    try:
        occurred_at = datetime.fromisoformat(match["time"]).astimezone()
    except ValueError:
        return None
    command, _, arguments = match["command"].strip().partition(" ")
    if not command:
        return None
    return ConsoleLine(
        flare_event_id=match["event_id"],
        occurred_at=occurred_at,
        user=match["user"],
        command=command,
        arguments=arguments.strip(),
    )


class ConsoleAuditIngester:
    """Reads new lines of the FLARE server's audit.log into the audit chain.

    Args:
        path: The server's ``audit.log`` (``<kits_dir>/<server>/audit.log``).
        service_user: The admin service's FLARE identity, whose commands are skipped.
        now: Clock, replaceable in tests.
    """

    def __init__(self, path: Path, *, service_user: str | None, now: Any = utc_now) -> None:
        self.path = path
        self.service_user = service_user
        self.now = now

    def ingest(self, session: Session) -> ConsoleIngestResult:
        """Ingest the lines written since the last pass, committing once at the end.

        A submit line whose job is not recorded yet stops the pass, so the next pass retries it. Once
        ``SUBMIT_MATCH_WINDOW`` has passed, the line is recorded without a job id.

        Args:
            session: A write session (``Database.write_session()``).
        """
        if not self.path.is_file():
            return ConsoleIngestResult()
        lock_chain(session)
        cursor = self._load_cursor(session)
        with self.path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            head = hashlib.sha256(handle.read(_HEAD_BYTES)).hexdigest()
            restarted = self._restart_reason(cursor, stat.st_ino, stat.st_size, head)
            if restarted is not None:
                logger.warning("FLARE audit log %s %s; reading it again from the start", self.path, restarted)
                cursor.offset = 0
            handle.seek(cursor.offset)
            data = handle.read(_MAX_READ_BYTES)
        cursor.inode, cursor.head_sha256 = stat.st_ino, head

        counts = {"ingested": 0, "skipped": 0, "invalid": 0}
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # FLARE is still writing this line
            if not self._ingest_line(session, raw, counts):
                break
            cursor.offset += len(raw)
        cursor.updated_at = self.now()
        session.commit()
        return ConsoleIngestResult(
            num_ingested=counts["ingested"],
            num_skipped=counts["skipped"],
            num_invalid=counts["invalid"],
            restarted=restarted,
        )

    def _load_cursor(self, session: Session) -> LogCursor:
        cursor = session.scalar(select(LogCursor).where(LogCursor.name == CURSOR_NAME))
        if cursor is None:
            cursor = LogCursor(name=CURSOR_NAME, path=str(self.path), offset=0, updated_at=self.now())
            session.add(cursor)
        if cursor.path != str(self.path):
            logger.warning(
                "FLARE audit log moved from %s to %s; reading the new file from its start", cursor.path, self.path
            )
            cursor.path, cursor.offset, cursor.inode, cursor.head_sha256 = str(self.path), 0, None, None
        return cursor

    @staticmethod
    def _restart_reason(cursor: LogCursor, inode: int, size: int, head: str) -> str | None:
        if cursor.offset == 0:
            return None
        if size < cursor.offset:
            return f"is shorter ({size} bytes) than the ingested offset {cursor.offset} (truncated)"
        if cursor.inode is not None and cursor.inode != inode:
            return "has a new inode (rotated or replaced)"
        if cursor.head_sha256 is not None and cursor.head_sha256 != head and cursor.offset >= _HEAD_BYTES:
            return "starts with different bytes (replaced)"
        return None

    def _ingest_line(self, session: Session, raw: bytes, counts: dict[str, int]) -> bool:
        """Record one complete line; return False to stop the pass before it."""
        line = parse_line(raw.decode("utf-8", errors="replace"))
        if line is None:
            counts["invalid"] += 1
            logger.warning("skipped an unparsable line of %s: %.120r", self.path, raw)
            return True
        if line.user == self.service_user:
            counts["skipped"] += 1
            return True
        job_id = line.job_id()
        correlation = None
        if line.is_submit:
            job_id = self._match_submitted_job(session, line)
            if job_id is None and self.now() - line.occurred_at < SUBMIT_MATCH_WINDOW:
                return False
            correlation = "submitter_and_time" if job_id is not None else "none_within_window"
        self._append(session, line, job_id, correlation)
        counts["ingested"] += 1
        return True

    def _match_submitted_job(self, session: Session, line: ConsoleLine) -> str | None:
        """Return the earliest unmatched job of the line's user submitted within the window after the line."""
        start = line.occurred_at - _SUBMIT_EARLY_TOLERANCE
        end = line.occurred_at + SUBMIT_MATCH_WINDOW
        candidates = session.scalars(
            select(Job.job_id)
            .where(Job.submitter == line.user, Job.submitted_at >= start, Job.submitted_at <= end)
            .order_by(Job.submitted_at, Job.id)
        )
        for job_id in candidates:
            already_matched = session.scalar(
                select(AuditEvent.seq).where(
                    AuditEvent.target == job_target(job_id), AuditEvent.action == "console.command"
                )
            )
            if already_matched is None:
                return job_id
        return None

    def _append(self, session: Session, line: ConsoleLine, job_id: str | None, correlation: str | None) -> None:
        user = session.scalar(select(User).where(User.name == line.user))
        details: dict[str, Any] = {
            "source": "flare_audit_log",
            "flare_event_id": line.flare_event_id,
            "command": line.command,
            "arguments": line.arguments,
            "job_id": job_id,
        }
        if correlation is not None:
            details["job_correlation"] = correlation
        append_audit_event(
            session,
            occurred_at=line.occurred_at,
            actor=line.user or "unknown",
            role=user.role if user is not None else None,
            action="console.command",
            target=job_target(job_id) if job_id is not None else "flare:server",
            details=details,
        )
