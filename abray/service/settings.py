"""The service's settings, from the environment (`abray serve` sets them from its flags)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, Field, ValidationError


class Settings(BaseModel):
    storage: Path = Field(Path("runs/service"), description="jobs' folders, the SQLite file, the local Ray record")
    database_url: Optional[str] = Field(None, description="default: an SQLite file in storage")
    token: Optional[str] = Field(None, min_length=16, description="bearer token for writes; generated if unset")
    reads_need_token: bool = False
    max_running_jobs: int = Field(1, ge=0, description="jobs whose drivers run at once; the rest wait, queued")
    max_trials: int = Field(5000, ge=1, description="the largest sweep a job may hold")
    heartbeat_timeout_s: float = Field(60.0, gt=0, description="a running job silent this long is failed")
    cancel_grace_s: float = Field(30.0, ge=0, description="how long a cancelled job may take to stop its trials")
    poll_s: float = Field(1.0, gt=0, description="the scheduler's period")
    ray_dashboard_url: Optional[str] = Field(None, description="Ray's dashboard, linked from /dashboard when it "
                                                               "answers; default: the local head's")
    grafana_url: Optional[str] = Field(None, description="Grafana, linked from /dashboard when it answers; "
                                                         "default: RAY_GRAFANA_HOST, as Ray's dashboard uses it")

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.storage / 'abray.db').resolve()}"


ENV = {name: f"ABRAY_{name.upper()}" for name in Settings.model_fields}


def from_env(environ=os.environ) -> Settings:
    values = {name: environ[var] for name, var in ENV.items() if environ.get(var) not in (None, "")}
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{ENV[str(e['loc'][0])]}: {e['msg']}" for e in err.errors())
        raise SystemExit(f"invalid service settings: {problems}") from None
