"""Audit chain routes."""

from __future__ import annotations

from fastapi import APIRouter

from admin_api.api.deps import ReaderDep, SessionDep
from admin_api.schemas.audit import ChainVerificationPublic
from admin_api.services.audit import verify_chain

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("/verify")
def read_chain_verification(session: SessionDep, _principal: ReaderDep) -> ChainVerificationPublic:
    """Walk the whole audit chain; ``ok`` is False and ``first_bad_seq`` is set when an event was altered."""
    return ChainVerificationPublic.model_validate(verify_chain(session))
