"""Sweeps with Ray Tune: one trial per training run, each reporting every epoch with `ray.tune.report`.

A diverged trial is a result (diverged = true, with its step); a crashed trial is recorded as an error and
the sweep goes on; `resume=True` continues an interrupted sweep without redoing the trials that finished.
Inside trials only `ray.tune.*` APIs are used.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..results.schema import metric_row
from ..training.checkpoints import remove_folder
from ..training.config import ConfigError, TrainConfig
from .spec import SweepSpec

CHECKPOINTS_FOLDER = "parameter-servers"


def result_loggers() -> list:
    """Tune's result files: result.json (what abray.results reads) and progress.csv, and TensorBoard's event
    files only when TensorBoard is installed (else Tune would tell people to run a `tensorboard` they lack)."""
    from importlib.util import find_spec

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    loggers = [JsonLoggerCallback(), CSVLoggerCallback()]
    if find_spec("tensorboard") is not None:
        loggers.append(TBXLoggerCallback())
    return loggers


@contextmanager
def _no_default_loggers():
    """Tune adds its default loggers (TensorBoard's among them) unless this is set while it builds its callbacks."""
    before = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"]
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = before


def trial_resources(config: TrainConfig):
    """What one trial reserves: its own process (with a GPU when a simulated run computes on one), plus the
    server's and workers' for distributed trials (the server takes no CPU)."""
    from ray.tune import PlacementGroupFactory

    trial = {"CPU": 1.0}
    if config.mode == "simulated" and config.device.startswith("cuda"):
        trial["GPU"] = 1.0
    bundles = [trial]
    if config.mode != "simulated":
        bundles += [{"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker}
                    if config.gpus_per_worker else {"CPU": config.cpus_per_worker}] * config.workers
    return PlacementGroupFactory(bundles)


def check_fits(trials: list[dict], total: Optional[dict] = None) -> None:
    """Refuse trials bigger than the whole cluster, when the cluster cannot grow: Tune would wait for ever.
    (On an autoscaling cluster they wait for nodes instead, so callers only check fixed clusters.)
    `total`: the cluster's resources (default: those of the cluster this process is connected to)."""
    if total is None:
        import ray

        total = ray.cluster_resources()
    for values in trials:
        config = TrainConfig.model_validate(values)
        need = trial_resources(config).required_resources
        for kind in ("CPU", "GPU"):
            if need.get(kind, 0) > total.get(kind, 0):
                if config.mode == "simulated":
                    parts, fix = "1 for the trial", f"device {config.device!r} computes on a GPU; use device cpu"
                else:
                    per_worker = config.cpus_per_worker if kind == "CPU" else config.gpus_per_worker
                    workers = f"{config.workers} workers x {per_worker:g}"
                    parts = f"1 for the trial + {workers}" if kind == "CPU" else workers
                    fix = f"lower workers or {kind.lower()}s_per_worker"
                raise ConfigError(f"a {config.mode} trial needs {need[kind]:g} {kind}s ({parts}), but the Ray cluster "
                                  f"has {total.get(kind, 0):g} and cannot grow; {fix}")


def trainable(trial_config: dict, data=None, checkpoints: Optional[str] = None) -> None:
    """One Tune trial: a training run that reports every epoch with `ray.tune.report` (Tune APIs only).
    `data`, when given, comes from the object store (put there once for the whole sweep). `checkpoints`: the
    storage root of distributed trials that set no storage_path (each run checkpoints in a folder of its own
    under it, removed when it ends unless keep_checkpoints)."""
    import torch
    from ray import tune

    from ..training.run import run

    torch.set_num_threads(1)
    config = TrainConfig.model_validate(trial_config)
    if config.mode != "simulated" and config.storage_path is None and checkpoints:
        config = config.model_copy(update={"storage_path": checkpoints})

    run(config, data=data, on_epoch=lambda metrics: tune.report(metric_row(metrics)))


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

    from ..training.distributed import ensure_ray

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
        from ..training.data import digits

        data = digits()
    checkpoints = f"{path}/{CHECKPOINTS_FOLDER}"  # distributed trials' servers, a folder each, inside the sweep's
    wrapped = tune.with_resources(tune.with_parameters(trainable, data=data, checkpoints=checkpoints), resources)
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
                                      callbacks=[progress.callback, *result_loggers(), *callbacks], stop=stop,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    start = time.perf_counter()
    with _no_default_loggers():
        tuner.fit()
    # every trial is over: what a stopped or cancelled trial left behind goes too, unless checkpoints are kept
    remove_folder(checkpoints, only_if_empty=any(t.get("keep_checkpoints") for t in spec.trials))
    write(f"sweep finished in {time.perf_counter() - start:.0f} s: {path}")
    return path
