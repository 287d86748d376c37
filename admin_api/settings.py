"""Settings of the admin service, read from ``CONSORTIA_*`` environment variables.

Tokens are ``SecretStr`` so they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from admin_api.errors import ConfigurationError

__all__ = ["MIN_TOKEN_LENGTH", "Settings", "load_settings"]

MIN_TOKEN_LENGTH = 32
"""Minimum token length: 32 characters of ``secrets.token_urlsafe`` carry about 190 bits."""

_MIN_DISTINCT_TOKEN_CHARS = 10
_PLACEHOLDER_FRAGMENTS = (
    "changeme",
    "change-me",
    "change_me",
    "changethis",
    "placeholder",
    "example",
    "your-token",
    "your_token",
    "yourtoken",
    "replace-me",
    "replaceme",
    "secret-token",
    "insert-token",
)
_TOKEN_HINT = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _check_token(name: str, token: SecretStr) -> SecretStr:
    """Reject a short, placeholder or low-entropy token without echoing its value."""
    value = token.get_secret_value()
    if len(value) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{name} is {len(value)} characters long but needs at least {MIN_TOKEN_LENGTH}; {_TOKEN_HINT}")
    lowered = value.lower()
    for fragment in _PLACEHOLDER_FRAGMENTS:
        if fragment in lowered:
            raise ValueError(f"{name} contains the placeholder text {fragment!r}; {_TOKEN_HINT}")
    if len(set(value)) < _MIN_DISTINCT_TOKEN_CHARS:
        raise ValueError(
            f"{name} uses only {len(set(value))} distinct characters, which looks like a placeholder; {_TOKEN_HINT}"
        )
    if any(char.isspace() for char in value):
        raise ValueError(f"{name} contains whitespace; {_TOKEN_HINT}")
    return token


class Settings(BaseSettings):
    """Configuration of the admin service.

    Every field is read from the environment variable ``CONSORTIA_<FIELD>``, for example
    ``CONSORTIA_EVENT_TOKEN``.
    """

    model_config = SettingsConfigDict(env_prefix="CONSORTIA_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="sqlite:///./consortia-admin.sqlite",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host:port/db.",
    )
    event_token: SecretStr = Field(
        description="Bearer token the FLARE event forwarder sends to POST /api/v1/events.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the read API. While unset, read routes return 401.",
    )
    workspace: Path | None = Field(
        default=None,
        description="Consortia workspace folder; the report signing key defaults to secrets/report_signing_key.pem in it.",
    )
    report_signing_key: Path | None = Field(
        default=None,
        description="PEM file of the Ed25519 key that signs reports; created with mode 0600 when missing.",
    )
    flare_admin_kit: Path | None = Field(
        default=None,
        description="FLARE admin startup kit folder (contains startup/fed_admin.json); enables the reconciler.",
    )
    flare_admin_user: str | None = Field(
        default=None, description="FLARE admin user name of that kit, for example admin@hq.org."
    )
    flare_timeout_s: Annotated[float, Field(gt=0, le=300)] = Field(
        default=15.0, description="Seconds to wait when connecting to the FLARE server."
    )
    reconcile_interval_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=5.0, description="Seconds between two reconciler passes over FLARE's job list."
    )
    cert_warn_days: Annotated[int, Field(ge=0, le=3650)] = Field(
        default=30,
        description="Certificates expiring in fewer days than this get a warning in /api/v1/sites/certificates.",
    )
    host: str = Field(default="127.0.0.1", description="Interface uvicorn binds to.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8080, description="TCP port uvicorn listens on.")

    @field_validator("event_token")
    @classmethod
    def _validate_event_token(cls, value: SecretStr) -> SecretStr:
        return _check_token("CONSORTIA_EVENT_TOKEN", value)

    @field_validator("api_token")
    @classmethod
    def _validate_api_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        return _check_token("CONSORTIA_API_TOKEN", value)

    @field_validator("database_url")
    @classmethod
    def _validate_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql+psycopg://")):
            raise ValueError(
                f"CONSORTIA_DATABASE_URL scheme of {value.split('://', 1)[0]!r} is not supported; "
                "use sqlite:///path/to/file.sqlite or postgresql+psycopg://user@host:5432/dbname"
            )
        return value

    @model_validator(mode="after")
    def _validate_cross_fields(self) -> Settings:
        if self.api_token is not None and self.api_token.get_secret_value() == self.event_token.get_secret_value():
            raise ValueError(
                "CONSORTIA_API_TOKEN equals CONSORTIA_EVENT_TOKEN; use two different tokens so a leaked forwarder "
                "token cannot read the API"
            )
        if self.flare_admin_kit is not None:
            if not self.flare_admin_user:
                raise ValueError(
                    "CONSORTIA_FLARE_ADMIN_KIT is set but CONSORTIA_FLARE_ADMIN_USER is missing; "
                    "set it to the admin user the kit was provisioned for, for example admin@hq.org"
                )
            fed_admin = self.flare_admin_kit / "startup" / "fed_admin.json"
            if not fed_admin.is_file():
                raise ValueError(
                    f"CONSORTIA_FLARE_ADMIN_KIT={str(self.flare_admin_kit)!r} has no startup/fed_admin.json; "
                    "point it at the admin kit folder that contains startup/"
                )
        return self


def load_settings() -> Settings:
    """Read the settings from the environment.

    Returns:
        The validated settings.

    Raises:
        ConfigurationError: A variable is missing or invalid. The message names each one and the fix.
    """
    try:
        return Settings()  # type: ignore[call-arg]  # fields come from the environment
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            field = str(error["loc"][0]).upper() if error["loc"] else ""
            location = f"CONSORTIA_{field}: " if field else ""
            problems.append(f"{location}{error['msg']}")
        # "from None" drops the ValidationError, whose text would include the rejected token.
        raise ConfigurationError("invalid admin service settings: " + "; ".join(problems)) from None
