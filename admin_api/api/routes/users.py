"""User routes: the caller's identity and the users of the consortium file."""

from __future__ import annotations

from fastapi import APIRouter

from admin_api.api.auth import visible_org
from admin_api.api.deps import AuthenticatedDep, SessionDep, UserReaderDep
from admin_api.schemas.users import PrincipalPublic, UserPublic, UsersPublic
from admin_api.services.users import list_users

router = APIRouter(prefix="/api/v1/users", tags=["users"])


@router.get("/me")
def read_current_principal(principal: AuthenticatedDep) -> PrincipalPublic:
    """Return who the presented token authenticates as, with its role and scopes."""
    return PrincipalPublic(
        name=principal.name,
        kind=principal.kind.value,
        role=principal.role.value if principal.role is not None else None,
        org=principal.org,
        scopes=sorted(scope.value for scope in principal.scopes),
        token_id=principal.token_id,
    )


@router.get("")
def read_users(session: SessionDep, principal: UserReaderDep) -> UsersPublic:
    """List users by name; an org admin sees only the users of its org."""
    users = list_users(session, org=visible_org(principal))
    return UsersPublic(data=[UserPublic.model_validate(user) for user in users], count=len(users))
