"""The configuration of one training run, validated at the boundary (CLI flags, YAML/JSON files, the REST API).

It holds the run defaults; the optimizer-specific ones (rho, granularity, dc_lambda, lookahead) are the
optimizers' own, imported from abray.optim.

Errors name the field and the allowed values, and nothing starts until the whole config is valid.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Iterable, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..optim.absgd import DEFAULT_CLIP_FACTOR, DEFAULT_GRANULARITY, DEFAULT_RHO, DEFAULT_RHO_RAMP
from ..optim.functional import GRANULARITIES
from ..optim.methods import METHODS
from ..optim.peers import DEFAULT_DC_LAMBDA, DEFAULT_LOOKAHEAD
from .models import MODELS

DATASETS = ("digits", "mnist10k", "teacher", "teacher_deep", "runner_up", "mnist", "cifar10", "imagenet")
FILE_DATASETS = ("mnist", "cifar10", "imagenet")  # read from data_root
SCHEDULES = ("constant", "cosine", "step")
MODES = ("simulated", "distributed", "free")
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # the URIs pyarrow.fs opens
MODEL_NAMES = tuple(MODELS)
DATASET_MODELS = {
    "digits": ("digits_cnn", "digits_cnn_bn", "digits_mlp"),
    "mnist10k": ("mnist_cnn", "mnist_cnn_bn"),
    "mnist": ("mnist_cnn", "mnist_cnn_bn"),
    "teacher": ("teacher_mlp", "teacher_mlp_bn"),
    "teacher_deep": ("teacher_mlp", "teacher_mlp_bn"),
    "runner_up": ("seq_transformer",),
    "cifar10": ("resnet20", "resnet32", "resnet56"),
    "imagenet": ("resnet50",),
}


# Bounds shared by every entry point (CLI, config files, sweeps, the REST API); a service may lower some.
MAX_DELAY = 10_000          # the simulator keeps delay + 1 copies of the weights
MAX_EPOCHS = 100_000
MAX_WORKERS = 4096
MAX_PATH_LENGTH = 4096
MAX_SLOWDOWN = 1000.0       # a worker at most this many times slower than it could be
MAX_SEED = 2**32 - 1        # what every random generator the runs use accepts


def dotted(loc: Iterable) -> str:
    """A field's path as people write it: grid.delay[1]."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "config"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names every bad field.

    `errors` gives the same as data, for the REST API's 422 bodies: one {"loc": [...], "msg": ...} per
    problem ("grid.delay[1]: delay=-1: Input should be greater than or equal to 0" is
    {"loc": ["grid", "delay", 1], "msg": "delay=-1: Input should be greater than or equal to 0"}).
    """

    def __init__(self, message: Optional[str] = None, errors: Optional[list[dict]] = None,
                 title: str = "invalid config"):
        if message is None:
            message = f"{title}:\n  " + "\n  ".join(f"{dotted(e['loc'])}: {e['msg']}" for e in errors or [])
        super().__init__(message)
        self._errors = errors

    @property
    def errors(self) -> list[dict]:
        if self._errors is not None:
            return self._errors
        lines = str(self).splitlines()
        found = []
        for line in lines[1:]:
            field, sep, msg = line.strip().partition(": ")
            if sep:
                found.append({"loc": field.split("."), "msg": msg})
        return found or [{"loc": [], "msg": str(self)}]


class TrainConfig(BaseModel):
    # every number finite and bounded, every string and list bounded: a config is also what the REST API takes
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset: Literal[DATASETS] = "digits"
    data_root: Optional[str] = Field(None, max_length=MAX_PATH_LENGTH,
                                     description="directory holding MNIST, CIFAR-10 or ImageNet")
    download: bool = Field(False, description="let torchvision download MNIST or CIFAR-10 into data_root")
    model: Literal[MODEL_NAMES] = "digits_cnn"
    optimizer: Literal[tuple(METHODS)] = "ab"
    # Defaults: tuned for SGDM at D = 0 on the digits validation split (benchmarks/digits_delay.py).
    lr: float = Field(0.03, gt=0, le=1e6, description="learning rate (peak, after warmup)")
    momentum: float = Field(0.9, ge=0, lt=1)
    rho: float = Field(DEFAULT_RHO, ge=0, le=100, description="AB's braking strength (0 is SGD with momentum)")
    granularity: Literal[GRANULARITIES] = DEFAULT_GRANULARITY
    rho_ramp: float = Field(DEFAULT_RHO_RAMP, ge=0, le=1000,
                            description="AB brakes with rho * min(1, staleness / rho_ramp); 0: always rho")
    clip_factor: bool = Field(DEFAULT_CLIP_FACTOR, description="clip AB's factor 1 - rho c at 0 (stop, not reverse)")
    dc_lambda: float = Field(DEFAULT_DC_LAMBDA, ge=0, le=1e6, description="DC-ASGD's lambda0")
    lookahead: float = Field(DEFAULT_LOOKAHEAD, ge=0, le=1, description="Nesterov look-ahead strength")
    weight_decay: float = Field(0.0, ge=0, le=10)
    nesterov: bool = False
    delay: int = Field(0, ge=0, le=MAX_DELAY, description="updates between the weights a gradient was computed "
                                                          "on and the update that applies it")
    epochs: int = Field(60, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(32, ge=1, le=65_536)
    warmup_epochs: float = Field(5.0, ge=0, le=MAX_EPOCHS)
    schedule: Literal[SCHEDULES] = "cosine"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("cpu", max_length=32, description="cpu, or cuda[:N]")
    # how the delay arises: simulated (one process), distributed (Ray, fixed delay) or free (Ray, on arrival)
    mode: Literal[MODES] = "simulated"
    workers: int = Field(2, ge=1, le=MAX_WORKERS, description="Ray worker actors")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0, le=64)
    slowdown: Optional[list[Annotated[float, Field(ge=1, le=MAX_SLOWDOWN)]]] = Field(
        None, max_length=MAX_WORKERS, description="per-worker slowdown factors (>= 1), for stragglers")
    checkpoint_every: int = Field(100, ge=1, le=1_000_000,
                                  description="parameter-server checkpoint interval, in updates (it also "
                                              "checkpoints at every epoch's end)")
    storage_path: Optional[str] = Field(None, max_length=MAX_PATH_LENGTH,
                                        description="storage root under which each Ray run checkpoints, in "
                                                    "a folder of its own: a local path on one machine, "
                                                    "s3://... or gs://... on a cluster (default "
                                                    "runs/checkpoints; in a sweep, the sweep's folder)")
    keep_checkpoints: bool = Field(False, description="keep a finished Ray run's checkpoint folder (removed by "
                                                      "default)")
    step_retries: int = Field(3, ge=0, le=100, description="times a step whose gradient fails is tried again "
                                                           "before the run fails with the worker's error")
    server_shards: int = Field(1, ge=1, le=64, description="parameter servers, each holding a part of the weights "
                                                           "(Ray runs; more than 1: no restarts, no checkpoints)")
    output: Optional[str] = Field(None, max_length=MAX_PATH_LENGTH, description="per-epoch metrics, .csv or .parquet")

    @model_validator(mode="after")
    def _consistent(self):
        allowed = DATASET_MODELS[self.dataset]
        if self.model not in allowed:
            raise ValueError(f"model {self.model!r} does not fit dataset {self.dataset!r}; allowed: {', '.join(allowed)}")
        if self.dataset in FILE_DATASETS and not self.data_root:
            raise ValueError(f"data_root is required for dataset {self.dataset!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov requires momentum in (0, 1)")
        if self.output and Path(self.output).suffix not in (".csv", ".parquet"):
            raise ValueError(f"output must end in .csv or .parquet, got {self.output!r}")
        if self.slowdown is not None:
            if len(self.slowdown) != self.workers:
                raise ValueError(f"slowdown must list one factor per worker ({self.workers}), got {len(self.slowdown)}")
        if self.storage_path is not None and "://" in self.storage_path:
            scheme = self.storage_path.split("://", 1)[0]
            if scheme not in STORAGE_SCHEMES:
                raise ValueError(f"storage_path must be a local path or a URI with scheme {', '.join(STORAGE_SCHEMES)}"
                                 f" (read through pyarrow.fs), got {self.storage_path!r}")
        if self.server_shards > 1:
            if self.mode == "simulated":
                raise ValueError("server_shards > 1 needs mode 'distributed' or 'free' (the simulator has no server)")
            if self.keep_checkpoints:
                raise ValueError("keep_checkpoints needs server_shards 1: sharded servers keep no checkpoints")
            if self.granularity == "global" and METHODS[self.optimizer].strength == "rho":
                raise ValueError("granularity 'global' takes one cosine over every tensor, which sharded servers "
                                 "cannot compute; use granularity 'tensor' or 'element' with server_shards > 1")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        return self


def shown(value, limit: int = 60) -> str:
    """A value as an error message quotes it: its repr, cut short (a message never echoes a huge input)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bounds(field) -> str:
    """A numeric field's allowed range, from its constraints: ">= 0 and < 1"."""
    words = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = [f"{words[k]} {getattr(m, k):g}" for m in field.metadata for k in words if hasattr(m, k)]
    return " and ".join(found)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean 'delay'?" for a typo of a known name, else ""."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def problems(err: ValidationError, model: type[BaseModel] = None, known: Iterable[str] = (),
             prefix: tuple = ()) -> list[dict]:
    """A pydantic error as {"loc", "msg"} problems: the field, what is wrong, its allowed range when it has one,
    the value given (cut short), and for an unknown field the known one it looks like."""
    found = []
    fields = model.model_fields if model is not None else {}
    known = list(known) or list(fields)
    for e in err.errors():
        loc = tuple(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field" + did_you_mean(loc[-1], known)
        else:
            field = fields.get(loc[0]) if loc else None
            if field is not None and e["type"] in ("finite_number", "int_parsing", "float_parsing", "int_type",
                                                   "float_type", "int_from_float") and bounds(field):
                msg += f"; allowed: {bounds(field)}"
            if loc:
                msg += f" (got {shown(e['input'])})"
        found.append({"loc": [*prefix, *loc], "msg": msg})
    return found


def format_validation_error(err: ValidationError, title: str = "invalid config") -> str:
    return str(ConfigError(errors=problems(err, TrainConfig), title=title))


def parse_config(values: dict) -> TrainConfig:
    """Validate `values` into a TrainConfig, or raise ConfigError naming every bad field."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(errors=problems(err, TrainConfig)) from None


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
