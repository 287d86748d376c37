"""Schema of the consortium file (``provisioning/consortium.yml``).

The consortium file is the single description of a federation: its server, its sites, its users and their
roles, and optionally the demo data each site receives. It is validated here once, with errors that name the
field, the value and the fix, before anything is handed to FLARE's provisioner.

Name rules come from NVIDIA FLARE itself (``nvflare.apis.utils.format_check.name_check``) so that a file accepted
here is never rejected later by the provisioner.

Exceptions:
    ConsortiumFileError: the file is missing, is not YAML, or does not match the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from nvflare.apis.utils.format_check import name_check
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app_custom.flare.site_policy_guard import SitePolicy

FLARE_ROLES = ("project_admin", "org_admin", "lead", "member")
"""Roles defined by FLARE's default authorization policy. Users with these roles get an admin kit."""

ROLES = (*FLARE_ROLES, "compliance_officer")
"""Every role a consortium user may hold. ``compliance_officer`` exists only in the admin service."""

Port = int | Literal["auto"]


class ConsortiumFileError(ValueError):
    """Raised when the consortium file cannot be read or is invalid."""


def _check_name(value: str, entity_type: str, what: str) -> str:
    invalid, _ = name_check(value, entity_type)
    if invalid:
        hints = {
            "org": "use only letters, digits and underscores (for example 'hospital_a')",
            "client": "use only letters, digits, '-' and '_' (for example 'hospital-a')",
            "admin": "use an e-mail address (for example 'lead@hospital-a.org')",
            "server": "use a DNS host name (for example 'fl.consortium.example' or 'localhost')",
            "host_name": "use a DNS host name (for example 'fl.consortium.example' or 'localhost')",
        }
        raise ValueError(f"invalid {what} {value!r}: {hints.get(entity_type, 'see FLARE naming rules')}")
    return value


def _check_port(value: Port) -> Port:
    if value == "auto":
        return value
    if not 1024 <= value <= 65535:
        raise ValueError(f"invalid port {value}: use a number between 1024 and 65535, or 'auto'")
    return value


def _name_rule(entity_type: str, label: str) -> AfterValidator:
    """Return a validator that applies FLARE's naming rule for ``entity_type`` and names the value ``label``."""
    return AfterValidator(lambda value: _check_name(value, entity_type, label))


ServerName = Annotated[str, _name_rule("server", "server name")]
ServerOrg = Annotated[str, _name_rule("org", "server org")]
HostName = Annotated[str, _name_rule("host_name", "server host name")]
ServiceIdentity = Annotated[str, _name_rule("admin", "admin service identity")]
SiteName = Annotated[str, _name_rule("client", "site name")]
SiteOrg = Annotated[str, _name_rule("org", "site org")]
UserName = Annotated[str, _name_rule("admin", "user name")]
UserOrg = Annotated[str, _name_rule("org", "user org")]
CheckedPort = Annotated[Port, AfterValidator(_check_port)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSpec(_Strict):
    """The FLARE server: its TLS identity, organisation and ports."""

    name: ServerName
    org: ServerOrg
    fed_learn_port: CheckedPort = "auto"
    admin_port: CheckedPort = "auto"
    host_names: list[HostName] = Field(default_factory=list)


class AdminServiceSpec(_Strict):
    """The admin service: the FLARE identity it acts with and its HTTP port."""

    identity: ServiceIdentity = "service@consortium.org"
    port: CheckedPort = "auto"


class SiteSpec(_Strict):
    """A participating institution (FLARE's client) and its site-local policy (safe defaults when omitted)."""

    name: SiteName
    org: SiteOrg
    policy: SitePolicy = Field(default_factory=SitePolicy)


class UserSpec(_Strict):
    """A person with a role in the consortium."""

    name: UserName
    org: UserOrg
    role: str

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"unknown role {value!r}: use one of {', '.join(ROLES)}")
        return value

    @property
    def has_flare_kit(self) -> bool:
        """Whether this user gets a FLARE admin kit (compliance officers only use the admin service)."""
        return self.role in FLARE_ROLES


class DemoDataSpec(_Strict):
    """Settings of the demo's split of a packaged clinical dataset across the sites."""

    dataset: Literal["flchain"] = "flchain"
    seed: int = 20260
    label_skew_alpha: Annotated[float, Field(gt=0, le=1000)] = 1.0
    test_fraction: Annotated[float, Field(gt=0, lt=0.9)] = 0.2


class Consortium(_Strict):
    """A whole consortium file."""

    project: str
    description: str = ""
    server: ServerSpec
    admin_service: AdminServiceSpec = Field(default_factory=AdminServiceSpec)
    sites: Annotated[list[SiteSpec], Field(min_length=1)]
    users: list[UserSpec] = Field(default_factory=list)
    demo_data: DemoDataSpec | None = None

    @field_validator("project")
    @classmethod
    def _project(cls, value: str) -> str:
        return _check_name(value, "org", "project name")

    @model_validator(mode="after")
    def _unique_names(self) -> Consortium:
        names = [self.server.name, self.admin_service.identity]
        names += [s.name for s in self.sites] + [u.name for u in self.users]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise ValueError(f"duplicate participant name {name!r}: every server, site and user needs its own name")
            seen.add(name)
        return self

    @property
    def flare_users(self) -> list[UserSpec]:
        """Users that get a FLARE admin kit, with the admin service's identity first."""
        service = UserSpec(name=self.admin_service.identity, org=self.server.org, role="project_admin")
        return [service, *[u for u in self.users if u.has_flare_kit]]

    def users_with_role(self, role: str) -> list[UserSpec]:
        """Return the users holding ``role``."""
        return [u for u in self.users if u.role == role]


def load_consortium(path: str | Path) -> Consortium:
    """Read and validate a consortium file.

    Raises:
        ConsortiumFileError: naming the file and every invalid field with its value.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConsortiumFileError(f"consortium file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConsortiumFileError(f"consortium file {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConsortiumFileError(f"consortium file {path} must be a YAML mapping with 'project', 'server', 'sites'")
    try:
        return Consortium.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"  {location}: {message}")
        raise ConsortiumFileError(f"consortium file {path} is invalid:\n" + "\n".join(problems)) from None
