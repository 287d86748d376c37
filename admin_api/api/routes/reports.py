"""Report routes: signed job and period reports and the service's public signing key."""

from __future__ import annotations

import base64
import threading
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import AwareDatetime

from admin_api.api.deps import AuditReaderDep, ReportReaderDep, SessionDep
from admin_api.api.routes.jobs import _require_visible_job
from admin_api.errors import ConfigurationError
from admin_api.schemas.reports import SignedJobReportPublic, SignedPeriodReportPublic
from admin_api.services.reports import (
    InvalidPeriodError,
    SignedReport,
    render_signed_job_report,
    render_signed_period_report,
)
from admin_api.services.signing import ReportSigner, resolve_signing_key_path
from admin_api.settings import Settings

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

SIGNATURE_HEADER = "Consortia-Report-Signature"
"""Response header of CSV and PDF reports: the base64 of the signature statement to save as ``<file>.sig.json``."""
KEY_ID_HEADER = "Consortia-Key-Id"

_signer_lock = threading.Lock()
_FORMAT_DESCRIPTION = (
    "json (signature embedded), csv or pdf (signature statement in the Consortia-Report-Signature header)"
)


def get_signer(request: Request) -> ReportSigner:
    """Return the app's report signer, loading or creating the key on first use.

    Raises:
        HTTPException: 503 when no key path is configured or the key cannot be read or created.
    """
    signer: ReportSigner | None = getattr(request.app.state, "report_signer", None)
    if signer is not None:
        return signer
    settings: Settings = request.app.state.settings
    with _signer_lock:
        signer = getattr(request.app.state, "report_signer", None)
        if signer is None:
            try:
                key_path = resolve_signing_key_path(settings.report_signing_key, settings.workspace)
                signer = ReportSigner(key_path)
            except ConfigurationError as exc:
                raise HTTPException(503, detail=f"reports cannot be signed: {exc}") from exc
            request.app.state.report_signer = signer
    return signer


SignerDep = Annotated[ReportSigner, Depends(get_signer)]
FormatQuery = Annotated[Literal["json", "csv", "pdf"], Query(description=_FORMAT_DESCRIPTION)]


def _signed_response(report: SignedReport) -> Response:
    headers = {
        "Content-Disposition": f'attachment; filename="{report.file_name}"',
        KEY_ID_HEADER: report.statement.key_id,
    }
    if report.media_type != "application/json":
        headers[SIGNATURE_HEADER] = base64.b64encode(report.sidecar_json.encode("utf-8")).decode("ascii")
    media_type = report.media_type + ("; charset=utf-8" if report.media_type == "text/csv" else "")
    return Response(report.content, media_type=media_type, headers=headers)


def _report_responses(
    schema: type[SignedJobReportPublic | SignedPeriodReportPublic],
) -> dict[int | str, dict[str, object]]:
    return {
        200: {
            "description": (
                "The signed report. JSON embeds the signature statement under 'signature'; CSV and PDF carry it, "
                f"base64-encoded, in the {SIGNATURE_HEADER} header."
            ),
            "content": {
                "application/json": {"schema": schema.model_json_schema()},
                "text/csv": {"schema": {"type": "string"}},
                "application/pdf": {"schema": {"type": "string", "format": "binary"}},
            },
            "headers": {
                SIGNATURE_HEADER: {
                    "description": "CSV and PDF only: base64 of the SignatureStatementPublic JSON.",
                    "schema": {"type": "string"},
                },
                KEY_ID_HEADER: {"description": "Id of the signing key.", "schema": {"type": "string"}},
            },
        }
    }


@router.get("/public-key", response_class=Response, responses={
    200: {"description": "Ed25519 public key (PEM, SubjectPublicKeyInfo) that verifies every report.",
          "content": {"application/x-pem-file": {"schema": {"type": "string"},
                                                 "example": "-----BEGIN PUBLIC KEY-----\n...\n-----END PUBLIC KEY-----\n"}}},
})  # fmt: skip
def read_public_key(signer: SignerDep) -> Response:
    """Return the public key of the report signing key; it needs no token, because it is public.

    Compare the key id in the Consortia-Key-Id header with one obtained out of band before trusting the key.
    """
    return Response(
        signer.public_key_pem(), media_type="application/x-pem-file", headers={KEY_ID_HEADER: signer.key_id}
    )


@router.get("/jobs/{job_id}", response_class=Response, responses=_report_responses(SignedJobReportPublic))
def read_signed_job_report(
    job_id: str, session: SessionDep, principal: ReportReaderDep, signer: SignerDep, format: FormatQuery = "json"
) -> Response:
    """Return the signed audit report of a job: job, sites, training curve, contributions, privacy, timeline, chain head."""
    _require_visible_job(session, principal, job_id)
    return _signed_response(render_signed_job_report(session, job_id, format, signer))


@router.get("/period", response_class=Response, responses=_report_responses(SignedPeriodReportPublic))
def read_signed_period_report(
    session: SessionDep,
    _principal: AuditReaderDep,
    signer: SignerDep,
    start: Annotated[AwareDatetime, Query(description="Start, inclusive, ISO 8601 with Z or an offset.",
                                          examples=["2026-12-01T00:00:00Z"])],
    end: Annotated[AwareDatetime, Query(description="End, exclusive, ISO 8601 with Z or an offset.",
                                        examples=["2026-12-08T00:00:00Z"])],
    format: FormatQuery = "json",
) -> Response:  # fmt: skip
    """Return the signed report of the jobs active and audit events recorded between start and end."""
    try:
        return _signed_response(render_signed_period_report(session, start, end, format, signer))
    except InvalidPeriodError as exc:
        raise HTTPException(422, detail=str(exc)) from exc


__all__ = ["KEY_ID_HEADER", "SIGNATURE_HEADER", "get_signer", "router"]
