"""Read schemas of users and of the caller's identity."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PrincipalPublic", "UserPublic", "UsersPublic"]


class UserPublic(BaseModel):
    """A user of the consortium file as synced into the admin service."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    org: str
    role: str
    active: bool = Field(description="False once the user was removed from the consortium file.")
    created_at: datetime
    updated_at: datetime


class UsersPublic(BaseModel):
    """Users visible to the caller."""

    data: list[UserPublic]
    count: int


class PrincipalPublic(BaseModel):
    """Who the caller is, as the admin service authenticated it."""

    name: str
    kind: str = Field(description="user, service (CONSORTIA_API_TOKEN) or forwarder (CONSORTIA_EVENT_TOKEN).")
    role: str | None
    org: str | None
    scopes: list[str]
    token_id: str | None
