"""Consortia events raised inside FLARE server processes and the envelope they travel in to the admin service.

The envelope is the admin service's event contract (schema version 1): ``event_id`` (idempotency key), ``type``,
``occurred_at`` (UTC ISO 8601), ``job_id``, ``site``, ``round``, ``actor`` and a per-type ``payload``.

Components in a job's server process (our controller) write envelopes straight into the event spool named in the
server's own ``local/resources.json``: FLARE 2.9 builds the site components of ``resources.json`` in the server's
main process only, not in job processes, so the spool folder is the hand-off. The event forwarder in the main
process delivers everything spooled.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1

EVENT_TYPES = (
    "job.submitted",
    "job.started",
    "round.started",
    "contribution.accepted",
    "contribution.rejected",
    "round.completed",
    "job.finished",
    "site.joined",
    "site.left",
    "privacy.spent",
    "kit.issued",
)


def make_envelope(
    event_type: str,
    *,
    job_id: str | None,
    payload: dict[str, Any] | None = None,
    site: str | None = None,
    round_number: int | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Build an event envelope with a fresh ``event_id`` and the current UTC time.

    Raises:
        ValueError: when ``event_type`` is not one of ``EVENT_TYPES``.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}: use one of {', '.join(EVENT_TYPES)}")
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": str(uuid.uuid4()),
        "type": event_type,
        "occurred_at": datetime.now(UTC).isoformat(),
        "job_id": job_id,
        "site": site,
        "round": round_number,
        "actor": actor,
        "payload": payload or {},
    }
