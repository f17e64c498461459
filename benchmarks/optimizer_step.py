"""Optimizer step cost: ABSGD against torch.optim.SGD(momentum=0.9, foreach=True), CPU.

Every optimizer steps the same parameter shapes (ResNet-20's, 0.27 M weights in 59 tensors, and
ResNet-50's, 25.6 M in 161) with fixed random gradients; their steps are interleaved in one run so that
machine noise hits them alike, in a new random order at every step. Each figure is a median over the
timed steps, printed as a ratio to SGD's median. Noise: the run is cut into 5 consecutive blocks and the
spread of the per-block ratios is printed too; "ABSGD default" and "ABSGD foreach" run the same code on
CPU, so their difference is noise as well.
`--compile` adds both steps under torch.compile; `--breakdown` times the phases of AB's default step on
ResNet-20's shapes beside SGD's three foreach ops.

    python benchmarks/optimizer_step.py [--threads N] [--compile] [--breakdown]

Figures and their analysis: docs/optimizer-step.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from abray.optim import ABSGD
from abray.training.models import build_model

MODELS = {"resnet20": (10, 500), "resnet50": (1000, 60)}  # num_classes, timed steps
BLOCKS = 5

OPTIMIZERS = {
    "SGD foreach": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True),
    "ABSGD default": lambda ps: ABSGD(ps, lr=1e-3),
    "ABSGD foreach": lambda ps: ABSGD(ps, lr=1e-3, foreach=True),
    "ABSGD single-tensor": lambda ps: ABSGD(ps, lr=1e-3, foreach=False),
    "ABSGD counting braking": lambda ps: ABSGD(ps, lr=1e-3, track_braking=True),
    "ABSGD global": lambda ps: ABSGD(ps, lr=1e-3, granularity="global"),
    "ABSGD element": lambda ps: ABSGD(ps, lr=1e-3, granularity="element"),
}


def make_params(model_name: str):
    num_classes, _ = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(model_name, num_classes)
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def step_times(steppers: dict, steps: int, warmup: int = 3) -> dict[str, list[float]]:
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steppers}
    order, rng = list(steppers.items()), random.Random(0)
    for _ in range(steps):
        # interleaved, so that noise lands on every optimizer alike, in a new order at every step, so that none
        # always runs after the same one (whose data evicted its own from the cache)
        rng.shuffle(order)
        for name, step in order:
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def block_ratios(times: list[float], base: list[float]) -> list[float]:
    size = len(times) // BLOCKS
    return [statistics.median(times[i:i + size]) / statistics.median(base[i:i + size])
            for i in range(0, size * BLOCKS, size)]


def breakdown(steps: int = 500) -> None:
    """Where AB's default step goes on ResNet-20's shapes (everything in one flat block), phase by phase."""
    from abray.optim import functional as F

    params = [p.detach() for p in make_params("resnet20")]
    grads = [torch.randn_like(p) * 1e-2 for p in params]
    sgd_params, sgd_bufs = [p.clone() for p in params], [torch.randn_like(p) for p in params]
    bufs = [torch.randn_like(p) * 1e-2 for p in params]
    numels = tuple(p.numel() for p in params)
    block = F._FlatBlock(params, grads, bufs, 0.0, numels)  # adopts the buffers once
    bufs = block.velocity_views
    sums = block.sums()
    factors = 1 - 1.5 * F._cosine(*sums.unbind(1), 1e-8)
    sgd_opt = torch.optim.SGD([p.clone().requires_grad_() for p in params], lr=1e-3, momentum=0.9, foreach=True)
    ab_opt = ABSGD([p.clone().requires_grad_() for p in params], lr=1e-3)
    for opt in (sgd_opt, ab_opt):
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = g

    def sgd_ops():
        torch._foreach_mul_(sgd_bufs, 0.9)
        torch._foreach_add_(sgd_bufs, grads)
        torch._foreach_add_(sgd_params, sgd_bufs, alpha=-1e-3)

    phases = {
        "SGD.step": sgd_opt.step,
        "  its 3 foreach ops": sgd_ops,
        "ABSGD.step (default)": ab_opt.step,
        "  block: check, copy g in": lambda: F._FlatBlock(params, grads, bufs, 0.0, numels),
        "  sums <g,v>, |g|^2, |v|^2": block.sums,
        "  factors 1 - rho c": lambda: 1 - 1.5 * F._cosine(*sums.unbind(1), 1e-8),
        "  update v and w": lambda: block.step(factors, lr=1e-3, momentum=0.9, nesterov=False),
    }
    times = step_times(phases, steps)
    print(f"\nresnet20 phases, median of {steps} (interleaved)")
    for name, ts in times.items():
        print(f"  {name:28s} {statistics.median(ts) * 1e6:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time both steps under torch.compile")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--breakdown", action="store_true", help="only time the phases of AB's step (ResNet-20)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.breakdown:
        breakdown()
        return
    for model_name, (_, steps) in MODELS.items():
        steppers = {name: make(make_params(model_name)).step for name, make in OPTIMIZERS.items()}
        if args.compile:
            for name in ("SGD foreach", "ABSGD foreach"):
                compiled = torch.compile(OPTIMIZERS[name](make_params(model_name)).step)
                start = time.perf_counter()
                compiled()
                print(f"  {model_name}: compiling {name} took {time.perf_counter() - start:.0f} s")
                steppers[f"{name} compiled"] = compiled
        params = make_params(model_name)
        times = step_times(steppers, steps)
        base = times["SGD foreach"]
        print(f"\n{model_name}: {sum(p.numel() for p in params) / 1e6:.2f} M parameters in {len(params)} tensors, "
              f"median of {steps} steps; ratio to SGD, and its range over {BLOCKS} blocks of the run")
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        for name, ts in times.items():
            ratios = block_ratios(ts, base)
            print(f"  {name:24s} {medians[name] * 1e3:9.3f} ms   {medians[name] / medians['SGD foreach']:5.2f}x"
                  f"   [{min(ratios):.2f}, {max(ratios):.2f}]")
        if args.compile:
            ratio = medians["ABSGD foreach compiled"] / medians["SGD foreach compiled"]
            print(f"  {'compiled AB / compiled SGD':24s} {'':9s}      {ratio:5.2f}x")


if __name__ == "__main__":
    main()
