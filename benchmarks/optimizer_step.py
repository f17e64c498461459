"""Optimizer step cost: ABSGD against torch.optim.SGD(momentum=0.9, foreach=True), CPU.

Both optimizers step the same parameter shapes (ResNet-20's, 0.27 M weights in 59 tensors, and
ResNet-50's, 25.6 M in 161) with fixed random gradients; each figure is the median over many steps,
the optimizers' steps interleaved in one run so that machine noise hits both alike, and printed as a
ratio to SGD's step. `--compile` adds the same comparison with both steps under torch.compile.

    python benchmarks/optimizer_step.py [--compile] [--threads N]

Figures and their analysis are in the README ("Optimizer step cost").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from abray.training.models import build_model
from abray.optim import ABSGD

MODELS = {"resnet20": (10, 400), "resnet50": (1000, 30)}  # num_classes, timed steps


def make_params(model_name: str):
    num_classes, _ = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, num_classes)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def median_step_times(steppers: dict, steps: int, warmup: int = 3) -> dict:
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steppers}
    for _ in range(steps):
        for name, step in steppers.items():  # interleaved: noise lands on every optimizer alike
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time both steps under torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for model_name, (_, steps) in MODELS.items():
        optimizers = {
            "SGD foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
            "ABSGD foreach": lambda ps: ABSGD(ps, lr=1e-3, foreach=True),
            "ABSGD single-tensor": lambda ps: ABSGD(ps, lr=1e-3, foreach=False),
            "ABSGD global foreach": lambda ps: ABSGD(ps, lr=1e-3, granularity="global", foreach=True),
            "ABSGD element foreach": lambda ps: ABSGD(ps, lr=1e-3, granularity="element", foreach=True),
        }
        steppers = {name: make(make_params(model_name)).step for name, make in optimizers.items()}
        if args.compile:
            for name in ("SGD foreach", "ABSGD foreach"):
                opt = optimizers[name](make_params(model_name))
                compiled = torch.compile(opt.step)
                start = time.perf_counter()
                compiled()
                print(f"  {model_name}: compiling {name} took {time.perf_counter() - start:.0f} s")
                steppers[f"{name} compiled"] = compiled
        params = make_params(model_name)
        n = sum(p.numel() for p in params)
        medians = median_step_times(steppers, steps)
        base = medians["SGD foreach"]
        print(f"\n{model_name}: {n / 1e6:.2f} M parameters in {len(params)} tensors, median of {steps} steps")
        for name, t in medians.items():
            print(f"  {name:28s} {t * 1e3:9.3f} ms   {t / base:5.2f}x SGD")
        if args.compile:
            ratio = medians["ABSGD foreach compiled"] / medians["SGD foreach compiled"]
            print(f"  {'compiled AB / compiled SGD':28s} {'':9s}      {ratio:5.2f}x")


if __name__ == "__main__":
    main()
