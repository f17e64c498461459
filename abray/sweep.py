"""Sweeps with Ray Tune: a validated spec, one trial per training run, per-epoch reports.

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
its size. A diverged trial is a result (diverged = true, with its step); a crashed trial is recorded
as an error and the sweep goes on; `resume=True` continues an interrupted sweep without redoing the
trials that finished.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import ConfigError, TrainConfig, format_validation_error

GRID_FIELDS = ("delay", "optimizer", "lr", "momentum", "rho", "granularity", "weight_decay", "seed", "dc_lambda",
               "lookahead", "nesterov", "batch_size", "model", "device")
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


def trial_resources(config: TrainConfig):
    """What one trial reserves: its own process, plus the server's and workers' for distributed trials."""
    from ray.tune import PlacementGroupFactory

    bundles = [{"CPU": 1.0}]
    if config.mode != "simulated":
        bundles += [{"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker}
                    if config.gpus_per_worker else {"CPU": config.cpus_per_worker}] * config.workers
    return PlacementGroupFactory(bundles)


def check_fits(trials: list[dict]) -> None:
    """Refuse trials bigger than the whole cluster, when the cluster cannot grow: Tune would wait for ever.
    (On an autoscaling cluster they wait for nodes instead, so callers only check fixed clusters.)"""
    import ray

    total = ray.cluster_resources()
    for values in trials:
        config = TrainConfig.model_validate(values)
        need = trial_resources(config).required_resources
        for kind in ("CPU", "GPU"):
            if need.get(kind, 0) > total.get(kind, 0):
                parts = "1 for the trial" + (f" + {config.workers} workers x "
                                             f"{config.cpus_per_worker if kind == 'CPU' else config.gpus_per_worker:g}"
                                             if config.mode != "simulated" else "")
                raise ConfigError(f"a {config.mode} trial needs {need[kind]:g} {kind}s ({parts}), but the Ray cluster "
                                  f"has {total.get(kind, 0):g} and cannot grow; lower workers or "
                                  f"{kind.lower()}s_per_worker")


def trainable(trial_config: dict, data=None) -> None:
    """One Tune trial: a training run that reports every epoch with `ray.tune.report` (Tune APIs only).
    `data`, when given, comes from the object store (put there once for the whole sweep)."""
    import torch
    from ray import tune

    from .train import run

    torch.set_num_threads(1)
    config = TrainConfig.model_validate(trial_config)

    def report(m):
        tune.report({"epoch": m.epoch, "steps": m.steps, "train_loss": m.train_loss, "test_loss": m.test_loss,
                     "test_accuracy": m.test_accuracy, "wall_time": m.wall_time, "lr_now": m.lr,
                     "diverged": m.diverged, "diverged_step": m.diverged_step if m.diverged_step is not None else -1,
                     "staleness_mean": m.staleness_mean, "staleness_max": m.staleness_max,
                     "staleness_hist": json.dumps({str(k): v for k, v in m.staleness_hist.items()})})

    run(config.model_copy(update={"output": None}), data=data, on_epoch=report)


class ProgressCallback:
    """Prints trials done / running / failed and the best final accuracy so far, as they change."""

    def __init__(self, total: int, write: Callable[[str], None]):
        from ray.tune import Callback

        outer = self

        class _Cb(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                outer._show(trials)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                acc = result.get("test_accuracy")
                if acc is not None and (outer.best is None or acc > outer.best):
                    outer.best = acc
                outer._show(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer._show(trials)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer._show(trials)

        self.callback, self.total, self.write, self.best, self.last = _Cb(), total, write, None, None

    def _show(self, trials) -> None:
        states = [t.status for t in trials]
        line = (f"trials: {states.count('TERMINATED')}/{self.total} done, {states.count('RUNNING')} running, "
                f"{states.count('ERROR')} failed; best test accuracy so far: "
                + (f"{self.best:.4f}" if self.best is not None else "-"))
        if line != self.last:
            self.write(line)
            self.last = line


def run_sweep(spec: SweepSpec, resume: bool = False, write: Callable[[str], None] = print,
              callbacks: Sequence = (), stop=None, fixed_cluster: Optional[bool] = None):
    """Run (or resume) the sweep with `ray.tune.Tuner`; return the experiment directory (a Path, or the URI
    when `storage` is remote). `callbacks` (Tune callbacks) and `stop` (a Tune stopper) let the job service
    record trials as they report and cancel the sweep. `fixed_cluster` (default: true for the embedded local
    cluster, false at RAY_ADDRESS) refuses trials that could never be placed."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .distributed import ensure_ray

    ensure_ray()
    if fixed_cluster if fixed_cluster is not None else not os.environ.get("RAY_ADDRESS"):
        check_fits(spec.trials)
    opts = spec.options
    remote = "://" in opts.storage  # s3://, gs://: Tune writes there through pyarrow
    storage = opts.storage.rstrip("/") if remote else str(Path(opts.storage).resolve())
    path = f"{storage}/{opts.name}" if remote else Path(storage) / opts.name
    progress = ProgressCallback(spec.size, write)
    first = TrainConfig.model_validate(spec.trials[0])
    resources = trial_resources(first)
    data = None
    if first.dataset == "digits":  # small and in memory: load once, share through the object store
        from .data import digits

        data = digits()
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=data), resources)
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=wrapped, resume_errored=False, restart_errored=True)
    else:
        # every field spelled out, so each trial's params.json is its complete config
        fixed = {k: v for k, v in spec.trials[0].items() if k not in opts.grid}
        sample = tune.grid_search if opts.search == "grid" else tune.choice
        space = {**fixed, **{k: sample(v) for k, v in opts.grid.items()}}
        scheduler = None
        if opts.scheduler == "asha":
            scheduler = ASHAScheduler(metric="test_accuracy", mode="max", time_attr="epoch",
                                      max_t=TrainConfig.model_validate(spec.trials[0]).epochs, grace_period=1)
        tuner = tune.Tuner(
            wrapped,
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=opts.num_samples, scheduler=scheduler,
                                        max_concurrent_trials=opts.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=opts.name, storage_path=storage, verbose=0,
                                      callbacks=[progress.callback, *callbacks], stop=stop,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    start = time.perf_counter()
    tuner.fit()
    write(f"sweep finished in {time.perf_counter() - start:.0f} s: {path}")
    return path


def load_spec_file(path: str | Path) -> SweepSpec:
    from .config import load_config_file

    return parse_spec(load_config_file(path))


def report(path: str | Path, write: Callable[[str], None] = print, export: Optional[str] = None,
           stable_region: bool = True) -> dict:
    """Summarise an experiment directory: the summary table, the plots, and optional CSV/Parquet export."""
    from . import plots
    from .results import load_tune_experiment, summarize, trial_status, write_frame

    path = Path(path)
    frame = load_tune_experiment(path)
    status = trial_status(path)
    if frame.empty:
        raise ConfigError(f"no trial results under {path}")
    summary = summarize(frame)
    table = summary.assign(mean=lambda d: (100 * d["mean"]).round(1), std=lambda d: (100 * d["std"]).round(1))
    write(f"final test accuracy (%) by optimizer and delay, {frame.trial_id.nunique()} trials "
          f"({int(status.failed.sum())} failed):")
    write(table.to_string(index=False))
    figures = plots.accuracy_vs_delay(frame, path / "accuracy_vs_delay") + plots.loss_curves(frame, path / "loss_curves")
    if stable_region:
        figures += plots.stable_region(sorted(frame.optimizer.unique()), sorted(int(d) for d in frame.delay.unique()),
                                       path / "stable_region")
    write("plots: " + ", ".join(str(p) for p in figures))
    outputs = {"frame": frame, "summary": summary, "figures": figures}
    if export:
        outputs["export"] = write_frame(frame, export)
        write(f"results: {outputs['export']}")
    return outputs
