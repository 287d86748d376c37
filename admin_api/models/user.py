"""ORM models of consortium users, their API tokens, and the read positions of ingested log files."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from admin_api.models.base import Base, UtcDateTime

__all__ = ["ApiToken", "LogCursor", "User"]


class User(Base):
    """A person of the consortium file, with the role the admin service grants them.

    Rows are never deleted, so audit events and tokens keep their user. A user removed from the consortium file is
    marked inactive, and their tokens stop working.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    org: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", order_by="ApiToken.id")


class ApiToken(Base):
    """A bearer token of one user. Only the SHA-256 digest of the token is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_pk: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_by: Mapped[str] = mapped_column(String(255))

    user: Mapped[User] = relationship(back_populates="tokens")


class LogCursor(Base):
    """How far an append-only log file has been ingested: the byte offset after the last ingested line.

    ``inode`` and ``head_sha256`` (digest of the file's first bytes) tell a rotated or replaced file from the one
    the offset belongs to.
    """

    __tablename__ = "log_cursors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(1024))
    inode: Mapped[int | None] = mapped_column(BigInteger)
    head_sha256: Mapped[str | None] = mapped_column(String(64))
    offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
