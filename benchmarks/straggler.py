"""Time to accuracy with a straggler: 4 workers, one of them 4x slower.

- asynchronous: abray's free mode, AB-SGDM, each worker computing whole batches and the server applying
  them as they arrive (staleness is whatever the cluster produces);
- synchronous data-parallel SGDM on the same 4 worker actors: every step splits the batch in 4 shards,
  waits for all 4 gradients (so for the straggler), averages them and takes one SGDM step: the
  undelayed trajectory of SGDM with the same batch size.

Both use `abray train`'s defaults (digits_cnn, lr 0.03, batch 32, 5 warmup epochs, cosine over 60
epochs) and evaluate on the test set after every epoch; reported is the wall time until the test
accuracy first reaches the target.

    python benchmarks/straggler.py [--target 0.95] [--epochs 60]

About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ray
import torch

from abray.training.build import make_scheduler
from abray.training.config import parse_config
from abray.training.data import batch_indices, digits
from abray.training.distributed import Worker, train_distributed
from abray.training.epochs import evaluate
from abray.training.flat import FlatLayout, bind_parameters
from abray.training.models import build_model

SLOWDOWN = [1.0, 1.0, 1.0, 4.0]


def asynchronous(config, data, target):
    start, reached = [], []

    def on_epoch(m):
        if m.test_accuracy >= target and not reached:
            reached.append((time.perf_counter() - start[0], m.epoch))

    # both clocks start once every actor is up
    result = train_distributed(config, data, on_epoch=on_epoch, on_ready=lambda: start.append(time.perf_counter()))
    return reached[0] if reached else (None, None), result.history[-1].test_accuracy, \
        float(np.mean(result.staleness))


def synchronous(config, data, target):
    values = config.model_dump()
    train_ref = ray.put(data.train)
    workers = [Worker.remote(values, data.num_classes, i, SLOWDOWN[i]) for i in range(4)]
    ray.get([w.ready.remote() for w in workers])
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_classes)
    layout = FlatLayout([p.shape for p in model.parameters()])
    flat = layout.flatten([p.detach() for p in model.parameters()]).clone()
    params = bind_parameters(model, layout.views(flat))
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    steps_per_epoch = len(data.train) // config.batch_size
    sched = make_scheduler(config, opt, steps_per_epoch)
    reached, step = None, 0
    for epoch in range(config.epochs):
        for indices in batch_indices(len(data.train), config.batch_size, config.seed, epoch):
            version = ray.put(flat.numpy().copy())
            shards = np.array_split(indices, 4)
            outs = [w.compute.remote({"lease": f"sync.{step}", "step": step, "version": step, "weights": version,
                                      "indices": s, "buffers": None}, [train_ref]) for w, s in zip(workers, shards)]
            grads = ray.get([o[1] for o in outs])  # waits for the straggler
            sizes = np.array([len(s) for s in shards], dtype=np.float32)
            mean = sum(g * n for g, n in zip(grads, sizes)) / sizes.sum()
            for p, g in zip(params, layout.views(torch.from_numpy(mean))):
                p.grad = g
            opt.step()
            sched.step()
            step += 1
        _, acc = evaluate(model, data.test)
        if acc >= target and reached is None:
            reached = (time.perf_counter() - start, epoch + 1)
            break
    for w in workers:
        ray.kill(w)
    return reached or (None, None), acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    data = digits()
    base = dict(epochs=args.epochs, workers=4, slowdown=SLOWDOWN, checkpoint_every=10**6)
    (t_sync, e_sync), acc_sync = synchronous(parse_config(dict(base, optimizer="sgdm")), data, args.target)
    print(f"synchronous SGDM, 4 workers (one 4x slower): {args.target:.0%} after {e_sync} epochs, "
          f"{t_sync:.1f} s", flush=True)
    start = time.perf_counter()
    (t_async, e_async), final, staleness = asynchronous(
        parse_config(dict(base, optimizer="ab", mode="free")), data, args.target)
    total = time.perf_counter() - start
    print(f"asynchronous AB (free mode), same workers: {args.target:.0%} after {e_async} epochs, {t_async:.1f} s "
          f"(mean staleness {staleness:.2f}; whole {args.epochs}-epoch run {total:.0f} s, final accuracy {final:.3f})")
    if t_sync and t_async:
        print(f"asynchronous AB reaches {args.target:.0%} {t_sync / t_async:.2f}x sooner")
    ray.shutdown()


if __name__ == "__main__":
    main()
