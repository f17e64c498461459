"""The configuration of one training run, validated at the boundary (CLI flags, YAML/JSON files, the REST API).

It holds the run defaults; the optimizer-specific ones (rho, granularity, dc_lambda, lookahead) are the
optimizers' own, imported from abray.optim.

Errors name the field and the allowed values, and nothing starts until the whole config is valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..optim.absgd import DEFAULT_GRANULARITY, DEFAULT_RHO
from ..optim.functional import GRANULARITIES
from ..optim.methods import METHODS
from ..optim.peers import DEFAULT_DC_LAMBDA, DEFAULT_LOOKAHEAD
from .models import MODELS

DATASETS = ("digits", "cifar10", "imagenet")
SCHEDULES = ("constant", "cosine", "step")
MODES = ("simulated", "distributed", "free")
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # the URIs pyarrow.fs opens
MODEL_NAMES = tuple(MODELS)
DATASET_MODELS = {
    "digits": ("digits_cnn", "digits_cnn_bn", "digits_mlp"),
    "cifar10": ("resnet20", "resnet32", "resnet56"),
    "imagenet": ("resnet50",),
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names every bad field.

    `errors` gives the same as data, for the REST API's 422 bodies: one {"loc": [...], "msg": ...} per
    line of the message that names a field ("  grid.delay: needs at least one value").
    """

    @property
    def errors(self) -> list[dict]:
        lines = str(self).splitlines()
        found = []
        for line in lines[1:]:
            field, sep, msg = line.strip().partition(": ")
            if sep:
                found.append({"loc": field.split("."), "msg": msg})
        return found or [{"loc": [], "msg": str(self)}]


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: Literal[DATASETS] = "digits"
    data_root: Optional[str] = Field(None, description="directory holding CIFAR-10 or ImageNet")
    download: bool = Field(False, description="let torchvision download CIFAR-10 into data_root")
    model: Literal[MODEL_NAMES] = "digits_cnn"
    optimizer: Literal[tuple(METHODS)] = "ab"
    # Defaults: tuned for SGDM at D = 0 on the digits validation split (benchmarks/digits_delay.py).
    lr: float = Field(0.03, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    rho: float = Field(DEFAULT_RHO, ge=0)
    granularity: Literal[GRANULARITIES] = DEFAULT_GRANULARITY
    dc_lambda: float = Field(DEFAULT_DC_LAMBDA, ge=0, description="DC-ASGD's lambda0")
    lookahead: float = Field(DEFAULT_LOOKAHEAD, ge=0, le=1, description="Nesterov look-ahead strength")
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False
    delay: int = Field(0, ge=0)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=1)
    warmup_epochs: float = Field(5.0, ge=0)
    schedule: Literal[SCHEDULES] = "cosine"
    seed: int = Field(0, ge=0)
    device: str = "cpu"
    # how the delay arises: simulated (one process), distributed (Ray, fixed delay) or free (Ray, on arrival)
    mode: Literal[MODES] = "simulated"
    workers: int = Field(2, ge=1, description="Ray worker actors")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    slowdown: Optional[list[float]] = Field(None, description="per-worker slowdown factors (>= 1), for stragglers")
    checkpoint_every: int = Field(100, ge=1, le=1_000_000,
                                  description="parameter-server checkpoint interval, in updates (it also "
                                              "checkpoints at every epoch's end)")
    storage_path: Optional[str] = Field(None, description="storage root under which each Ray run checkpoints, in "
                                                          "a folder of its own: a local path on one machine, "
                                                          "s3://... or gs://... on a cluster (default "
                                                          "runs/checkpoints; in a sweep, the sweep's folder)")
    keep_checkpoints: bool = Field(False, description="keep a finished Ray run's checkpoint folder (removed by "
                                                      "default)")
    step_retries: int = Field(3, ge=0, le=100, description="times a step whose gradient fails is tried again "
                                                           "before the run fails with the worker's error")
    server_shards: int = Field(1, ge=1, le=64, description="parameter servers, each holding a part of the weights "
                                                           "(Ray runs; more than 1: no restarts, no checkpoints)")
    output: Optional[str] = Field(None, description="per-epoch metrics, .csv or .parquet")

    @model_validator(mode="after")
    def _consistent(self):
        allowed = DATASET_MODELS[self.dataset]
        if self.model not in allowed:
            raise ValueError(f"model {self.model!r} does not fit dataset {self.dataset!r}; allowed: {', '.join(allowed)}")
        if self.dataset != "digits" and not self.data_root:
            raise ValueError(f"data_root is required for dataset {self.dataset!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov requires momentum in (0, 1)")
        if self.output and Path(self.output).suffix not in (".csv", ".parquet"):
            raise ValueError(f"output must end in .csv or .parquet, got {self.output!r}")
        if self.slowdown is not None:
            if len(self.slowdown) != self.workers:
                raise ValueError(f"slowdown must list one factor per worker ({self.workers}), got {len(self.slowdown)}")
            if any(not f >= 1 for f in self.slowdown):
                raise ValueError(f"slowdown factors must be >= 1, got {self.slowdown}")
        if self.storage_path is not None and "://" in self.storage_path:
            scheme = self.storage_path.split("://", 1)[0]
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(f"storage_path must be a local path or a URI with scheme {', '.join(STORAGE_SCHEMES)}"
                                 f" (read through pyarrow.fs), got {self.storage_path!r}")
        if self.server_shards > 1 and self.mode == "simulated":
            raise ValueError("server_shards > 1 needs mode 'distributed' or 'free' (the simulator has no server)")
        if self.server_shards > 1 and self.granularity == "global" and METHODS[self.optimizer].strength == "rho":
            raise ValueError("granularity 'global' takes one cosine over every tensor, which sharded servers cannot "
                             "compute; use granularity 'tensor' or 'element' with server_shards > 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        return self


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{field}: {msg}" + (f" (got {e['input']!r})" if field != "config" else ""))
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(values: dict) -> TrainConfig:
    """Validate `values` into a TrainConfig, or raise ConfigError naming every bad field."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (not yet validated)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value, got {type(values).__name__}")
    return values
