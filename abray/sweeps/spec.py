"""A sweep spec: its options and every trial's config, validated before anything starts (no Ray needed).

A spec (YAML or JSON) holds any `abray train` field as the base of every trial, plus:

    name: delay-sweep            # the experiment's folder under storage
    grid:                        # a grid over any of GRID_FIELDS
      optimizer: [sgdm, ab]
      delay: [0, 4, 16, 32]
      seed: [0, 1]
    search: grid                 # or random: num_samples draws, each value uniformly from its list
    num_samples: 1
    scheduler: null              # or asha: stop poor trials early (by test accuracy, per epoch)
    max_trials: 5000
    storage: runs/sweeps

Validation reports every problem at once: each bad grid value by its place in the grid, then each grid point
whose combination cannot run. The sweep's size is the product of the grid lists' lengths, known before any
point is built, so an oversized sweep is refused at once, whatever its size. `abray.sweeps.tune` runs it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..training.config import (MAX_PATH_LENGTH, ConfigError, TrainConfig, bounds, did_you_mean, load_config_file,
                               problems, shown)

GRID_FIELDS = ("delay", "optimizer", "lr", "momentum", "rho", "granularity", "rho_ramp", "clip_factor",
               "weight_decay", "seed", "dc_lambda", "lookahead", "nesterov", "batch_size", "model", "device")
SWEEP_FIELDS = ("name", "grid", "search", "num_samples", "scheduler", "max_trials", "storage", "max_concurrent")
MAX_NAME_LENGTH = 128       # the job store's column
MAX_GRID_VALUES = 1000      # values in one grid list
MAX_TRIALS = 1_000_000      # the most a spec's own max_trials may allow
MAX_POINTS_REPORTED = 10    # grid points named in one error; the rest are counted


DEFAULT_SPEC = {
    "name": "demo",
    "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 4, 16, 32], "seed": [0, 1]},
}


class SweepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("sweep", min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="the experiment's folder name")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="values to sweep, by field (see Grid)")
    search: Literal["grid", "random"] = Field("grid", description="grid: every combination, num_samples times; "
                                                                  "random: num_samples draws, each value uniformly "
                                                                  "from its list")
    num_samples: int = Field(1, ge=1, le=MAX_TRIALS)
    scheduler: Optional[Literal["asha"]] = Field(None, description="asha: stop poor trials early")
    max_trials: int = Field(5000, ge=1, le=MAX_TRIALS, description="refuse a sweep of more trials than this")
    storage: str = Field("runs/sweeps", max_length=MAX_PATH_LENGTH)
    max_concurrent: Optional[int] = Field(None, ge=1, le=100_000, description="trials running at once "
                                                                               "(default: as many as fit)")


def _grid_model() -> type[BaseModel]:
    """The grid's shape, from TrainConfig's own fields: each sweepable field takes a list of its values, with
    the field's type, bounds and allowed values."""
    fields = {}
    for name in GRID_FIELDS:
        field = TrainConfig.model_fields[name]
        item = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        # a list or absent (no null): the default is only Python's way of saying "absent"
        fields[name] = (list[item], Field(None, min_length=1, max_length=MAX_GRID_VALUES,
                                          description=f"values of {name} to sweep",
                                          json_schema_extra=lambda schema: schema.pop("default", None)))
    return create_model("Grid", __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


Grid = _grid_model()


def spec_model(name: str = "SweepSpecFields", exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """A whole spec as one pydantic model, generated from TrainConfig and SweepOptions (the grid typed by Grid):
    the documented shape of a spec, e.g. the REST API's request body. `parse_spec` validates with the same
    fields, and reports what a schema cannot say (sizes, combinations that cannot run)."""
    fields: dict[str, Any] = {}
    for model in (TrainConfig, SweepOptions):
        for field_name, field in model.model_fields.items():
            if field_name in exclude:
                continue
            if field_name == "grid":
                fields[field_name] = (Grid, Field(default_factory=Grid, description=field.description))
            else:
                fields[field_name] = (field.annotation, field)
    return create_model(name, __config__=ConfigDict(extra="forbid", allow_inf_nan=False), **fields)


class SweepSpec:
    """A validated sweep: the options and every trial's config."""

    def __init__(self, options: SweepOptions, trials: list[dict], size: int):
        # trials: every distinct grid point, validated (full configs); size: how many trials Tune will run
        self.options, self.trials, self.size = options, trials, size

    def warnings(self) -> list[str]:
        """The traps its trials' settings fall into (`abray.training.traps`), each once."""
        from ..training.traps import config_warnings

        found = [w for values in self.trials for w in config_warnings(TrainConfig.model_validate(values))]
        return list(dict.fromkeys(found))


def _grid_problems(grid: dict, base: dict) -> list[dict]:
    """Every unknown grid field, empty or overlong list and bad value, each named by its place in the grid."""
    found = [{"loc": [key], "msg": "set both as a fixed value and in grid"}
             for key in grid if key in base and key in GRID_FIELDS]
    try:
        Grid.model_validate(grid)
    except ValidationError as err:
        for e in err.errors():
            loc, key = list(e["loc"]), e["loc"][0]
            if e["type"] == "extra_forbidden":
                msg = f"not a sweepable field; allowed: {', '.join(GRID_FIELDS)}{did_you_mean(key, GRID_FIELDS)}"
            elif e["type"] == "too_short":
                msg = "needs at least one value (the sweep would be empty: 0 trials)"
            elif len(loc) > 1:  # one value of the list: name it, so every grid point holding it is named
                msg = f"{key}={shown(e['input'])}: {e['msg'].removeprefix('Value error, ')}"
                if e["type"] in ("finite_number", "int_parsing", "float_parsing", "int_from_float"):
                    msg += f"; allowed: {bounds(TrainConfig.model_fields[key])}"
            else:
                msg = e["msg"]
            found.append({"loc": ["grid", *loc], "msg": msg})
    return found


def _size_problem(options: SweepOptions, limit: Optional[int]) -> Optional[dict]:
    """The sweep's size against the spec's max_trials and the caller's limit (a service's), from the grid lists'
    lengths alone."""
    points = math.prod(len(values) for values in options.grid.values())
    size = points * options.num_samples if options.search == "grid" else options.num_samples
    cap = options.max_trials if limit is None else min(options.max_trials, limit)
    if size <= cap and points <= cap:
        return None
    what = f"sweep has {size} trials" if size > cap else (
        f"random search validates every grid point before it starts, and the grid has {points} points")
    if limit is not None and cap == limit:
        msg = f"{what}, more than this service accepts ({limit}); shrink the grid"
    else:
        msg = f"{what}, more than max_trials = {options.max_trials}; shrink the grid or raise max_trials"
        if limit is not None:
            msg += f" (this service accepts up to {limit})"
    return {"loc": ["grid"], "msg": msg}


def parse_spec(values: dict, max_trials: Optional[int] = None) -> SweepSpec:
    """Validate a sweep spec; raise ConfigError naming every bad field and value, or the sweep's size if refused.
    `max_trials`: a limit on top of the spec's own (a service's)."""
    if not isinstance(values, dict):
        raise ConfigError("a sweep spec must be a mapping of field: value")
    sweep = {k: v for k, v in values.items() if k in SWEEP_FIELDS}
    base = {k: v for k, v in values.items() if k not in SWEEP_FIELDS}
    found = []
    try:
        options = SweepOptions.model_validate(sweep)
    except ValidationError as err:
        options = None
        found += problems(err, SweepOptions)
    grid = options.grid if options is not None else {}
    found += _grid_problems(grid, base)
    # the base fields, with each grid field at its first value: a combination that cannot run is the grid
    # points' problem (named below), so only per-field problems count here
    first = {k: v[0] for k, v in grid.items() if v} if not found else {}
    try:
        TrainConfig.model_validate({**base, **first})
    except ValidationError as err:
        found += [p for p in problems(err, TrainConfig, known=(*TrainConfig.model_fields, *SWEEP_FIELDS))
                  if p["loc"] and p["loc"][0] not in grid]
    if found:
        raise ConfigError(errors=found, title="invalid sweep spec")
    size_problem = _size_problem(options, max_trials)
    if size_problem is not None:
        raise ConfigError(errors=[size_problem], title="invalid sweep spec")
    keys, trials, bad = list(grid), [], []
    for combo in itertools.product(*grid.values()):
        try:
            trials.append(TrainConfig.model_validate({**base, **dict(zip(keys, combo))}).model_dump())
        except ValidationError as err:
            point = ", ".join(f"{k}={shown(v)}" for k, v in zip(keys, combo))
            bad += [{"loc": ["grid"] if keys else p["loc"],
                     "msg": f"grid point ({point}): {p['msg']}" if keys else p["msg"]}
                    for p in problems(err, TrainConfig)]
    if bad:
        more = len(bad) - MAX_POINTS_REPORTED
        bad = bad[:MAX_POINTS_REPORTED] + ([{"loc": ["grid"], "msg": f"and {more} more like these"}] if more > 0 else [])
        raise ConfigError(errors=bad, title="invalid sweep spec")
    size = len(trials) * options.num_samples if options.search == "grid" else options.num_samples
    return SweepSpec(options, trials, size)


def load_spec_file(path: str | Path) -> SweepSpec:
    """A spec from a YAML or JSON file, validated (`abray sweep SPEC`)."""
    return parse_spec(load_config_file(path))
