"""Read schemas of users and of the caller's identity."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PrincipalPublic", "UserPublic", "UsersPublic"]

_USER_EXAMPLE: dict[str, Any] = {
    "name": "lead@hospital-a.org",
    "org": "hospital_a",
    "role": "lead",
    "active": True,
    "created_at": "2026-12-04T17:55:02.000000Z",
    "updated_at": "2026-12-04T17:55:02.000000Z",
}


class UserPublic(BaseModel):
    """A user of the consortium file as synced into the admin service."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_USER_EXAMPLE]})

    name: str
    org: str
    role: str
    active: bool = Field(description="False once the user was removed from the consortium file.")
    created_at: datetime
    updated_at: datetime


class UsersPublic(BaseModel):
    """Users visible to the caller."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "data": [
                        _USER_EXAMPLE,
                        {**_USER_EXAMPLE, "name": "it@hospital-a.org", "role": "org_admin", "active": False},
                    ],
                    "count": 2,
                }
            ]
        }
    )

    data: list[UserPublic]
    count: int


class PrincipalPublic(BaseModel):
    """Who the caller is, as the admin service authenticated it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "compliance@consortium.org",
                    "kind": "user",
                    "role": "compliance_officer",
                    "org": "consortium",
                    "scopes": ["audit:read", "read", "reports:read", "users:read"],
                    "token_id": "tok_3f9a1c7e5b2d",
                },
                {
                    "name": "api-client",
                    "kind": "service",
                    "role": "project_admin",
                    "org": None,
                    "scopes": ["audit:read", "jobs:abort", "jobs:submit", "read", "reports:read", "users:read"],
                    "token_id": None,
                },
            ]
        }
    )

    name: str
    kind: str = Field(description="user, service (CONSORTIA_API_TOKEN) or forwarder (CONSORTIA_EVENT_TOKEN).")
    role: str | None
    org: str | None
    scopes: list[str]
    token_id: str | None
