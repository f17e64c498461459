"""Sweep overhead: an 8-trial digits sweep through Ray Tune against the same 8 runs back to back in one
process, measured in the same run.

Trials: SGDM and AB x delays {0, 8} x seeds {0, 1}, `abray train`'s defaults otherwise (60 epochs). Tune runs
them as 1-CPU trials, two at a time on a 2-CPU Ray; the serial loop runs them one after another in this process,
with the faster of 1 thread and torch's default (2 here), picked by timing one short run of each first (on a
loaded machine, torch's two OpenMP threads can be many times slower than one).

Reported: both wall times and their ratio; Tune's fixed cost per sweep (wall time less the trials' time at two
a time: Ray's start, Tune's set-up, the trial processes' start and imports, teardown) and per trial (a trial's
time in Tune less its training). Two bounds, also measured in the run: the floor, the same 8 runs in two plain
processes of one thread each with no Ray and no Tune (what any scheduler of one run per CPU could reach here,
at zero overhead); and packing, the forward and backward pass of 8 digits CNNs one after another against the 8
as one batched model (`torch.func.vmap`), the part of a step that several small trials in one process could
share. `--compare-with PATH` runs the same sweep with another checkout's abray (say
main, from `git archive`) in a process (and Ray) of its own, after this checkout's, for a same-run ratio.

    python benchmarks/sweep_overhead.py [--epochs 60] [--compare-with /tmp/abray-main]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import ray
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from checkouts import run_with_checkout

from abray.sweeps.spec import parse_spec
from abray.sweeps.tune import run_sweep
from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.epochs import batch_gradient
from abray.training.models import build_model
from abray.training.run import run

GRID = {"optimizer": ["sgdm", "ab"], "delay": [0, 8], "seed": [0, 1]}
DEFAULT_THREADS = torch.get_num_threads()  # before `serial` picks its count


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


def _one_thread_run(trial: dict) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    run(parse_config(trial), data=digits())
    return time.perf_counter() - start


def floor(epochs: int) -> float:
    """Wall time of the 8 runs in two plain processes of one thread each (started and warmed up beforehand)."""
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_one_thread_run, [{"epochs": 1}] * 2))
        start = time.perf_counter()
        list(pool.map(_one_thread_run, parse_spec({"name": "floor", "epochs": epochs, "grid": GRID}).trials))
        return time.perf_counter() - start


def packing(models: int = 8, steps: int = 200) -> dict:
    """ms per forward and backward pass (batch 32; no optimizer step, no data handling) of `models` digits CNNs: one
    after another, and as one model batched with torch.func.vmap; at 1 thread and at torch's default count."""
    nets = [build_model("digits_cnn", 10) for _ in range(models)]
    names = [n for n, _ in nets[0].named_parameters()]
    shell = copy.deepcopy(nets[0]).to("meta")
    x, y = torch.randn(models, 32, 1, 8, 8), torch.randint(0, 10, (models, 32))
    stacked = [torch.stack([dict(m.named_parameters())[n].detach() for m in nets]) for n in names]

    def one_by_one():  # as the simulator computes each gradient
        for i, m in enumerate(nets):
            batch_gradient(m, names, list(m.parameters()), x[i], y[i])

    def loss_of(weights, xs, ys):
        return F.cross_entropy(functional_call(shell, dict(zip(names, weights)), (xs,)), ys)

    def batched():
        leaves = [s.detach().requires_grad_() for s in stacked]
        torch.autograd.grad(vmap(loss_of)(leaves, x, y).sum(), leaves)

    times, threads = {}, torch.get_num_threads()
    for n in sorted({1, DEFAULT_THREADS}):
        torch.set_num_threads(n)
        for fn in (one_by_one, batched):
            for _ in range(10):
                fn()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[(fn.__name__, n)] = (time.perf_counter() - start) / steps * 1e3
    torch.set_num_threads(threads)
    return times


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
    return run_with_checkout(path, __file__, ["--tune-only", "--epochs", str(epochs)], timeout=3600)


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
    floor_wall = floor(args.epochs)
    print(f"  floor, two processes:  {floor_wall:6.1f} s  ->  {floor_wall / serial_wall:.2f}x serial (1 thread each, "
          f"no Ray, no Tune: one run per CPU at zero overhead)", flush=True)
    packed = packing()
    for n in sorted({n for _, n in packed}):
        print(f"  packing 8 digits CNNs, {n} thread{'s' if n > 1 else ''}: {packed[('one_by_one', n)]:.2f} ms a "
              f"pass one after another, {packed[('batched', n)]:.2f} ms batched  ->  "
              f"{packed[('batched', n)] / packed[('one_by_one', n)]:.2f}x", flush=True)
    tune = tune_sweep(args.epochs)
    describe("Ray Tune, this checkout", tune, serial_wall)
    print(f"  {'less ray.init':22s} {tune['wall'] - tune['ray_init']:6.1f} s  ->  "
          f"{(tune['wall'] - tune['ray_init']) / serial_wall:.2f}x serial (computed: what a running cluster, the job "
          f"service's or RAY_ADDRESS's, would save)", flush=True)
    if args.compare_with:
        describe("Ray Tune, --compare-with", compare(args.compare_with, args.epochs), serial_wall)
    print(f"  load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
