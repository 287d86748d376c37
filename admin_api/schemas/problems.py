"""Schemas of RFC 9457 problem details, the body of every error response (``application/problem+json``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["InvalidFieldPublic", "ProblemPublic", "ValidationProblemPublic"]

_PROBLEM_EXAMPLE: dict[str, Any] = {
    "type": "urn:consortia:problem:not-found",
    "title": "Not Found",
    "status": 404,
    "detail": (
        "job '4f1c2a9e-8b3d-4e6f-9a7c-1d2e3f4a5b6c' not found; list recorded jobs with GET /api/v1/jobs, "
        "or wait for the reconciler if the job was submitted moments ago"
    ),
    "instance": "/api/v1/jobs/4f1c2a9e-8b3d-4e6f-9a7c-1d2e3f4a5b6c",
    "request_id": "3c9f1a7e5b2d4c6e8a0b1d3f5e7a9c2b",
}
_INVALID_FIELD_EXAMPLE: dict[str, Any] = {
    "loc": ["query", "limit"],
    "msg": "Input should be less than or equal to 500",
    "type": "less_than_equal",
}


class ProblemPublic(BaseModel):
    """An error response: what failed, on which request, and what to do next."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PROBLEM_EXAMPLE]})

    type: str = Field(description="urn:consortia:problem:<code>, for example urn:consortia:problem:forbidden.")
    title: str = Field(description="HTTP status phrase.")
    status: int = Field(description="HTTP status code.")
    detail: str = Field(description="What was wrong with this request and how to fix it.")
    instance: str = Field(description="Path of the failed request.")
    request_id: str | None = Field(description="Id of the request, also in the X-Request-ID response header.")


class InvalidFieldPublic(BaseModel):
    """One invalid input of a request."""

    model_config = ConfigDict(json_schema_extra={"examples": [_INVALID_FIELD_EXAMPLE]})

    loc: list[str] = Field(description="Where the input is: body, query, path or header, then the field path.")
    msg: str
    type: str | None = Field(description="Pydantic error type, for example missing or less_than_equal.")


class ValidationProblemPublic(ProblemPublic):
    """A 422 problem listing every invalid input in ``errors``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **_PROBLEM_EXAMPLE,
                    "type": "urn:consortia:problem:validation-error",
                    "title": "Unprocessable Entity",
                    "status": 422,
                    "detail": "invalid request at query.limit: Input should be less than or equal to 500",
                    "instance": "/api/v1/jobs",
                    "errors": [_INVALID_FIELD_EXAMPLE],
                }
            ]
        }
    )

    errors: list[InvalidFieldPublic]
