"""Parameter-server throughput: abray's server against a baseline in the style of Ray's parameter-server
tutorial, in the same run.

abray: weights in one flat fp32 buffer, each version put in the object store once, gradients as flat
numpy arrays passed worker -> server by reference. Baseline (Ray's tutorial, asynchronous version):
the server returns its weights as a state_dict of torch tensors from every `apply_gradients` call,
workers return per-parameter gradient lists, no flat buffer, no `ray.put`. Both run SGDM (abray's
free mode is the tutorial's asynchronous scheme; fixed mode adds in-order application), on ResNet-20
(0.27 M weights, synthetic CIFAR-shaped data) and a 1.08 M-weight MLP (digits), W = 1, 2, 4 workers.

Reported: updates per second (after the first 10, so actor start-up is excluded), the ratio to the
baseline, and the server's own time per update as a fraction of one gradient's compute time.

    python benchmarks/ps_throughput.py [--updates 120]

About 6 minutes on 2 cores (with W = 4, four workers share two cores).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import ray
import torch
from torch.utils.data import TensorDataset

from abray.training.config import parse_config
from abray.training.data import DataSplit, batch_indices, collate, digits
from abray.training.distributed import train_distributed
from abray.training.models import build_model

SKIP = 10  # updates excluded from the rate (start-up)


def synthetic_cifar(n: int) -> DataSplit:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataSplit(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), 10, (3, 32, 32))


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
    ps = TutorialServer.remote(model_name, 0.01)
    ws = [TutorialWorker.remote(model_name, data, batch_size) for _ in range(workers)]
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


def abray_rate(model_name, data, workers, updates, mode, batch_size=32):
    steps_per_epoch = len(data.train) // batch_size
    values = dict(optimizer="sgdm", mode=mode, workers=workers, delay=max(0, workers - 1), batch_size=batch_size,
                  epochs=max(1, -(-updates // steps_per_epoch)), lr=0.01, warmup_epochs=0, model=model_name,
                  checkpoint_every=10**6)
    if model_name == "resnet20":
        values.update(dataset="cifar10", data_root="(synthetic)")
    stamps, server, compute = [], [], []

    def on_update(u):
        stamps.append(time.perf_counter())
        server.append(u["server_seconds"])
        compute.append(u["compute_time"])

    train_distributed(parse_config(values), data, on_update=on_update)
    rate = (len(stamps) - SKIP - 1) / (stamps[-1] - stamps[SKIP])
    return rate, statistics.median(server) / statistics.median(compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=120)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    datasets = {"resnet20": synthetic_cifar(32 * 40), "digits_mlp": digits()}
    print(f"updates per second (median of steady state), {args.updates} updates a run; "
          "server time = the server's time per update / one gradient's compute time\n")
    print(f"{'model':11s} {'W':>2s}  {'baseline':>9s}  {'abray free':>10s} {'x':>5s}  {'abray fixed':>11s} {'x':>5s}"
          f"  {'server time (free)':>18s}")
    for model_name, data in datasets.items():
        for workers in (1, 2, 4):
            base = baseline_rate(model_name, data, workers, args.updates)
            free, frac = abray_rate(model_name, data, workers, args.updates, "free")
            fixed, _ = abray_rate(model_name, data, workers, args.updates, "distributed")
            print(f"{model_name:11s} {workers:2d}  {base:9.1f}  {free:10.1f} {free / base:5.2f}  {fixed:11.1f} "
                  f"{fixed / base:5.2f}  {100 * frac:17.1f}%", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
