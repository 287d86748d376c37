"""API tokens of users: issue, authenticate, list and revoke.

A token is ``cst_`` followed by ``secrets.token_urlsafe(32)`` (32 random bytes, 43 characters). Only its SHA-256
digest is stored: a salted slow hash is unnecessary because 256 random bits cannot be guessed, and a plain digest can
be looked up by index. The token itself is returned once at issue and never logged. Issuing and revoking append
``token.issued`` and ``token.revoked`` audit events.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.core.chain import format_timestamp
from admin_api.errors import AuthenticationError, TokenNotFoundError
from admin_api.models import ApiToken, User
from admin_api.services.audit import append_audit_event, lock_chain
from admin_api.services.jobs import utc_now
from admin_api.services.users import require_user, user_target

__all__ = [
    "DEFAULT_EXPIRES_IN_DAYS",
    "MAX_EXPIRES_IN_DAYS",
    "TOKEN_PREFIX",
    "IssuedToken",
    "authenticate_user_token",
    "issue_token",
    "list_tokens",
    "revoke_token",
]

TOKEN_PREFIX = "cst_"
DEFAULT_EXPIRES_IN_DAYS = 90
MAX_EXPIRES_IN_DAYS = 365
_TOKEN_PATTERN = re.compile(r"cst_[A-Za-z0-9_-]{43}")
_ISSUE_HINT = "issue a new one with 'consortia users token NAME'"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A newly issued token: the secret, shown once, and its stored record."""

    token: str
    record: ApiToken


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(
    session: Session,
    user_name: str,
    *,
    expires_in_days: int = DEFAULT_EXPIRES_IN_DAYS,
    actor: str,
    role: str | None,
) -> IssuedToken:
    """Create a token for an active user, in the caller's transaction.

    Args:
        session: A write session; the caller commits.
        user_name: The user the token acts as.
        expires_in_days: Days until the token expires, 1 to 365.
        actor: Who issued it, for the audit event.
        role: The issuer's role, for the audit event.

    Raises:
        UserNotFoundError: No such user.
        ValueError: ``expires_in_days`` is out of range, or the user is inactive.
    """
    if not 1 <= expires_in_days <= MAX_EXPIRES_IN_DAYS:
        raise ValueError(f"expires_in_days is {expires_in_days}; use 1 to {MAX_EXPIRES_IN_DAYS}")
    lock_chain(session)
    user = require_user(session, user_name)
    if not user.active:
        raise ValueError(
            f"user {user_name!r} is no longer in the consortium file; add them back before issuing a token"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utc_now()
    record = ApiToken(
        token_id="tok_" + secrets.token_hex(6),
        token_sha256=_digest(token),
        user_pk=user.id,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days),
        created_by=actor,
    )
    session.add(record)
    session.flush()
    append_audit_event(
        session,
        occurred_at=now,
        actor=actor,
        role=role,
        action="token.issued",
        target=user_target(user.name),
        details={"token_id": record.token_id, "expires_at": format_timestamp(record.expires_at)},
    )
    return IssuedToken(token=token, record=record)


def revoke_token(session: Session, token_id: str, *, actor: str, role: str | None) -> ApiToken:
    """Revoke a token in the caller's transaction; revoking a revoked token changes nothing.

    Raises:
        TokenNotFoundError: No token has this id.
    """
    lock_chain(session)
    record = session.scalar(select(ApiToken).where(ApiToken.token_id == token_id))
    if record is None:
        raise TokenNotFoundError(token_id)
    if record.revoked_at is not None:
        return record
    record.revoked_at = utc_now()
    append_audit_event(
        session,
        occurred_at=record.revoked_at,
        actor=actor,
        role=role,
        action="token.revoked",
        target=user_target(record.user.name),
        details={"token_id": record.token_id},
    )
    return record


def list_tokens(session: Session) -> list[ApiToken]:
    """Return every token record with its user, oldest first."""
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def authenticate_user_token(session: Session, presented: str, *, now: datetime) -> tuple[User, ApiToken]:
    """Return the active user and token record of a presented user token.

    Raises:
        AuthenticationError: The token is malformed, unknown, expired or revoked, or its user left the consortium
            file. The message names the token id when known, never the token.
    """
    if not _TOKEN_PATTERN.fullmatch(presented):
        raise AuthenticationError(
            f"malformed bearer token: a user token is {TOKEN_PREFIX!r} followed by 43 URL-safe characters; "
            f"copy it again in full, or {_ISSUE_HINT}"
        )
    record = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == _digest(presented)))
    if record is None:
        raise AuthenticationError(
            f"unknown bearer token; it was never issued here or its database was reset; {_ISSUE_HINT}"
        )
    if record.revoked_at is not None:
        raise AuthenticationError(
            f"bearer token {record.token_id} was revoked at {format_timestamp(record.revoked_at)}; {_ISSUE_HINT}"
        )
    if record.expires_at <= now:
        raise AuthenticationError(
            f"bearer token {record.token_id} expired at {format_timestamp(record.expires_at)}; {_ISSUE_HINT}"
        )
    user = record.user
    if not user.active:
        raise AuthenticationError(
            f"bearer token {record.token_id} belongs to {user.name}, who is no longer in the consortium file; "
            "ask a project admin to add the user back"
        )
    return user, record
