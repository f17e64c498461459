"""Sweep overhead: an 8-trial digits sweep through Ray Tune against the same 8 runs back to back in one
process, measured in the same run.

Trials: SGDM and AB x delays {0, 8} x seeds {0, 1}, `abray train`'s defaults otherwise (60 epochs). Tune runs
them as 1-CPU trials, two at a time on a 2-CPU Ray; the serial loop runs them one after another in this process,
with the faster of 1 thread and torch's default (2 here), picked by timing one short run of each first (on a
loaded machine, torch's two OpenMP threads can be many times slower than one).

Reported: both wall times and their ratio; Tune's fixed cost per sweep (wall time less the trials' time at two
a time: Ray's start, Tune's set-up, the trial processes' start and imports, teardown) and per trial (a trial's
time in Tune less its training). `--compare-with PATH` runs the same sweep with another checkout's abray (say
main, from `git archive`) in a process (and Ray) of its own, after this checkout's, for a same-run ratio.

    python benchmarks/sweep_overhead.py [--epochs 60] [--compare-with /tmp/abray-main]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ray
import torch

from abray.sweeps.spec import parse_spec
from abray.sweeps.tune import run_sweep
from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.run import run

GRID = {"optimizer": ["sgdm", "ab"], "delay": [0, 8], "seed": [0, 1]}


def serial(epochs: int) -> tuple[float, float, int]:
    """(wall time, time inside training, threads) of the 8 runs back to back in this process."""
    data = digits()
    timed = {}
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        run(parse_config({"epochs": 2}), data=data)
        timed[threads] = time.perf_counter() - start
    threads = min(timed, key=timed.get)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    training = 0.0
    for trial in parse_spec({"name": "serial", "epochs": epochs, "grid": GRID}).trials:
        training += sum(m.wall_time for m in run(parse_config(trial), data=data))
    return time.perf_counter() - start, training, threads


def tune_sweep(epochs: int) -> dict:
    """This process's abray (whichever PYTHONPATH names) through Tune, with its own Ray."""
    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_up = time.perf_counter() - start
        path = run_sweep(parse_spec({"name": "overhead", "epochs": epochs, "grid": GRID, "storage": storage}),
                         write=lambda line: None)
        wall = time.perf_counter() - start
        trial_wall, trial_training = [], []
        for result in Path(path).glob("*/result.json"):
            lines = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
            trial_wall.append(lines[-1]["time_total_s"])
            trial_training.append(sum(x["wall_time"] for x in lines))
        ray.shutdown()
    return {"wall": wall, "ray_init": ray_up, "trial_wall": sum(trial_wall), "trial_training": sum(trial_training),
            "trials": len(trial_wall)}


def compare(path: str, epochs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, os.environ.get("PYTHONPATH", "")])}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, __file__, "--tune-only", "--epochs", str(epochs)], env=env,
                         capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(name: str, tune: dict, serial_wall: float) -> None:
    fixed = tune["wall"] - tune["trial_wall"] / 2  # two trials at a time
    per_trial = (tune["trial_wall"] - tune["trial_training"]) / tune["trials"]
    print(f"  {name:22s} {tune['wall']:6.1f} s  (ray.init {tune['ray_init']:.1f} s)  ->  "
          f"{tune['wall'] / serial_wall:.2f}x serial; inside trials {tune['trial_wall']:.1f} s, of which training "
          f"{tune['trial_training']:.1f} s; fixed cost per sweep ~{fixed:.1f} s, per trial ~{per_trial:.2f} s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--compare-with", metavar="PATH", help="another abray checkout, run after this one's")
    parser.add_argument("--tune-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tune_only:
        print(json.dumps(tune_sweep(args.epochs)))
        return
    print(f"8 trials, {args.epochs} epochs each, 2 cores; load average at start {os.getloadavg()[0]:.1f}", flush=True)
    serial_wall, serial_training, threads = serial(args.epochs)
    print(f"  serial, one process:   {serial_wall:6.1f} s  (training {serial_training:.1f} s, {threads} thread"
          f"{'s' if threads > 1 else ''})", flush=True)
    describe("Ray Tune, this checkout", tune_sweep(args.epochs), serial_wall)
    if args.compare_with:
        describe("Ray Tune, --compare-with", compare(args.compare_with, args.epochs), serial_wall)
    print(f"  load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
