"""Sweep overhead: an 8-trial digits sweep through Ray Tune against the same 8 runs back to back in one
process, measured in the same run.

Trials: SGDM and AB x delays {0, 8} x seeds {0, 1}, `abray train`'s defaults otherwise (60 epochs). Tune runs
them as 1-CPU trials, two at a time on this machine's 2 cores; the serial loop runs them one after another
with torch's default threads. Reported: both wall times and their ratio, Tune's fixed cost per sweep (Ray
start-up, Tuner set-up and teardown: wall time minus the time spent inside trials, divided by
concurrency) and per trial (a trial's wall time in Tune minus its training time).

    python benchmarks/sweep_overhead.py [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import ray

from abray.sweeps.spec import parse_spec
from abray.sweeps.tune import run_sweep
from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.run import run

GRID = {"optimizer": ["sgdm", "ab"], "delay": [0, 8], "seed": [0, 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    spec_values = {"name": "overhead", "epochs": args.epochs, "grid": GRID}

    start = time.perf_counter()
    data = digits()
    serial_training = 0.0
    for trial in parse_spec(spec_values).trials:
        history = run(parse_config(trial), data=data)
        serial_training += sum(m.wall_time for m in history)
    serial = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_up = time.perf_counter() - start
        path = run_sweep(parse_spec({**spec_values, "storage": storage}), write=lambda line: None)
        tune_wall = time.perf_counter() - start
        trial_wall, trial_training = [], []
        for result in Path(path).glob("*/result.json"):
            lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
            trial_wall.append(lines[-1]["time_total_s"])
            trial_training.append(sum(x["wall_time"] for x in lines))
        ray.shutdown()

    per_trial = (sum(trial_wall) - sum(trial_training)) / len(trial_wall)
    fixed = tune_wall - sum(trial_wall) / 2  # two trials at a time
    print(f"8 trials, {args.epochs} epochs each, 2 cores")
    print(f"  serial, one process:  {serial:6.1f} s  (training {serial_training:.1f} s)")
    print(f"  Ray Tune:             {tune_wall:6.1f} s  (ray.init {ray_up:.1f} s)  ->  {tune_wall / serial:.2f}x serial")
    print(f"  inside trials: {sum(trial_wall):.1f} s, of which training {sum(trial_training):.1f} s")
    print(f"  Tune fixed cost per sweep ~{fixed:.1f} s (ray.init, Tuner set-up, teardown); per trial "
          f"~{per_trial:.2f} s beyond its training (process, imports, data, reporting)")


if __name__ == "__main__":
    main()
