"""The service's settings, from the environment (`abray serve` sets them from its flags).

Every limit on what a request may ask for is here, so an operator sets them in one place: the body size, the
sweep size, epochs, delay, workers, the job name's length, which Host names are served, which data folders jobs
may read and whether they may download. The bounds of TrainConfig and SweepOptions (abray.training.config,
abray.sweeps.spec) hold everywhere; these lower some of them for a shared service.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import ClassVar, Optional

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..sweeps.spec import MAX_NAME_LENGTH, MAX_TRIALS
from ..training.config import MAX_DELAY, MAX_EPOCHS, MAX_WORKERS

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


class Settings(BaseModel):
    storage: Path = Field(Path("runs/service"), description="jobs' folders, the SQLite file, the local Ray record")
    database_url: Optional[str] = Field(None, description="default: an SQLite file in storage")
    token: Optional[str] = Field(None, min_length=16, description="bearer token for writes; generated if unset")
    reads_need_token: bool = Field(False, description="reads (the jobs, their results, /health's details) need the "
                                                      "token too")
    max_running_jobs: int = Field(1, ge=0, description="jobs whose drivers run at once; the rest wait, queued")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="a running job silent this long is failed")
    cancel_grace_s: float = Field(30.0, ge=0, description="how long a cancelled job may take to stop its trials")
    poll_s: float = Field(1.0, gt=0, description="the scheduler's period")
    ray_dashboard_url: Optional[str] = Field(None, description="Ray's dashboard, linked from /dashboard when it "
                                                               "answers; default: the local head's")
    grafana_url: Optional[str] = Field(None, description="Grafana, linked from /dashboard when it answers; "
                                                         "default: RAY_GRAFANA_HOST, as Ray's dashboard uses it")
    # what a request may ask for
    host: str = Field("127.0.0.1", max_length=255, description="the address the service listens on")
    allowed_hosts: Optional[list[str]] = Field(
        None, description="the Host names the service answers to, against DNS rebinding; * for any")
    max_body_bytes: int = Field(2**20, ge=1024, le=2**30, description="the largest request body, in bytes")
    max_trials: int = Field(5000, ge=1, le=MAX_TRIALS, description="the largest sweep a job may hold")
    max_epochs: int = Field(1000, ge=1, le=MAX_EPOCHS, description="the most epochs a trial may run")
    max_delay: int = Field(1024, ge=0, le=MAX_DELAY, description="the largest delay a trial may ask for")
    max_workers: int = Field(64, ge=1, le=MAX_WORKERS, description="the most Ray workers a distributed trial may use")
    max_name_length: int = Field(MAX_NAME_LENGTH, ge=1, le=MAX_NAME_LENGTH, description="the longest job name")
    data_roots: list[Path] = Field(default_factory=list, description="folders a job's data_root may name or lie in")
    allow_download: bool = Field(False, description="let jobs download data sets (a spec's download: true)")

    @field_validator("allowed_hosts", "data_roots", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.storage / 'abray.db').resolve()}"

    DEFAULT_HOSTS: ClassVar[str] = ("the address it listens on and localhost's names; listening on all interfaces (0.0.0.0), also "
                     "this machine's names and any IP address")

    def served_hosts(self) -> tuple[set[str], bool]:
        """The Host names answered, lower case, and whether any IP address is (when listening everywhere)."""
        if self.allowed_hosts is not None:
            return {h.lower().strip("[]") for h in self.allowed_hosts}, False
        names = {self.host.lower().strip("[]"), *LOCAL_NAMES}
        everywhere = self.host in WILDCARDS
        if everywhere:
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        return names - {""}, everywhere


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8000" -> "::1", "Example.org:80" -> "example.org"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: Optional[str], names: set[str], any_ip: bool) -> bool:
    """Whether a request's Host header names this service. A page that an attacker's name was rebound to sends
    that name, never one of ours; an IP address cannot be rebound."""
    if "*" in names:
        return True
    if not header:
        return False
    name = host_name(header)
    if name in names:
        return True
    if any_ip:
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False
    return False


ENV = {name: f"ABRAY_{name.upper()}" for name in Settings.model_fields}


def from_env(environ=os.environ) -> Settings:
    values = {name: environ[var] for name, var in ENV.items() if environ.get(var) not in (None, "")}
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{ENV[str(e['loc'][0])]}: {e['msg']}" for e in err.errors())
        raise SystemExit(f"invalid service settings: {problems}") from None
