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

Every trial's config is validated before anything starts; an empty or over-large sweep is refused with
its size. `abray.sweeps.tune` runs it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..training.config import ConfigError, TrainConfig, format_validation_error, load_config_file

GRID_FIELDS = ("delay", "optimizer", "lr", "momentum", "rho", "granularity", "rho_ramp", "clip_factor", "weight_decay",
               "seed", "dc_lambda", "lookahead", "nesterov", "batch_size", "model", "device")
SWEEP_FIELDS = ("name", "grid", "search", "num_samples", "scheduler", "max_trials", "storage", "max_concurrent")


DEFAULT_SPEC = {
    "name": "demo",
    "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 4, 16, 32], "seed": [0, 1]},
}


class SweepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9_.-]+$")
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    search: Literal["grid", "random"] = "grid"
    num_samples: int = Field(1, ge=1)
    scheduler: Optional[Literal["asha"]] = None
    max_trials: int = Field(5000, ge=1)
    storage: str = "runs/sweeps"
    max_concurrent: Optional[int] = Field(None, ge=1)


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


def parse_spec(values: dict) -> SweepSpec:
    """Validate a sweep spec; raise ConfigError naming each bad field, or the sweep's size if refused."""
    if not isinstance(values, dict):
        raise ConfigError("a sweep spec must be a mapping of field: value")
    sweep = {k: v for k, v in values.items() if k in SWEEP_FIELDS}
    base = {k: v for k, v in values.items() if k not in SWEEP_FIELDS}
    try:
        options = SweepOptions.model_validate(sweep)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("invalid config", "invalid sweep spec")) from None
    for key, vals in options.grid.items():
        if key not in GRID_FIELDS:
            raise ConfigError(f"invalid sweep spec:\n  grid.{key}: not a sweepable field; allowed: "
                              f"{', '.join(GRID_FIELDS)}")
        if not vals:
            raise ConfigError(f"invalid sweep spec:\n  grid.{key}: needs at least one value (the sweep would be "
                              "empty: 0 trials)")
        if key in base:
            raise ConfigError(f"invalid sweep spec:\n  {key}: set both as a fixed value and in grid")
    try:
        TrainConfig.model_validate({**base, **{k: v[0] for k, v in options.grid.items()}})
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("invalid config", "invalid sweep spec")) from None
    keys = list(options.grid)
    combos = list(itertools.product(*options.grid.values()))
    size = len(combos) * options.num_samples if options.search == "grid" else options.num_samples
    if size > options.max_trials:
        raise ConfigError(f"sweep has {size} trials, more than max_trials = {options.max_trials}; "
                          "shrink the grid or raise max_trials")
    trials = []
    for combo in combos:
        values = {**base, **dict(zip(keys, combo))}
        try:
            trials.append(TrainConfig.model_validate(values).model_dump())
        except ValidationError as err:
            point = ", ".join(f"{k}={v!r}" for k, v in zip(keys, combo))
            raise ConfigError(format_validation_error(err).replace("invalid config", f"invalid sweep point ({point})"))
    return SweepSpec(options, trials, size)
