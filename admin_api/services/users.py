"""Users: synced from the consortium file into the ``users`` table, with an audit event for every change.

The consortium file (``<workspace>/consortium.yml``, validated by ``provisioning.schema.load_consortium``) is the
only source of users and roles. A sync adds new users, applies changed orgs and roles, and marks users that left the
file inactive, so their tokens stop working. Rows are never deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from admin_api.errors import ConfigurationError, UserNotFoundError
from admin_api.models import User
from admin_api.services.audit import SYSTEM_ROLE, append_audit_event, lock_chain
from admin_api.services.jobs import utc_now
from provisioning.schema import Consortium, ConsortiumFileError, UserSpec, load_consortium

__all__ = [
    "CONSORTIUM_FILE_NAME",
    "SYNC_ACTOR",
    "ConsortiumDirectory",
    "UserSyncResult",
    "get_user",
    "list_users",
    "load_directory",
    "require_user",
    "sync_users",
    "user_target",
]

logger = logging.getLogger(__name__)

CONSORTIUM_FILE_NAME = "consortium.yml"
"""Name of the consortium file that provisioning copies into the workspace."""

SYNC_ACTOR = "consortia-user-sync"
"""Audit actor of user changes made by a sync."""


@dataclass(frozen=True, slots=True)
class ConsortiumDirectory:
    """The users and site orgs of a consortium file."""

    users: tuple[UserSpec, ...] = ()
    site_orgs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_consortium(cls, consortium: Consortium) -> ConsortiumDirectory:
        """Build the directory of a validated consortium file."""
        return cls(users=tuple(consortium.users), site_orgs={site.name: site.org for site in consortium.sites})


@dataclass(frozen=True, slots=True)
class UserSyncResult:
    """Names of the users a sync added, changed and deactivated."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deactivated: list[str] = field(default_factory=list)


def user_target(name: str) -> str:
    """Return the audit target of a user, ``user:<name>``."""
    return f"user:{name}"


def load_directory(workspace: Path) -> ConsortiumDirectory:
    """Read the consortium file of a workspace.

    Raises:
        ConfigurationError: The file is missing or invalid; the message names the file and the fix.
    """
    path = workspace / CONSORTIUM_FILE_NAME
    if not path.is_file():
        raise ConfigurationError(
            f"consortium file not found at {path}; provision the workspace with 'consortia provision' or point "
            "CONSORTIA_WORKSPACE at a provisioned workspace"
        )
    try:
        return ConsortiumDirectory.from_consortium(load_consortium(path))
    except ConsortiumFileError as exc:
        raise ConfigurationError(str(exc)) from None


def get_user(session: Session, name: str) -> User | None:
    """Return the user called ``name``, or None."""
    return session.scalar(select(User).where(User.name == name))


def require_user(session: Session, name: str) -> User:
    """Return the user called ``name``.

    Raises:
        UserNotFoundError: No such user was synced from the consortium file.
    """
    user = get_user(session, name)
    if user is None:
        raise UserNotFoundError(name)
    return user


def list_users(session: Session, *, org: str | None = None) -> list[User]:
    """Return users by name, only those of ``org`` when given."""
    statement = select(User).order_by(User.name)
    if org is not None:
        statement = statement.where(User.org == org)
    return list(session.scalars(statement))


def _audit_user_change(session: Session, name: str, action: str, details: dict[str, object]) -> None:
    append_audit_event(
        session,
        occurred_at=utc_now(),
        actor=SYNC_ACTOR,
        role=SYSTEM_ROLE,
        action=action,
        target=user_target(name),
        details={"source": "consortium_file", **details},
    )


def _apply_spec(session: Session, user: User | None, spec: UserSpec, result: UserSyncResult) -> None:
    now = utc_now()
    if user is None:
        session.add(User(name=spec.name, org=spec.org, role=spec.role, active=True, created_at=now, updated_at=now))
        _audit_user_change(session, spec.name, "user.added", {"org": spec.org, "role": spec.role})
        result.added.append(spec.name)
        return
    before = {"org": user.org, "role": user.role, "active": user.active}
    after = {"org": spec.org, "role": spec.role, "active": True}
    if before == after:
        return
    user.org, user.role, user.active, user.updated_at = spec.org, spec.role, True, now
    _audit_user_change(session, spec.name, "user.changed", {"before": before, "after": after})
    result.changed.append(spec.name)


def sync_users(session: Session, users: Sequence[UserSpec]) -> UserSyncResult:
    """Make the ``users`` table match the consortium file's users, in the caller's transaction.

    Args:
        session: A write session; the caller commits.
        users: The users of the consortium file.

    Returns:
        Who was added, changed and deactivated; every change also has an audit event.
    """
    lock_chain(session)
    result = UserSyncResult()
    known = {user.name: user for user in session.scalars(select(User))}
    for spec in users:
        _apply_spec(session, known.get(spec.name), spec, result)
    listed = {spec.name for spec in users}
    for name, user in sorted(known.items()):
        if name not in listed and user.active:
            user.active = False
            user.updated_at = utc_now()
            _audit_user_change(session, name, "user.deactivated", {"reason": "not in the consortium file"})
            result.deactivated.append(name)
    session.flush()
    if result.added or result.changed or result.deactivated:
        logger.info(
            "users synced: %d added, %d changed, %d deactivated",
            len(result.added),
            len(result.changed),
            len(result.deactivated),
        )
    return result
