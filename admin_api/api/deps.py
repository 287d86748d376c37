"""Annotated dependency aliases for routes.

Each ``...Dep`` alias that yields a ``Principal`` authenticates the request and requires one scope of the role matrix
in ``admin_api.api.auth``; routes never decide access themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from admin_api.api.auth import Principal, Scope, current_principal, require_scope
from admin_api.db import Database
from admin_api.services.flare_actions import FlareActions
from admin_api.settings import Settings

__all__ = [
    "AbortJobsDep",
    "AuditReaderDep",
    "AuthenticatedDep",
    "CertificateReaderDep",
    "DatabaseDep",
    "EventWriterDep",
    "FlareActionsDep",
    "PrivacyReaderDep",
    "ReaderDep",
    "ReportReaderDep",
    "SessionDep",
    "SettingsDep",
    "SubmitJobsDep",
    "UserReaderDep",
    "WriteSessionDep",
]


def get_settings(request: Request) -> Settings:
    """Return the settings the app was created with."""
    return request.app.state.settings  # type: ignore[no-any-return]


def get_database(request: Request) -> Database:
    """Return the app's database, opened at start-up."""
    return request.app.state.database  # type: ignore[no-any-return]


def get_session(request: Request) -> Iterator[Session]:
    """Yield a read session for one request."""
    with get_database(request).session() as session:
        yield session


def get_write_session(request: Request) -> Iterator[Session]:
    """Yield a write session for one request; services commit it."""
    with get_database(request).write_session() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[Session, Depends(get_session)]
WriteSessionDep = Annotated[Session, Depends(get_write_session)]
AuthenticatedDep = Annotated[Principal, Depends(current_principal)]
EventWriterDep = Annotated[Principal, Depends(require_scope(Scope.EVENTS_WRITE))]
ReaderDep = Annotated[Principal, Depends(require_scope(Scope.READ))]
AuditReaderDep = Annotated[Principal, Depends(require_scope(Scope.AUDIT_READ))]
ReportReaderDep = Annotated[Principal, Depends(require_scope(Scope.REPORTS_READ))]
UserReaderDep = Annotated[Principal, Depends(require_scope(Scope.USERS_READ))]
SubmitJobsDep = Annotated[Principal, Depends(require_scope(Scope.JOBS_SUBMIT))]
AbortJobsDep = Annotated[Principal, Depends(require_scope(Scope.JOBS_ABORT))]
PrivacyReaderDep = Annotated[Principal, Depends(require_scope(Scope.PRIVACY_READ))]
CertificateReaderDep = Annotated[Principal, Depends(require_scope(Scope.CERTIFICATES_READ))]


def get_flare_actions(request: Request) -> FlareActions | None:
    """Return the app's FLARE connection for submissions and aborts, or None when no admin kit is configured."""
    return getattr(request.app.state, "flare_actions", None)


FlareActionsDep = Annotated[FlareActions | None, Depends(get_flare_actions)]
