"""The parameter server's own costs per update against model size: the inputs of docs/scale.md's model.

The server's logic (`ParameterServerState`, as the actor runs it, with its versions in shared memory through
`VersionStore`) is driven here in one process, without Ray calls, for fixed-mode updates with W = 1, D = 0:
hand-out (`next_work`), apply (the optimizer's step on the flat buffer, the schedule, bookkeeping) and put (the
next version copied into its shared-memory slot), each the median over the timed updates; plus `ray.put` of one
version (what a worker on another node costs the server: the version into the object store, once), and a plain
copy of the same bytes (memory bandwidth, for scale); and, for the model's other side, one worker's gradient
of each model at batch 32 on this CPU (one thread; ResNet-50 on 224 x 224 images). Models: the digits MLP (1.08 M weights), ResNet-20
(0.27 M) and ResNet-50 (25.6 M); optimizers SGDM and AB (default granularity). One torch thread, as in the actor.

    python benchmarks/server_costs.py [--updates 12] [--models digits_mlp,resnet20,resnet50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import numpy as np
import ray
import torch

from abray.training.config import parse_config
from abray.training.parameter_server import ParameterServerState
from abray.training.transport import VersionStore

CLASSES = {"digits_mlp": 10, "resnet20": 10, "resnet50": 1000}
DATASET = {"digits_mlp": "digits", "resnet20": "cifar10", "resnet50": "imagenet"}


def costs(model_name: str, optimizer: str, updates: int) -> dict:
    config = parse_config({"mode": "distributed", "workers": 1, "delay": 0, "optimizer": optimizer,
                           "model": model_name, "dataset": DATASET[model_name], "batch_size": 32, "epochs": 1,
                           "warmup_epochs": 0, "checkpoint_every": 10**6, "data_root": "(not read)"})
    store = VersionStore(f"abray-bench-{uuid.uuid4().hex[:8]}", 2, put=np.copy, get=lambda a: a)
    try:
        state = ParameterServerState(config, None, 32 * 10**6, CLASSES[model_name], None, "bench",
                                     put=store.put, get=store.get, drop=store.drop)
        numel = state.layout.numel
        grad = np.random.default_rng(0).standard_normal(numel).astype(np.float32) * 1e-3
        handout, apply, put = [], [], []
        for _ in range(updates + 2):  # the first two warm up
            t0 = time.perf_counter()
            work = state.next_work((0, 0))
            t1 = time.perf_counter()
            before = state.put_seconds
            state.receive(work["lease"], grad, 1.0, None)
            t2 = time.perf_counter()
            handout.append(t1 - t0)
            put.append(state.put_seconds - before)
            apply.append(t2 - t1 - put[-1])
        weights = state.flat.numpy()
        copy = []
        for _ in range(5):
            target = np.empty_like(weights)
            t0 = time.perf_counter()
            np.copyto(target, weights)
            copy.append(time.perf_counter() - t0)
        ray_put = []
        for _ in range(5):
            t0 = time.perf_counter()
            ref = ray.put(weights)
            ray_put.append(time.perf_counter() - t0)
            del ref
    finally:
        store.close()
    med = statistics.median
    return {"numel": numel, "handout": med(handout[2:]), "apply": med(apply[2:]), "put": med(put[2:]),
            "copy": med(copy), "ray_put": med(ray_put)}


def gradient_seconds(model_name: str, repeats: int = 2) -> float:
    """One batch-32 gradient of the model on this CPU, one thread (the best of `repeats` after a warm-up)."""
    from abray.training.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, CLASSES[model_name]).train()
    shape = {"digits_mlp": (1, 8, 8), "resnet20": (3, 32, 32), "resnet50": (3, 224, 224)}[model_name]
    x, y = torch.randn(32, *shape), torch.randint(0, CLASSES[model_name], (32,))
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--models", default="digits_mlp,resnet20,resnet50")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"load average at start {os.getloadavg()[0]:.1f}; medians in ms, one torch thread; GB/s = 4 bytes x "
          "weights / time", flush=True)
    print(f"{'model':10s} {'weights':>8s} {'optimizer':>9s} {'hand-out':>9s} {'apply':>8s} {'put (shm)':>10s} "
          f"{'ray.put':>8s} {'copy':>7s} {'put GB/s':>8s} {'gradient':>9s}", flush=True)
    try:
        for model_name in args.models.split(","):
            compute = gradient_seconds(model_name)
            for optimizer in ("sgdm", "ab"):
                c = costs(model_name, optimizer, args.updates)
                print(f"{model_name:10s} {c['numel'] / 1e6:7.2f}M {optimizer:>9s} {c['handout'] * 1e3:9.3f} "
                      f"{c['apply'] * 1e3:8.2f} {c['put'] * 1e3:10.2f} {c['ray_put'] * 1e3:8.2f} "
                      f"{c['copy'] * 1e3:7.2f} {4 * c['numel'] / c['put'] / 1e9:8.2f} {compute * 1e3:9.1f}", flush=True)
    finally:
        ray.shutdown()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
