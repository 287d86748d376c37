"""Event schema, version 1: what the FLARE event forwarder posts to ``POST /api/v1/events``.

An event is an envelope with a ``type`` and a type-specific ``payload``::

    {"schema_version": 1, "event_id": "<uuid>", "type": "round.completed", "occurred_at": "2026-12-04T19:14:21Z",
     "job_id": "<flare job id>", "site": null, "round": 0, "actor": null, "payload": {...}}

Unknown envelope fields are rejected. Payloads keep unknown fields, which are stored in the audit event as sent, so a
forwarder may add context without a schema change. Which envelope fields a type requires:

==========================  ======  ====  =====  ==========================================================
type                        job_id  site  round  payload
==========================  ======  ====  =====  ==========================================================
job.submitted               yes                  name, submitter, submitter_org, submitter_role
job.started                 yes                  sites, name?, num_rounds?, submitter?, submitter_org?, ...
round.started               yes           yes    num_rounds, sites
contribution.accepted       yes     yes   yes    num_examples, metrics
contribution.rejected       yes     yes   yes    reason_code, reason
round.completed             yes           yes    num_accepted, num_rejected, global_metrics, site_metrics
job.finished                yes                  status (a FINISHED:* status)
site.joined                         yes          org?
site.left                           yes          reason?, revoked?, certificate_fingerprint?
privacy.spent               yes                  epsilon, delta, mechanism?, epsilon_budget?, ...
kit.issued                          site?        participant, role, certificate_fingerprint, expires_at
==========================  ======  ====  =====  ==========================================================

Some optional payload fields are not declared in the models below; they are kept as sent, and the handlers read them
when present: a ``site.left`` with ``revoked: true`` revokes the site's certificates, and ``privacy.spent`` takes
``mechanism`` (``dp-sgd``, ``dp-fedavg``), ``epsilon_budget`` and ``epsilon_remaining`` into the privacy ledger.
"""

from __future__ import annotations

import math
from datetime import UTC
from typing import Annotated, Any, ClassVar, Literal, get_args
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
    model_validator,
)

from admin_api.core.status import JobStatus, is_terminal

__all__ = [
    "EVENT_MODELS",
    "MAX_BATCH_SIZE",
    "SCHEMA_VERSION",
    "ContributionAcceptedEvent",
    "ContributionRejectedEvent",
    "EventBase",
    "EventBatchReceiptPublic",
    "EventCreate",
    "EventReceiptPublic",
    "JobFinishedEvent",
    "JobStartedEvent",
    "JobSubmittedEvent",
    "Metrics",
    "PrivacySpentEvent",
    "RoundCompletedEvent",
    "RoundStartedEvent",
    "SiteJoinedEvent",
    "SiteLeftEvent",
]

SCHEMA_VERSION = 1
MAX_BATCH_SIZE = 500
_MAX_JSON_DEPTH = 16

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
SiteName = Annotated[str, StringConstraints(pattern=SITE_NAME_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255)]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@ -]{0,63}$")]
# Strict numbers: a bool or a numeric string in a count or metric is a forwarder bug, not a value to coerce.
# The upper bound keeps every count inside PostgreSQL's BIGINT (2**63 - 1), so a bad value is a 422, not a 500.
Count = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
# Rounds and example counts are stored in 32-bit INTEGER columns, so their bound is PostgreSQL's INTEGER maximum.
Int32Count = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
MetricValue = StrictBool | StrictInt | FiniteFloat | None
Metrics = dict[MetricName, MetricValue]
"""Metric name (loss, roc_auc, accuracy, num_examples, ...) to a number, a boolean flag, or None when undefined."""


def _check_json_value(value: Any, path: str, depth: int = 0) -> None:
    """Reject JSON that cannot be stored and hashed the same way on SQLite and PostgreSQL."""
    if depth > _MAX_JSON_DEPTH:
        raise ValueError(f"{path} is nested deeper than {_MAX_JSON_DEPTH} levels; flatten the payload")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} is {value!r}; use null for an undefined number, JSON has no NaN or Infinity")
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path} key")
            _check_json_value(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


def _check_text(text: str, path: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{path} contains a NUL character (\\u0000), which the database cannot store; remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path} contains a lone UTF-16 surrogate; send valid Unicode text") from None


def _check_envelope(value: Any) -> Any:
    """Check the schema version and JSON values before the event type selects a model."""
    if not isinstance(value, dict):
        return value
    version = value.get("schema_version")
    if "schema_version" in value and (type(version) is not int or version != SCHEMA_VERSION):
        raise ValueError(
            f"unsupported schema_version {version!r}; this service accepts schema_version {SCHEMA_VERSION}, "
            "so upgrade the admin service or configure the forwarder for version 1"
        )
    _check_json_value(value, "event")
    return value


_EXAMPLE_ENVELOPE: dict[str, Any] = {
    "schema_version": 1,
    "event_id": "5b0f3c3e-9d1a-4f3e-8a4b-2f1d6c7e8a90",
    "occurred_at": "2026-12-04T19:14:21Z",
    "job_id": "4f1c2a9e-0b7d-4c55-9e1a-3d2b6f8e7c10",
    "site": None,
    "round": None,
    "actor": None,
}
_EXAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "job.submitted": {"name": "fedavg_clinical", "submitter": "lead@hospital-a.org", "submitter_org": "hospital_a",
                      "submitter_role": "lead"},
    "job.started": {"sites": ["hospital-a", "hospital-b"], "name": "fedavg_clinical", "num_rounds": 5},
    "round.started": {"num_rounds": 5, "sites": ["hospital-a", "hospital-b"]},
    "contribution.accepted": {"num_examples": 1523, "metrics": {"loss": 0.41, "roc_auc": 0.83}},
    "contribution.rejected": {"reason_code": "non_finite", "reason": "update of layer fc1.weight contains NaN"},
    "round.completed": {"num_accepted": 2, "num_rejected": 0, "global_metrics": {"loss": 0.38, "roc_auc": 0.84},
                        "site_metrics": {"hospital-a": {"roc_auc": 0.85}}},
    "job.finished": {"status": "FINISHED:COMPLETED"},
    "site.joined": {"org": "hospital_a"},
    "site.left": {},
    "privacy.spent": {"epsilon": 1.2, "delta": 1e-05, "mechanism": "dp-fedavg", "noise_multiplier": 1.1},
    "kit.issued": {"participant": "hospital-a", "role": "site", "certificate_fingerprint": "SHA256:3A:9F:...:C4",
                   "expires_at": "2027-11-29T19:14:21Z"},
}  # fmt: skip
_EXAMPLE_CONTEXT: dict[str, dict[str, Any]] = {
    "round.started": {"round": 0},
    "contribution.accepted": {"site": "hospital-a", "round": 0},
    "contribution.rejected": {"site": "hospital-b", "round": 0},
    "round.completed": {"round": 0},
    "site.joined": {"job_id": None, "site": "hospital-a"},
    "site.left": {"job_id": None, "site": "hospital-a"},
    "kit.issued": {"job_id": None, "site": "hospital-a", "actor": "admin@hq.org"},
}


def _example_config(event_type: str) -> ConfigDict:
    """Return the model config that adds an OpenAPI example of ``event_type`` to its event model."""
    example = {**_EXAMPLE_ENVELOPE, "type": event_type, **_EXAMPLE_CONTEXT.get(event_type, {}),
               "payload": _EXAMPLE_PAYLOADS[event_type]}  # fmt: skip
    return ConfigDict(json_schema_extra={"examples": [example]})


def _payload_examples(event_type: str) -> dict[str, Any]:
    """Return the OpenAPI examples of the payload of ``event_type``, for the payload model's config."""
    return {"examples": [_EXAMPLE_PAYLOADS[event_type]]}


class _Payload(BaseModel):
    """Base of the payload models: unknown fields are kept and stored in the audit event."""

    model_config = ConfigDict(extra="allow")


class EventBase(BaseModel):
    """Envelope fields shared by every event type."""

    model_config = ConfigDict(extra="forbid")

    requires_job: ClassVar[bool] = True
    requires_site: ClassVar[bool] = False
    requires_round: ClassVar[bool] = False

    schema_version: Literal[1] = Field(description="Version of this schema; only 1 exists.")
    event_id: UUID = Field(description="Idempotency key: a retry sends the same event_id and content.")
    occurred_at: AwareDatetime = Field(description="When the event happened, ISO 8601 with a UTC offset.")
    job_id: JobId | None = Field(default=None, description="FLARE job id.")
    site: SiteName | None = Field(default=None, description="Site (FLARE client) name.")
    round: Int32Count | None = Field(default=None, description="0-based round number.")
    actor: ShortText | None = Field(default=None, description="Who caused the event, when a person did.")

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: AwareDatetime) -> AwareDatetime:
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"occurred_at {value.isoformat()} is outside the range of UTC timestamps") from None

    @model_validator(mode="after")
    def _check_required_context(self) -> EventBase:
        event_type = getattr(self, "type", "event")
        for field_name, required in (
            ("job_id", self.requires_job),
            ("site", self.requires_site),
            ("round", self.requires_round),
        ):
            if required and getattr(self, field_name) is None:
                raise ValueError(f"{event_type} events need {field_name}, but it is missing or null")
        return self


class JobSubmittedPayload(_Payload, json_schema_extra=_payload_examples("job.submitted")):
    name: ShortText
    submitter: ShortText
    submitter_org: ShortText
    submitter_role: ShortText


class JobSubmittedEvent(EventBase):
    """A job was submitted to the FLARE server."""

    model_config = _example_config("job.submitted")

    type: Literal["job.submitted"]
    payload: JobSubmittedPayload


class JobStartedPayload(_Payload, json_schema_extra=_payload_examples("job.started")):
    name: ShortText | None = None
    sites: list[SiteName]
    num_rounds: Int32Count | None = None
    # FLARE's job meta carries the submitter; the server component forwards it because FLARE's submit event has
    # no job id yet.
    submitter: ShortText | None = None
    submitter_org: ShortText | None = None
    submitter_role: ShortText | None = None


class JobStartedEvent(EventBase):
    """The server started running a job."""

    model_config = _example_config("job.started")

    type: Literal["job.started"]
    payload: JobStartedPayload


class RoundStartedPayload(_Payload, json_schema_extra=_payload_examples("round.started")):
    num_rounds: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
    sites: list[SiteName]


class RoundStartedEvent(EventBase):
    """The server sent a round's task to ``payload.sites``."""

    requires_round = True

    model_config = _example_config("round.started")

    type: Literal["round.started"]
    payload: RoundStartedPayload


class ContributionAcceptedPayload(_Payload, json_schema_extra=_payload_examples("contribution.accepted")):
    num_examples: Int32Count
    metrics: Metrics = Field(default_factory=dict)


class ContributionAcceptedEvent(EventBase):
    """The server accepted a site's update for aggregation."""

    requires_site = True
    requires_round = True

    model_config = _example_config("contribution.accepted")

    type: Literal["contribution.accepted"]
    payload: ContributionAcceptedPayload


class ContributionRejectedPayload(_Payload, json_schema_extra=_payload_examples("contribution.rejected")):
    reason_code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class ContributionRejectedEvent(EventBase):
    """The server rejected a site's update; ``reason_code`` is machine-readable, ``reason`` is for people."""

    requires_site = True
    requires_round = True

    model_config = _example_config("contribution.rejected")

    type: Literal["contribution.rejected"]
    payload: ContributionRejectedPayload


class RoundCompletedPayload(_Payload, json_schema_extra=_payload_examples("round.completed")):
    num_accepted: Count
    num_rejected: Count
    global_metrics: Metrics = Field(default_factory=dict)
    site_metrics: dict[SiteName, Metrics] = Field(default_factory=dict)


class RoundCompletedEvent(EventBase):
    """The server finished aggregating a round."""

    requires_round = True

    model_config = _example_config("round.completed")

    type: Literal["round.completed"]
    payload: RoundCompletedPayload


class JobFinishedPayload(_Payload, json_schema_extra=_payload_examples("job.finished")):
    status: JobStatus

    @field_validator("status")
    @classmethod
    def _require_terminal(cls, value: JobStatus) -> JobStatus:
        if not is_terminal(value):
            raise ValueError(f"job.finished needs a FINISHED:* status but got {value.value!r}")
        return value


class JobFinishedEvent(EventBase):
    """A job reached a final status."""

    model_config = _example_config("job.finished")

    type: Literal["job.finished"]
    payload: JobFinishedPayload


class SiteJoinedPayload(_Payload, json_schema_extra=_payload_examples("site.joined")):
    org: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None


class SiteJoinedEvent(EventBase):
    """A site registered with the server."""

    requires_job = False
    requires_site = True

    model_config = _example_config("site.joined")

    type: Literal["site.joined"]
    payload: SiteJoinedPayload = Field(default_factory=SiteJoinedPayload)


class SiteLeftPayload(_Payload, json_schema_extra=_payload_examples("site.left")):
    """No fields are required."""


class SiteLeftEvent(EventBase):
    """A site disconnected from the server."""

    requires_job = False
    requires_site = True

    model_config = _example_config("site.left")

    type: Literal["site.left"]
    payload: SiteLeftPayload = Field(default_factory=SiteLeftPayload)


class PrivacySpentPayload(_Payload, json_schema_extra=_payload_examples("privacy.spent")):
    epsilon: Annotated[StrictFloat, Field(ge=0, allow_inf_nan=False)]
    delta: Annotated[StrictFloat, Field(ge=0, lt=1, allow_inf_nan=False)]


class PrivacySpentEvent(EventBase):
    """Differential-privacy budget spent by a job, at a site when ``site`` is set."""

    model_config = _example_config("privacy.spent")

    type: Literal["privacy.spent"]
    payload: PrivacySpentPayload


class KitIssuedPayload(_Payload, json_schema_extra=_payload_examples("kit.issued")):
    participant: ShortText
    role: ShortText
    certificate_fingerprint: ShortText
    expires_at: AwareDatetime

    @field_validator("expires_at")
    @classmethod
    def _check_utc_range(cls, value: AwareDatetime) -> AwareDatetime:
        # Checked, not converted: the payload is stored and hashed as sent, so a replay keeps its content hash.
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"expires_at {value.isoformat()} is outside the range of UTC timestamps") from None
        return value


class KitIssuedEvent(EventBase):
    """A startup kit was built for a participant (``site`` is set for site kits)."""

    requires_job = False

    model_config = _example_config("kit.issued")

    type: Literal["kit.issued"]
    payload: KitIssuedPayload


_EventUnion = (
    JobSubmittedEvent
    | JobStartedEvent
    | RoundStartedEvent
    | ContributionAcceptedEvent
    | ContributionRejectedEvent
    | RoundCompletedEvent
    | JobFinishedEvent
    | SiteJoinedEvent
    | SiteLeftEvent
    | PrivacySpentEvent
    | KitIssuedEvent
)

EventCreate = Annotated[_EventUnion, Field(discriminator="type"), BeforeValidator(_check_envelope)]
"""Any event of schema version 1; ``type`` selects the model."""

EVENT_MODELS: dict[str, type[EventBase]] = {
    get_args(model.model_fields["type"].annotation)[0]: model for model in get_args(_EventUnion)
}
"""Event type to its model."""


class EventReceiptPublic(BaseModel):
    """Outcome of ingesting one event."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"event_id": "5b0f3c3e-9d1a-4f3e-8a4b-2f1d6c7e8a90", "duplicate": False, "audit_seq": 42}]
        }
    )

    event_id: UUID
    duplicate: bool = Field(description="True when this event_id was already ingested; nothing was written.")
    audit_seq: int = Field(description="seq of the audit event that records this event.")


class EventBatchReceiptPublic(BaseModel):
    """Outcome of ingesting a batch of events, in the order they were sent."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {"event_id": "5b0f3c3e-9d1a-4f3e-8a4b-2f1d6c7e8a90", "duplicate": False, "audit_seq": 42}
                    ],
                    "num_created": 1,
                    "num_duplicates": 0,
                }
            ]
        }
    )

    results: list[EventReceiptPublic]
    num_created: int
    num_duplicates: int
