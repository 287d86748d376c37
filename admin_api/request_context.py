"""Context of the request being served, for log lines written anywhere below the route."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["request_id_var"]

request_id_var: ContextVar[str | None] = ContextVar("consortia_request_id", default=None)
"""Id of the HTTP request being served, or None outside a request (start-up, the reconciler thread)."""
