"""Parameter-server throughput: abray's server against a baseline in the style of Ray's parameter-server
tutorial, in the same run, with where abray's time per update goes.

abray: weights in one flat fp32 buffer, each version put in the object store once; each worker runs a loop that
trades its gradient (a flat numpy array, through the object store) for its next work with the server directly,
one Ray call per update, while the driver only listens. Baseline (Ray's tutorial, asynchronous version): the
driver waits for any gradient, sends it to the server, whose `apply_gradients` returns its weights as a
state_dict of torch tensors, and sends those to the worker; per-parameter gradient lists, no flat buffer, no
`ray.put`. Both run SGDM (abray's free mode is the tutorial's asynchronous scheme; fixed mode adds in-order
application) on ResNet-20 (0.27 M weights, synthetic CIFAR-shaped data) and a 1.08 M-weight MLP (digits), with
W = 1, 2, 4 workers of half a CPU each (one torch thread), all on a 2-CPU Ray.

Reported: updates per second (after the first 10, so actor start-up is excluded), the ratio to the baseline,
the server's own time per update (hand-out, apply, put of the next version) as a fraction of one gradient's
compute, and a per-update breakdown (medians, ms). `--compare-with PATH` runs abray from another checkout
(say main, from `git archive`) for the same configurations, each right after this checkout's, in a process of
its own; its server time is what it measured (its `server_seconds`).

    python benchmarks/ps_throughput.py [--updates 120] [--models digits_mlp,resnet20] [--workers 1,2,4]
                                       [--compare-with /tmp/abray-main]

About 8 minutes on 2 cores (with W = 4, four workers share two cores); twice that with --compare-with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import ray
import torch
from torch.utils.data import TensorDataset

from checkouts import run_with_checkout

from abray.training.config import parse_config
from abray.training.data import DataSplit, batch_indices, collate, digits
from abray.training.distributed import train_distributed
from abray.training.models import build_model

SKIP = 10  # updates excluded from the rate (start-up)
CPUS_PER_WORKER = 0.5  # W = 4 fits the 2-CPU Ray this machine allows; torch runs one thread either way
BREAKDOWN = ["compute", "fetch", "transfer", "queue", "handout", "apply", "put", "wait"]


def synthetic_cifar(n: int) -> DataSplit:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataSplit(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), 10, (3, 32, 32))


def dataset(model_name: str) -> DataSplit:
    return synthetic_cifar(32 * 40) if model_name == "resnet20" else digits()


@ray.remote
class TutorialServer:
    def __init__(self, model_name, lr):
        torch.set_num_threads(1)
        self.model = build_model(model_name, 10)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)

    def apply_gradients(self, *gradients):
        summed = [np.stack(g).sum(axis=0) for g in zip(*gradients)]
        self.optimizer.zero_grad()
        for p, g in zip(self.model.parameters(), summed):
            p.grad = torch.from_numpy(g)
        self.optimizer.step()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def get_weights(self):
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}


@ray.remote
class TutorialWorker:
    def __init__(self, model_name, data, batch_size):
        torch.set_num_threads(1)
        self.model = build_model(model_name, 10)
        self.data, self.batch_size, self.step = data, batch_size, 0

    def compute_gradients(self, weights):
        self.model.load_state_dict(weights)
        batches = batch_indices(len(self.data.train), self.batch_size, 0, self.step // 10**6)
        x, y = collate(self.data.train, batches[self.step % len(batches)])
        self.step += 1
        self.model.zero_grad()
        torch.nn.functional.cross_entropy(self.model(x), y).backward()
        return [p.grad.numpy().copy() for p in self.model.parameters()]


def baseline_rate(model_name, data, workers, updates, batch_size=32) -> float:
    ps = TutorialServer.options(num_cpus=0).remote(model_name, 0.01)
    ws = [TutorialWorker.options(num_cpus=CPUS_PER_WORKER).remote(model_name, data, batch_size)
          for _ in range(workers)]
    current = ps.get_weights.remote()
    gradients = {w.compute_gradients.remote(current): w for w in ws}
    stamps = []
    for _ in range(updates):
        [ready], _ = ray.wait(list(gradients))
        worker = gradients.pop(ready)
        current = ps.apply_gradients.remote(ready)
        gradients[worker.compute_gradients.remote(current)] = worker
        ray.get(current)
        stamps.append(time.perf_counter())
    for a in [ps, *ws]:
        ray.kill(a)
    return (len(stamps) - SKIP - 1) / (stamps[-1] - stamps[SKIP])


def breakdown(update: dict) -> dict:
    """One update's times (s), from what the server and the worker recorded: the worker's compute and fetch of
    the weights; of its exchange call's round trip, the server's queue for its lock, hand-out (and the put of a
    new version at hand-out, in free mode), wait for work (fixed mode), and the rest, transfer (Ray's call, the
    gradient into the object store and the work back); the server's apply and put of the version after it."""
    in_call = update["server_in_call"]
    return {"compute": update["compute_time"], "fetch": update["fetch_time"],
            "transfer": max(0.0, update["round_trip"] - in_call), "queue": update["server_queue"],
            "handout": update["server_handout"], "apply": update["apply_seconds"],
            "put": update["put_seconds"] + update["server_handout_put"], "wait": update["server_wait"]}


def abray_rate(model_name, data, workers, updates, mode, batch_size=32, **extra) -> dict:
    """`extra`: more config fields (benchmarks/shard_throughput.py: server_shards)."""
    steps_per_epoch = len(data.train) // batch_size
    values = dict(optimizer="sgdm", mode=mode, workers=workers, delay=max(0, workers - 1), batch_size=batch_size,
                  epochs=max(1, -(-updates // steps_per_epoch)), lr=0.01, warmup_epochs=0, model=model_name,
                  checkpoint_every=10**6, cpus_per_worker=CPUS_PER_WORKER)
    if model_name == "resnet20":
        values.update(dataset="cifar10", data_root="(synthetic)")
    values.update(extra)
    seen: list[tuple[float, dict]] = []
    train_distributed(parse_config(values), data, on_update=lambda u: seen.append((time.perf_counter(), u)))
    # the driver hears of updates in batches: rate by the server's count, between the first poll after SKIP
    # updates and the last
    (t0, u0), (t1, u1) = next(s for s in seen if s[1]["applied"] > SKIP), seen[-1]
    found = {"rate": (u1["applied"] - u0["applied"]) / (t1 - t0),
             "compute": statistics.median(u["compute_time"] for _, u in seen),
             "server_seconds": statistics.median(u["server_seconds"] for _, u in seen)}
    if "round_trip" in u1:  # this checkout's loop: the breakdown
        parts = [breakdown(u) for _, u in seen[SKIP:] if "round_trip" in u]
        found["breakdown"] = {k: statistics.median(p[k] for p in parts) for k in BREAKDOWN}
        found["server_own"] = statistics.median(p["handout"] + p["apply"] + p["put"] for p in parts)
    return found


def compare(path: str, model_name: str, workers: int, updates: int) -> dict:
    """The other checkout's free and fixed runs of one configuration, in a process (and Ray) of its own."""
    return run_with_checkout(path, __file__, ["--one", model_name, str(workers), "--updates", str(updates)],
                             timeout=1800)


def start_ray() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)


def one(model_name: str, workers: int, updates: int) -> None:
    """--one: this process's abray (whichever PYTHONPATH names), free and fixed, as a JSON line."""
    start_ray()
    data = dataset(model_name)
    found = {mode: abray_rate(model_name, data, workers, updates, mode) for mode in ("free", "distributed")}
    ray.shutdown()
    import abray
    print(json.dumps({"abray": os.path.dirname(os.path.dirname(abray.__file__)), **found}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--models", default="digits_mlp,resnet20")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--compare-with", metavar="PATH", help="another abray checkout, run after each configuration")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "W"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one[0], int(args.one[1]), args.updates)
    print(f"load average at start: {os.getloadavg()[0]:.1f}; {args.updates} updates a run; updates per second; "
          "server = the server's own time per update (hand-out + apply + put) / one gradient's compute; "
          "x = ratio to the baseline\n", flush=True)
    head = (f"{'model':10s} {'W':>2s} {'baseline':>8s} {'free':>6s} {'x':>5s} {'fixed':>6s} {'x':>5s} "
            f"{'server':>7s}")
    if args.compare_with:
        head += f"  | {'old free':>8s} {'x':>5s} {'old fixed':>9s} {'x':>5s} {'old server*':>11s}"
    print(head, flush=True)
    rows = []
    for model_name in args.models.split(","):
        start_ray()
        data = dataset(model_name)
        for workers in map(int, args.workers.split(",")):
            base = baseline_rate(model_name, data, workers, args.updates)
            free = abray_rate(model_name, data, workers, args.updates, "free")
            fixed = abray_rate(model_name, data, workers, args.updates, "distributed")
            line = (f"{model_name:10s} {workers:2d} {base:8.1f} {free['rate']:6.1f} {free['rate'] / base:5.2f} "
                    f"{fixed['rate']:6.1f} {fixed['rate'] / base:5.2f} {free['server_own'] / free['compute']:7.1%}")
            rows.append((model_name, workers, free, fixed))
            if args.compare_with:
                ray.shutdown()  # one Ray at a time on this machine
                old = compare(args.compare_with, model_name, workers, args.updates)
                start_ray()
                line += (f"  | {old['free']['rate']:8.1f} {old['free']['rate'] / base:5.2f} "
                         f"{old['distributed']['rate']:9.1f} {old['distributed']['rate'] / base:5.2f} "
                         f"{old['free']['server_seconds'] / old['free']['compute']:11.1%}")
            print(line + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
        ray.shutdown()
    if args.compare_with:
        print("\n* the old server time is what it measured: apply (and, in fixed mode, put) per update, without the "
              "hand-out and its put")
    print("\nper-update breakdown, medians in ms (transfer = the exchange's round trip less the server's time in it)")
    print(f"{'model':10s} {'W':>2s} {'mode':5s} " + " ".join(f"{k:>8s}" for k in BREAKDOWN))
    for model_name, workers, free, fixed in rows:
        for mode, found in (("free", free), ("fixed", fixed)):
            print(f"{model_name:10s} {workers:2d} {mode:5s} "
                  + " ".join(f"{1000 * found['breakdown'][k]:8.2f}" for k in BREAKDOWN))


if __name__ == "__main__":
    main()
