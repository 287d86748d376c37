"""Annotated dependency aliases for routes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from admin_api.api.auth import Principal, Scope, require_scope
from admin_api.db import Database
from admin_api.settings import Settings

__all__ = ["DatabaseDep", "EventWriterDep", "ReaderDep", "SessionDep", "SettingsDep", "WriteSessionDep"]


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
EventWriterDep = Annotated[Principal, Depends(require_scope(Scope.EVENTS_WRITE))]
ReaderDep = Annotated[Principal, Depends(require_scope(Scope.READ))]
