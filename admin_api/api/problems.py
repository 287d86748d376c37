"""RFC 9457 problem details: every error response of the API is ``application/problem+json``.

A problem has ``type`` (``urn:consortia:problem:<code>``), ``title``, ``status``, ``detail``, ``instance`` (the
request path) and ``request_id``; validation problems add ``errors`` with each invalid field's location and message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from admin_api.errors import (
    AdminApiError,
    AuthenticationError,
    EventConflictError,
    FlareActionError,
    InvalidJobRequestError,
    JobStateConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from admin_api.request_context import request_id_var

__all__ = ["PROBLEM_JSON", "install_problem_handlers", "problem_response"]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

# Most specific class first: the first match decides the status.
_ERROR_STATUS: tuple[tuple[type[AdminApiError], HTTPStatus, str], ...] = (
    (AuthenticationError, HTTPStatus.UNAUTHORIZED, "unauthorized"),
    (PermissionDeniedError, HTTPStatus.FORBIDDEN, "forbidden"),
    (NotFoundError, HTTPStatus.NOT_FOUND, "not-found"),
    (EventConflictError, HTTPStatus.CONFLICT, "event-conflict"),
    (JobStateConflictError, HTTPStatus.CONFLICT, "job-state-conflict"),
    (InvalidJobRequestError, HTTPStatus.UNPROCESSABLE_ENTITY, "invalid-job-request"),
    (FlareActionError, HTTPStatus.BAD_GATEWAY, "flare-action-failed"),
)


def problem_response(
    request: Request,
    status: HTTPStatus,
    detail: str,
    *,
    code: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build a problem-details response.

    Args:
        request: The failed request.
        status: HTTP status.
        detail: What was wrong with this request and how to fix it.
        code: Short problem code, the last part of ``type``.
        headers: Extra response headers.
        **extra: Extension members, for example ``errors``.
    """
    body = {
        "type": f"urn:consortia:problem:{code}",
        "title": status.phrase,
        "status": status.value,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request_id_var.get(),
        **extra,
    }
    return JSONResponse(body, status_code=status.value, media_type=PROBLEM_JSON, headers=headers)


async def _handle_admin_error(request: Request, exc: Exception) -> JSONResponse:
    for error_type, status, code in _ERROR_STATUS:
        if isinstance(exc, error_type):
            headers = {"WWW-Authenticate": "Bearer"} if status == HTTPStatus.UNAUTHORIZED else None
            if status in (HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN):
                # The message names the failure, never the presented token.
                logger.warning("%s %s rejected: %s", request.method, request.url.path, exc)
            return problem_response(request, status, str(exc), code=code, headers=headers)
    logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc, exc_info=exc)
    return problem_response(
        request,
        HTTPStatus.INTERNAL_SERVER_ERROR,
        f"the service failed to process the request ({type(exc).__name__}); quote the request_id when reporting it",
        code="internal-error",
    )


def _describe_location(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "body"


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    errors = _errors_for_declared_event_type(errors, getattr(exc, "body", None))
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    detail = f"invalid request at {_describe_location(tuple(first['loc']))}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more, listed in errors)"
    return problem_response(request, HTTPStatus.UNPROCESSABLE_ENTITY, detail, code="validation-error", errors=errors)


def _errors_for_declared_event_type(errors: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """Keep only the errors of the event model the body's ``type`` names.

    A discriminated union wrapped in a validator reports every member's errors; the caller only needs those of the
    type it sent (for example ``payload.org`` too long), not that its type is not ``job.submitted``.
    """
    from admin_api.schemas.events import EVENT_MODELS

    if not isinstance(body, dict) or not isinstance(body.get("type"), str) or body["type"] not in EVENT_MODELS:
        return errors
    model_name = EVENT_MODELS[body["type"]].__name__
    matching = [error for error in errors if any(model_name in part for part in error["loc"])]
    return matching or errors


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    detail = exc.detail if isinstance(exc.detail, str) else status.description
    if status == HTTPStatus.NOT_FOUND and detail == "Not Found":
        detail = f"no route matches {request.url.path}; the API lives under /api/v1"
    return problem_response(request, status, detail, code=status.phrase.lower().replace(" ", "-"), headers=exc.headers)


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("%s %s failed unexpectedly", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        HTTPStatus.INTERNAL_SERVER_ERROR,
        "the service failed to process the request; quote the request_id when reporting it",
        code="internal-error",
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem details."""
    app.add_exception_handler(AdminApiError, _handle_admin_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)
