"""Operations routes: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response

from admin_api.api.deps import ReaderDep, SessionDep, SettingsDep
from admin_api.services.metrics import CONTENT_TYPE, render_metrics

router = APIRouter(tags=["operations"])

_EXAMPLE = """# HELP consortia_jobs Jobs recorded with each FLARE status.
# TYPE consortia_jobs gauge
consortia_jobs{status="RUNNING"} 1.0
consortia_jobs{status="FINISHED:COMPLETED"} 12.0
# TYPE consortia_events_ingested_total counter
consortia_events_ingested_total 1843.0
"""


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"description": "Prometheus text exposition format 0.0.4.",
                     "content": {"text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE}}}},
)  # fmt: skip
def read_metrics(session: SessionDep, _principal: ReaderDep, settings: SettingsDep) -> Response:
    """Return jobs by status, expiring certificates, events ingested and duplicates, the last chain check and latency.

    Scrape it with the read token (Prometheus ``authorization: {credentials: <CONSORTIA_API_TOKEN>}``).
    """
    return Response(render_metrics(session, cert_warn_days=settings.cert_warn_days), media_type=CONTENT_TYPE)
