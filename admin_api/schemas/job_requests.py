"""Request and response schemas of job submission and abort."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from admin_api.schemas.jobs import JOB_EXAMPLE, JobPublic

__all__ = ["JobAbortPublic", "JobParameters", "JobSubmitCreate"]

_PARAMETERS_EXAMPLE: dict[str, Any] = {
    "num_rounds": 5,
    "min_sites": 2,
    "round_timeout": 300,
    "wait_time_after_min_received": 10,
    "max_update_norm": 100.0,
    "aggregation": {"method": "fedavg", "server_optimizer": "fedadam", "server_learning_rate": 0.01},
    "script_args": "--local-epochs 2 --learning-rate 0.002 --hidden 32,16",
}


class JobParameters(BaseModel):
    """Parameters a job folder takes, exactly those ``consortia.jobs.prepare_job`` applies.

    Server workflow arguments go to ``app_custom.flare.controller.ConsortiaFedAvg``; ``script_args`` replaces the
    command-line arguments of each site's training script. Types are strict: ``"5"`` is not a number.
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [_PARAMETERS_EXAMPLE, {"num_rounds": 3}]}
    )

    num_rounds: Annotated[int, Field(ge=1, le=1000)] | None = None
    min_sites: Annotated[int, Field(ge=1, le=1000)] | None = None
    round_timeout: Annotated[int, Field(ge=1, le=86400, description="Seconds a round waits for sites.")] | None = None
    wait_time_after_min_received: Annotated[int, Field(ge=0, le=86400, description="Seconds.")] | None = None
    max_update_norm: Annotated[float, Field(gt=0)] | None = None
    aggregation: dict[str, Any] | None = Field(default=None, description="method, server_optimizer and their options.")
    site_selection: dict[str, Any] | None = Field(default=None, description="CatFedAvg site selection options.")
    script_args: Annotated[str, Field(max_length=2000)] | None = None


class JobSubmitCreate(BaseModel):
    """A job to submit: a folder under ``jobs/`` by name, with parameters."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"job": "fedavg_clinical", "job_name": "mortality_fedavg", "parameters": _PARAMETERS_EXAMPLE},
                {"job": "dp_fedavg_clinical"},
            ]
        },
    )

    job: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Job folder name, e.g. fedavg_clinical.")]
    job_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = Field(
        default=None, description="Name FLARE records for the job; the folder name when omitted."
    )
    parameters: JobParameters = Field(default_factory=JobParameters)


class JobAbortPublic(BaseModel):
    """The job an abort was sent for, and FLARE's reply."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"job": JOB_EXAMPLE, "flare_message": "Abort signal has been sent to the server app."}]
        }
    )

    job: JobPublic
    flare_message: str
