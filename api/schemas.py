"""The API's request and response shapes (pydantic), apart from the ORM models in abray.store."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from abray.service.admission import SERVICE_FIELDS
from abray.service.store import JOB_STATUSES, TRIAL_STATUSES
from abray.sweeps.spec import spec_model

JobStatus = Literal[JOB_STATUSES]

# POST /jobs's body: every field of a sweep spec, generated from TrainConfig and SweepOptions, less those the
# service sets. It documents the contract (the OpenAPI document); abray.service.admission validates.
JobSpec = spec_model("JobSpec", exclude=SERVICE_FIELDS)


class Progress(BaseModel):
    total: int = Field(description="trials the sweep will run")
    done: int = Field(description="trials finished, diverged ones included")
    running: int
    failed: int = Field(description="trials that crashed")
    diverged: int = Field(description="finished trials whose loss diverged")
    cancelled: int
    pending: int
    epochs: int = Field(description="epochs reported so far over all trials: the rows of /results; it changes "
                                    "exactly when the results do")


class JobOut(BaseModel):
    id: int
    name: str
    status: JobStatus
    progress: Progress
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    cancel_requested_at: Optional[datetime]
    error: Optional[str]
    spec: dict[str, Any]
    warnings: list[str] = Field(default_factory=list, description="traps the spec's settings fall into (a warmup "
                                "as long as the run, ...), as `abray train` warns; in the answer to a submission")


class JobList(BaseModel):
    items: list[JobOut]
    total: int = Field(description="jobs matching the filter, over all pages")
    limit: int
    offset: int


class TrialOut(BaseModel):
    trial_id: str
    status: Literal[TRIAL_STATUSES]
    config: dict[str, Any]
    epochs_reported: int
    test_accuracy: Optional[float]
    diverged: bool
    error: Optional[str]


class SummaryRow(BaseModel):
    """One setting: its values of the summary's `group_by` columns (optimizer, delay and any other swept
    config column, each a key of the row), and final test accuracy over its seeds."""

    model_config = ConfigDict(extra="allow")  # the other group_by columns, named as in the results

    optimizer: str
    delay: int
    accuracy_mean: Optional[float] = Field(description="final test accuracy in percent (0-100), mean over seeds")
    accuracy_std: Optional[float] = Field(description="its standard deviation over seeds, in percentage points; "
                                                      "null with a single seed")
    count: int = Field(description="trials (seeds) in this setting that reported")
    diverged: int = Field(description="of those, trials whose loss diverged")


class Summary(BaseModel):
    job_id: int
    status: JobStatus
    group_by: list[str] = Field(description="the config columns the rows are grouped by: optimizer, delay, then "
                                            "every other config column that varies across the job's trials, "
                                            "except seed (the mean and std are over seeds)")
    rows: list[SummaryRow]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: Optional[dict[str, Any]] = Field(None, description="omitted without the token when reads need one")
    ray: Optional[dict[str, Any]] = Field(None, description="omitted without the token when reads need one")
    jobs: Optional[dict[str, int]] = Field(None, description="omitted without the token when reads need one")
    links: dict[str, str] = Field(default_factory=dict,
                                  description="monitoring pages that answer now: ray_dashboard (Ray's dashboard), "
                                              "grafana (empty without the token when reads need one)")


class Message(BaseModel):
    detail: str
