"""Corrections to FastAPI's OpenAPI document: problem-details error responses and examples with nulls.

FastAPI documents only a 422 with its own ``HTTPValidationError`` body, but every error of this API is
``application/problem+json`` (``admin_api.api.problems``). ``document_problem_responses`` rewrites the error
responses of each operation from what its route depends on. A token adds 401, a scope 403, a path parameter 404, any
input 422, a request body 413 and the report signer 503. Every route gets 500, and some get the statuses in
``_ROUTE_ERRORS``.

FastAPI 0.165 also encodes the document with ``exclude_none``, which drops every null from the examples, so an
example such as a valid chain's ``"first_bad_seq": null`` would lack a required field. The examples of our schema
models are therefore copied back unchanged.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import BaseModel

import admin_api.schemas
from admin_api.api.auth import current_principal
from admin_api.api.problems import PROBLEM_JSON
from admin_api.api.routes.reports import get_signer
from admin_api.schemas.problems import ProblemPublic, ValidationProblemPublic

__all__ = ["document_problem_responses"]

_REF = "#/components/schemas/{model}"

# Statuses that services raise for one route only, by (method, path): 409 and 502 from FLARE actions and event
# conflicts, 503 from the readiness probe.
_ROUTE_ERRORS: dict[tuple[str, str], tuple[HTTPStatus, ...]] = {
    ("GET", "/readyz"): (HTTPStatus.SERVICE_UNAVAILABLE,),
    ("POST", "/api/v1/events"): (HTTPStatus.CONFLICT,),
    ("POST", "/api/v1/events:batch"): (HTTPStatus.CONFLICT,),
    ("POST", "/api/v1/jobs"): (HTTPStatus.BAD_GATEWAY,),
    ("POST", "/api/v1/jobs/{job_id}/abort"): (HTTPStatus.CONFLICT, HTTPStatus.BAD_GATEWAY),
}
_DESCRIPTIONS = {
    HTTPStatus.UNAUTHORIZED: "Missing, unknown, expired or revoked bearer token.",
    HTTPStatus.FORBIDDEN: "The caller's role lacks the scope this route requires.",
    HTTPStatus.NOT_FOUND: "Nothing with this id is recorded, or it belongs to another org.",
    HTTPStatus.CONFLICT: "The request conflicts with recorded state, for example a reused event_id.",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "The request body exceeds the size limit.",
    HTTPStatus.UNPROCESSABLE_ENTITY: "Invalid input; errors lists each invalid field.",
    HTTPStatus.INTERNAL_SERVER_ERROR: "The service failed; quote request_id when reporting it.",
    HTTPStatus.BAD_GATEWAY: "The FLARE server could not be reached or rejected the action.",
    HTTPStatus.SERVICE_UNAVAILABLE: (
        "The readiness probe cannot reach the database, or a report route has no readable signing key."
    ),
}


def _dependency_calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _dependency_calls(dependency)


def _route_errors(route: RouteContext, method: str) -> set[HTTPStatus]:
    calls = list(_dependency_calls(route.dependant))
    dependant = route.dependant
    statuses = {HTTPStatus.INTERNAL_SERVER_ERROR, *_ROUTE_ERRORS.get((method, route.path_format or ""), ())}
    if current_principal in calls:
        statuses.add(HTTPStatus.UNAUTHORIZED)
    # require_scope() returns a closure per scope, so it is recognised by its qualified name.
    if any(getattr(call, "__qualname__", "").startswith("require_scope.") for call in calls):
        statuses.add(HTTPStatus.FORBIDDEN)
    if get_signer in calls:
        statuses.add(HTTPStatus.SERVICE_UNAVAILABLE)
    if dependant.path_params:
        statuses.add(HTTPStatus.NOT_FOUND)
    if dependant.body_params:
        statuses.add(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
    if dependant.body_params or dependant.query_params or dependant.path_params:
        statuses.add(HTTPStatus.UNPROCESSABLE_ENTITY)
    return statuses


def _problem_response(status: HTTPStatus) -> dict[str, Any]:
    model = ValidationProblemPublic if status == HTTPStatus.UNPROCESSABLE_ENTITY else ProblemPublic
    return {
        "description": _DESCRIPTIONS.get(status, status.phrase),
        "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }


def _add_problem_schemas(components: dict[str, Any]) -> None:
    for model in (ProblemPublic, ValidationProblemPublic):
        schema = model.model_json_schema(ref_template=_REF)
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def _schema_model_examples() -> dict[str, list[Any]]:
    """Return the examples of every model in the ``admin_api.schemas`` modules, by schema title."""
    examples: dict[str, list[Any]] = {}
    for info in pkgutil.iter_modules(admin_api.schemas.__path__):
        module = importlib.import_module(f"{admin_api.schemas.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__ == module.__name__:
                schema = value.model_json_schema()
                if "examples" in schema:
                    examples[schema.get("title", value.__name__)] = schema["examples"]
    return examples


def _restore_examples(node: Any, examples: dict[str, list[Any]]) -> None:
    """Replace, anywhere under ``node``, the examples of a schema titled like one of our models with that model's."""
    if isinstance(node, dict):
        if "examples" in node and node.get("title") in examples:
            node["examples"] = examples[node["title"]]
        for child in node.values():
            _restore_examples(child, examples)
    elif isinstance(node, list):
        for child in node:
            _restore_examples(child, examples)


def document_problem_responses(app: FastAPI) -> None:
    """Make ``app.openapi()`` list each route's error responses with problem-details bodies, and keep example nulls.

    Call it after every router is included; the document is built on the first ``app.openapi()`` call.
    """
    build_default = app.openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build_default()
        # FastAPI 0.165 wraps included routers, so the routes are reached through their contexts, as FastAPI does.
        for route in iter_route_contexts(app.routes):
            if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
                continue
            for method in route.methods or ():
                operation = document["paths"][route.path_format][method.lower()]
                responses = operation.setdefault("responses", {})
                for status in _route_errors(route, method):
                    responses[str(status.value)] = _problem_response(status)
        _add_problem_schemas(document.setdefault("components", {}).setdefault("schemas", {}))
        _restore_examples(document, _schema_model_examples())
        app.openapi_schema = document
        return document

    app.openapi = build  # type: ignore[method-assign]
