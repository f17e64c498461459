"""Sharded parameter servers on one machine: updates per second with `server_shards` = 1, 2, 4, in the same run.

A local multi-actor run (a 2-CPU Ray on this machine): W = 4 workers of half a CPU, SGDM, free and fixed mode
(D = 3), the digits MLP (1.08 M weights in 6 tensors) and ResNet-20 (0.27 M in 59); each shard is an actor of its
own, all on this node, so weights and gradients go through shared memory and the shards share its two cores.
What it shows is the cost of the protocol (a worker's extra calls to the followers) against the division of the
server's per-update work; the network effect of docs/scale.md (each shard on its own node, with its own card)
needs several nodes. Reported: updates/s after the first 10 (ratio to one server) and the leading server's own
time per update (hand-out + apply + put of its part).

    python benchmarks/shard_throughput.py [--updates 120] [--shards 1,2,4] [--models digits_mlp,resnet20]
"""

from __future__ import annotations

import argparse
import os
import sys

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ps_throughput import abray_rate, dataset, start_ray  # noqa: E402

WORKERS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--models", default="digits_mlp,resnet20")
    args = parser.parse_args()
    print(f"load average at start {os.getloadavg()[0]:.1f}; W = {WORKERS}; updates/s (x = ratio to one server); "
          "leader = the leading server's own time per update, ms", flush=True)
    print(f"{'model':10s} {'shards':>6s} {'free':>7s} {'x':>5s} {'leader':>7s} {'fixed':>7s} {'x':>5s} {'leader':>7s}",
          flush=True)
    for model_name in args.models.split(","):
        start_ray()
        data = dataset(model_name)
        one = {}
        for shards in map(int, args.shards.split(",")):
            found = {mode: abray_rate(model_name, data, WORKERS, args.updates, mode, server_shards=shards)
                     for mode in ("free", "distributed")}
            one = one or found
            print(f"{model_name:10s} {shards:6d} " + " ".join(
                f"{found[m]['rate']:7.1f} {found[m]['rate'] / one[m]['rate']:5.2f} {1e3 * found[m]['server_own']:7.2f}"
                for m in ("free", "distributed")) + f"   (load {os.getloadavg()[0]:.1f})", flush=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
