import time

import pandas as pd
import pytest
import torch

from abray.results import CONFIG_COLUMNS, METRIC_COLUMNS, load_tune_experiment, summarize, trial_status
from abray.results.report import report
from abray.sweeps.spec import load_spec_file, parse_spec
from abray.sweeps.tune import CHECKPOINTS_FOLDER, run_sweep, trial_resources
from abray.training.config import ConfigError, TrainConfig


@pytest.mark.parametrize(
    "values,match",
    [
        ({"grid": {"colour": [1]}}, "grid.colour: not a sweepable field; allowed: delay, optimizer"),
        ({"grid": {"delay": []}}, r"grid.delay: needs at least one value \(the sweep would be empty: 0 trials\)"),
        ({"grid": {"delay": list(range(100)), "seed": list(range(60))}}, "sweep has 6000 trials, more than max_trials = 5000"),
        ({"grid": {"delay": [0, 1]}, "max_trials": 1}, "sweep has 2 trials, more than max_trials = 1"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"grid": {"momentum": [0.9, 1.5]}}, r"grid.momentum\[1\]: momentum=1.5: Input should be less than 1"),
        ({"grid": {"delya": [1]}}, "grid.delya: not a sweepable field; allowed: .*; did you mean 'delay'?"),
        ({"gird": {"delay": [1]}}, "gird: unknown field; did you mean 'grid'?"),
        ({"grid": {"seed": list(range(1001))}}, r"grid.seed: List should have at most 1000 items"),
        ({"search": "random", "num_samples": 2, "grid": {"seed": list(range(100)), "lr": [0.1] * 100}},
         "random search validates every grid point before it starts, and the grid has 10000 points, more than "
         "max_trials = 5000"),
        ({"search": "bayes"}, "search: Input should be 'grid' or 'random'"),
        ({"delay": 3, "grid": {"delay": [0]}}, "delay: set both as a fixed value and in grid"),
        ({"name": "../escape"}, "name: String should match pattern"),
    ],
)
def test_bad_specs_are_refused_before_anything_starts(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_spec(values)


def test_a_specs_warnings_are_its_trials_traps_each_once():
    spec = parse_spec({"epochs": 4, "grid": {"optimizer": ["sgdm", "ab"], "rho_ramp": [0, 8], "delay": [0, 8]}})
    found = spec.warnings()
    assert len(found) == 2 and found[0].startswith("warmup_epochs (5) >= epochs (4)")
    assert "rho_ramp 0 makes AB brake at full strength" in found[1]  # only the AB trial at D = 0 with rho_ramp 0
    assert parse_spec({"epochs": 20, "grid": {"delay": [0, 8]}}).warnings() == []


def test_a_grid_reports_every_bad_value_by_its_place():
    with pytest.raises(ConfigError) as caught:
        parse_spec({"grid": {"delay": [0, -1], "momentum": [0.9, 1.5]}})
    assert caught.value.errors == [
        {"loc": ["grid", "delay", 1], "msg": "delay=-1: Input should be greater than or equal to 0"},
        {"loc": ["grid", "momentum", 1], "msg": "momentum=1.5: Input should be less than 1"}]


def test_a_combination_that_cannot_run_is_named_by_its_grid_point():
    with pytest.raises(ConfigError) as caught:
        parse_spec({"grid": {"nesterov": [True, False], "momentum": [0.0, 0.9]}})
    assert caught.value.errors == [{"loc": ["grid"], "msg": "grid point (nesterov=True, momentum=0.0): nesterov "
                                                            "requires momentum in (0, 1)"}]


def test_the_size_is_known_before_any_point_is_built():
    # four lists of 100, 100, 100 and 10 values: 10^7 points, refused from the lists' lengths alone
    grid = {"delay": list(range(100)), "seed": list(range(100)), "lr": [0.001 * (i + 1) for i in range(100)],
            "rho": [0.1 * i for i in range(10)]}
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        parse_spec({"grid": grid}, max_trials=5000)
    assert time.perf_counter() - start < 20  # building 10^7 configs takes minutes: a bound no busy machine nears
    assert caught.value.errors == [{"loc": ["grid"], "msg": "sweep has 10000000 trials, more than this service "
                                                            "accepts (5000); shrink the grid"}]
    # the spec's own limit below the service's: raising it is advice the service can take
    with pytest.raises(ConfigError, match=r"sweep has 4 trials, more than max_trials = 3; shrink the grid or raise "
                                          r"max_trials \(this service accepts up to 5000\)"):
        parse_spec({"grid": {"delay": [0, 1, 2, 3]}, "max_trials": 3}, max_trials=5000)


def test_a_spec_file_is_read_and_validated(tmp_path):
    (tmp_path / "sweep.yaml").write_text("name: s\nepochs: 2\ngrid:\n  delay: [0, 4]\n  optimizer: [sgdm, ab]\n")
    spec = load_spec_file(tmp_path / "sweep.yaml")
    assert spec.size == 4 and spec.options.name == "s" and {t["epochs"] for t in spec.trials} == {2}


def test_spec_expands_the_grid():
    spec = parse_spec({"epochs": 2, "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 4, 16]}})
    assert spec.size == 6 and {(t["optimizer"], t["delay"]) for t in spec.trials} == {
        (o, d) for o in ("sgdm", "ab") for d in (0, 4, 16)}
    assert parse_spec({"search": "random", "num_samples": 7, "grid": {"lr": [0.1, 0.01]}}).size == 7


def test_a_trial_reserves_what_it_computes_on():
    def bundles(**values):
        return trial_resources(TrainConfig.model_validate(values)).bundles

    assert bundles(device="cpu") == [{"CPU": 1.0}]
    assert bundles(device="cuda") == [{"CPU": 1.0, "GPU": 1.0}]  # a simulated run on a GPU holds one
    assert bundles(mode="free", workers=2, device="cuda") == [{"CPU": 1.0}] * 3  # its workers compute, on CPUs
    assert bundles(mode="distributed", workers=2, gpus_per_worker=0.5) == [{"CPU": 1.0}] + [{"CPU": 1.0,
                                                                                              "GPU": 0.5}] * 2


@pytest.mark.usefixtures("ray_cluster")
def test_sweep_runs_on_tune_with_diverged_and_crashed_trials_as_results(tmp_path):
    # the session's cluster advertises a GPU: the trials on CUDA device 99, which no machine has (with a GPU or
    # not), get it one at a time and crash in torch
    spec = parse_spec({"name": "t", "storage": str(tmp_path), "epochs": 2, "batch_size": 64,
                       "grid": {"optimizer": ["sgdm", "ab"], "lr": [0.03, 1e6], "device": ["cpu", "cuda:99"]}})
    lines = []
    path = run_sweep(spec, write=lines.append)
    frame = load_tune_experiment(path)
    assert list(frame.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    status = trial_status(path)
    assert len(status) == 8 and status.failed.sum() == 4  # the cuda trials crash; the sweep goes on
    assert frame.trial_id.nunique() == 4 and (frame.device == "cpu").all()
    last = frame.sort_values("epoch").groupby("trial_id").tail(1)
    huge = last[last.lr == 1e6]
    assert huge.diverged.all() and huge.diverged_step.notna().all()  # a diverged trial is a result
    assert not last[last.lr == 0.03].diverged.any() and (frame[frame.lr == 0.03].epoch.max() == 2)
    summary = summarize(frame)
    assert list(summary.columns) == ["optimizer", "delay", "lr", "accuracy_mean", "accuracy_std", "count", "diverged"]
    assert summary["count"].sum() == 4 and summary.diverged.sum() == 2
    assert any("4 failed" in line for line in lines) and any("best test accuracy" in line for line in lines)

    # resuming redoes no finished trial: their reports (with Tune's timestamps) stay as they were
    def finished_reports():
        return {p.parent.name: p.read_text() for p in path.glob("*/result.json")
                if not (p.parent / "error.txt").exists()}

    before = finished_reports()
    run_sweep(spec, resume=True, write=lines.append)
    assert finished_reports() == before and len(before) == 4

    out = report(path, write=lines.append, export=str(tmp_path / "r.parquet"), stable_region=False)
    assert all(p.exists() and p.stat().st_size > 0 for p in out["figures"])
    assert {p.suffix for p in out["figures"]} == {".png", ".svg"}
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(frame)


@pytest.mark.usefixtures("ray_cluster")
def test_distributed_trials_reserve_their_server_and_workers(tmp_path):
    # each trial needs 1 + 2 CPUs of the session's 4: the placement groups let one run at a time, no deadlock
    spec = parse_spec({"name": "d", "storage": str(tmp_path), "epochs": 1, "batch_size": 64, "mode": "free",
                       "workers": 2, "keep_checkpoints": True, "grid": {"optimizer": ["ab", "sgdm"]}})
    path = run_sweep(spec, write=lambda line: None)
    frame = load_tune_experiment(path)
    assert sorted(frame.optimizer) == ["ab", "sgdm"]
    assert (frame["mode"] == "free").all() and (frame.workers == 2).all() and (frame.staleness_mean > 0).all()
    # each trial's server checkpointed in a folder of its own inside the sweep's (kept: keep_checkpoints)
    folders = sorted((path / CHECKPOINTS_FOLDER).iterdir())
    saved = [torch.load(f / "checkpoint.pt", weights_only=False) for f in folders]
    assert len(folders) == 2 and [s["run_id"] for s in saved] == [f.name for f in folders]
    assert sorted(s["history"][-1].test_accuracy for s in saved) == sorted(frame.test_accuracy)


@pytest.mark.usefixtures("ray_cluster")
def test_random_search_runs_without_advice_to_run_a_missing_tensorboard(tmp_path, capsys):
    from importlib.util import find_spec

    spec = parse_spec({"name": "r", "storage": str(tmp_path), "epochs": 1, "batch_size": 128, "search": "random",
                       "num_samples": 3, "grid": {"lr": [0.01, 0.03, 0.1]}})
    path = run_sweep(spec, write=lambda line: None)
    frame = load_tune_experiment(path)
    status = trial_status(path)
    assert len(status) == 3 and not status.failed.any()
    assert set(frame.lr) <= {0.01, 0.03, 0.1} and frame.epoch.tolist() == [1, 1, 1]
    out, events = capsys.readouterr().out, list(path.glob("*/events.out.tfevents*"))
    assert "View detailed results here" in out
    if find_spec("tensorboard") is None:  # as in the project's environment: no advice to run it, no files for it
        assert "tensorboard" not in out.lower() and not events
    else:
        assert events


@pytest.mark.usefixtures("ray_cluster")
def test_asha_stops_a_trial_that_trails_at_its_first_rung(tmp_path):
    # one trial at a time, in grid order: the one that learns reaches ASHA's first rung (epoch 1) first, so the one
    # that barely moves (lr 1e-6) is below the rung's cutoff there and stopped; without a scheduler both run 4 epochs
    spec = parse_spec({"name": "a", "storage": str(tmp_path), "epochs": 4, "batch_size": 64, "warmup_epochs": 0,
                       "scheduler": "asha", "max_concurrent": 1, "grid": {"lr": [0.05, 1e-6]}})
    frame = load_tune_experiment(run_sweep(spec, write=lambda line: None))
    first = frame[frame.epoch == 1].set_index("lr").test_accuracy
    assert first[0.05] > first[1e-6]
    assert frame.groupby("lr").epoch.max().to_dict() == {1e-6: 1, 0.05: 4}


@pytest.mark.usefixtures("ray_cluster")
def test_a_trial_bigger_than_a_fixed_cluster_is_refused_before_tune_starts(tmp_path):
    import ray

    cpus = ray.cluster_resources()["CPU"]
    spec = parse_spec({"name": "big", "storage": str(tmp_path), "mode": "free", "workers": int(cpus),
                       "grid": {"delay": [0]}})
    with pytest.raises(ConfigError, match=rf"a free trial needs {cpus + 1:g} CPUs \(1 for the trial \+ "
                                          rf"{cpus:g} workers x 1\), but the Ray cluster has {cpus:g}"):
        run_sweep(spec, fixed_cluster=True)
    gpus = ray.cluster_resources().get("GPU", 0)
    spec = parse_spec({"name": "big", "storage": str(tmp_path), "mode": "distributed", "workers": 2,
                       "gpus_per_worker": gpus, "grid": {"delay": [0], "device": ["cpu"]}})
    with pytest.raises(ConfigError, match=rf"a distributed trial needs {2 * gpus:g} GPUs \(2 workers x {gpus:g}\), "
                                          rf"but the Ray cluster has {gpus:g} and cannot grow; lower workers or "
                                          "gpus_per_worker"):
        run_sweep(spec, fixed_cluster=True)
    assert not (tmp_path / "big").exists()
