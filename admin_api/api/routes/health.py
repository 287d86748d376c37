"""Liveness and readiness probes; they need no token."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from admin_api.api.deps import DatabaseDep
from admin_api.api.problems import problem_response

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz")
def read_liveness() -> dict[str, str]:
    """Return ok while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def read_readiness(request: Request, database: DatabaseDep) -> dict[str, str] | JSONResponse:
    """Return ready when a test query on the database succeeds, else 503 problem details."""
    try:
        database.ping()
    except SQLAlchemyError as exc:
        logger.warning("readiness check failed: database unreachable: %s", type(exc).__name__)
        return problem_response(
            request,
            HTTPStatus.SERVICE_UNAVAILABLE,
            f"database unreachable ({type(exc).__name__}); check CONSORTIA_DATABASE_URL and the database server",
            code="not-ready",
        )
    return {"status": "ready"}
