"""Audit chain routes: list events and verify the chain."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from admin_api.api.deps import AuditReaderDep, SessionDep
from admin_api.schemas.audit import AuditEventPublic, AuditEventsPublic, ChainVerificationPublic
from admin_api.services.audit import query_audit_events
from admin_api.services.checkpoints import verify_from_checkpoint, verify_full

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])

MAX_OFFSET = 2**63 - 1
"""Largest offset a 64-bit database integer holds; a larger one would fail in the database driver."""


@router.get("/verify")
def read_chain_verification(
    session: SessionDep,
    _principal: AuditReaderDep,
    from_checkpoint: Annotated[
        bool, Query(description="Walk only from the newest verified checkpoint (fast path) instead of from seq 1.")
    ] = False,
) -> ChainVerificationPublic:
    """Walk the whole audit chain; ``ok`` is False and ``first_bad_seq`` is set when an event was altered.

    A valid chain's head is recorded as a verified checkpoint. With ``from_checkpoint=true`` the walk starts at the
    newest checkpoint, after checking that the event there still has the checkpoint's hash; it cannot see changes
    before the checkpoint, which the default full walk always checks.
    """
    verify = verify_from_checkpoint if from_checkpoint else verify_full
    return ChainVerificationPublic.model_validate(verify(session))


@router.get("/events")
def read_audit_events(
    session: SessionDep,
    _principal: AuditReaderDep,
    action: Annotated[str | None, Query(max_length=64, description="Exact action, e.g. console.command.")] = None,
    actor: Annotated[str | None, Query(max_length=255)] = None,
    target: Annotated[str | None, Query(max_length=255, description="Exact target, e.g. job:<id>.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditEventsPublic:
    """List audit events in chain order."""
    events, count = query_audit_events(session, action=action, actor=actor, target=target, limit=limit, offset=offset)
    return AuditEventsPublic(
        data=[AuditEventPublic.model_validate(event) for event in events], count=count, limit=limit, offset=offset
    )
