"""ASGI middleware: request ids with one access log line per request, and a request body size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid
from http import HTTPStatus

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admin_api.api.problems import problem_response
from admin_api.request_context import request_id_var
from admin_api.services.metrics import observe_request

__all__ = ["BodySizeLimitMiddleware", "RequestIdMiddleware"]

logger = logging.getLogger("admin_api.access")

_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PROBE_PATHS = frozenset({"/healthz", "/readyz"})


class RequestIdMiddleware:
    """Tag each request with an id (the client's ``X-Request-ID`` if valid, else a new one) and log it once done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        presented = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = presented if _VALID_REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode("ascii"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # Successful probes arrive every few seconds, so they are logged at DEBUG to keep the log readable.
            duration_s = time.perf_counter() - started
            # The route template, set by the router, keeps one latency series per route instead of one per job id.
            route = getattr(scope.get("route"), "path", "unmatched")
            observe_request(scope["method"], route, status_code, duration_s)
            quiet = scope["path"] in _PROBE_PATHS and status_code < 400
            logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %d",
                scope["method"],
                scope["path"],
                status_code,
                extra={"status": status_code, "duration_ms": round(duration_s * 1000, 1)},
            )
            request_id_var.reset(token)


class NulByteMiddleware:
    """Reject a path or query string that contains a NUL byte with 422 problem details.

    PostgreSQL text cannot contain NUL, so such a value would fail in the database with a 500. SQLite would accept it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope.get("query_string") or b""
            if "\x00" in scope["path"] or b"%00" in query or b"\x00" in query:
                detail = "the request path or query contains a NUL byte (%00), which no name or id can contain; remove it"
                logger.info("rejected a request with a NUL byte in %s", scope["path"].replace("\x00", "%00"))
                response = problem_response(Request(scope), HTTPStatus.UNPROCESSABLE_ENTITY, detail, code="validation-error")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodySizeLimitMiddleware:
    """Reject a request body larger than ``max_bytes`` with 413 problem details.

    A declared Content-Length over the limit is rejected before the app runs. A streamed body is counted while the
    route reads it, and passing the limit raises an HTTPException(413) that the problem handlers render.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _detail(self) -> str:
        return f"request body exceeds {self.max_bytes} bytes; send events in smaller batches"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = problem_response(
                Request(scope), HTTPStatus.REQUEST_ENTITY_TOO_LARGE, self._detail(), code="request-entity-too-large"
            )
            await response(scope, receive, send)
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value, self._detail())
            return message

        await self.app(scope, counting_receive, send)
