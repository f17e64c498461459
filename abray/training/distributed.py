"""Asynchronous training on Ray: the `ParameterServer` and `Worker` actors, and the driver loop.

The driver asks the server for work, gives it to an idle worker, and forwards each finished gradient
to the server by reference: gradients travel worker -> server through the object store, as flat
float32 numpy arrays, never through the driver. The data set is put in the object store once and each
worker reads it once, at start.

Faults: both actors restart (max_restarts=-1). A worker that dies loses only its step, which goes
back to the server's queue. A server that dies comes back from its last checkpoint; the driver then
drops everything in flight (its results carry the old generation) and the server hands the lost steps
out again, so no step is applied twice.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import ray
import torch

from .config import ConfigError, TrainConfig
from .data import DataSplit, collate
from .epochs import EpochMetrics, batch_gradient
from .flat import FlatLayout, load_buffers, model_buffers, tensor_from_store
from .models import build_model
from .parameter_server import ParameterServerState

RESTART_TIMEOUT_S = 180.0


class ResourceError(ConfigError):
    """The cluster cannot hold the requested workers; raised before any actor starts (a config that cannot run
    here, so the CLI reports it as it reports any other)."""


@ray.remote
class ParameterServer:
    """Ray actor around `ParameterServerState`: versions live in the object store, metrics go to Ray."""

    def __init__(self, config_values: dict, data: DataSplit, storage: Optional[str], run_id: str):
        from ray.util import metrics

        torch.set_num_threads(1)
        config = TrainConfig(**config_values)
        self.state = ParameterServerState(config, data.test, len(data.train), data.num_classes, storage, run_id,
                                          put=ray.put, get=ray.get)
        self.restored = self.state.restore()
        tags = ("run",)
        self.tags = {"run": run_id}
        self.m_updates = metrics.Counter("abray_updates", "updates applied by the parameter server", tag_keys=tags)
        self.m_rate = metrics.Gauge("abray_updates_per_second", "updates per second, last 50 updates", tag_keys=tags)
        self.m_staleness = metrics.Histogram("abray_staleness", "staleness of applied gradients, in updates",
                                             boundaries=[0.5, 1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5], tag_keys=tags)
        self.m_queue = metrics.Gauge("abray_queue_depth", "gradients waiting at the server plus steps to redo",
                                     tag_keys=tags)
        self.m_loss = metrics.Gauge("abray_train_loss", "training loss of the last applied gradient", tag_keys=tags)
        self.apply_times: list[float] = []

    def ping(self) -> dict:
        return {"applied": self.state.applied, "restored": self.restored, "done": self.state.done}

    def next_work(self) -> Optional[dict]:
        return self.state.next_work()

    def requeue(self, step: int) -> None:
        self.state.requeue(step)

    def apply(self, step: int, version: int, grad: np.ndarray, meta: dict) -> dict:
        start = time.perf_counter()
        before = self.state.applied
        finished = self.state.receive(step, version, grad, meta["loss"], meta.get("buffers"))
        now = time.perf_counter()
        for s in self.state.staleness[before:]:
            self.m_updates.inc(1, tags=self.tags)
            self.m_staleness.observe(s, tags=self.tags)
            self.apply_times.append(now)
        self.apply_times = self.apply_times[-50:]
        if len(self.apply_times) > 1:
            span = self.apply_times[-1] - self.apply_times[0]
            self.m_rate.set((len(self.apply_times) - 1) / span if span > 0 else 0.0, tags=self.tags)
        self.m_queue.set(len(self.state.pending) + len(self.state.requeued), tags=self.tags)
        self.m_loss.set(meta["loss"], tags=self.tags)
        return {"applied": self.state.applied, "done": self.state.done, "epochs": finished,
                "loss": meta["loss"], "server_seconds": now - start}

    def result(self) -> dict:
        s = self.state
        return {"history": s.history, "applied_steps": s.applied_steps, "weights": s.flat.numpy().copy(),
                "staleness": s.staleness, "diverged_step": s.diverged_step}


@ray.remote
class Worker:
    """Computes gradients: (step, weight version, batch indices) in, (metadata, flat gradient) out."""

    def __init__(self, config_values: dict, data: DataSplit, index: int, slowdown: float, run_id: str = ""):
        from ray.util import metrics

        config = TrainConfig(**config_values)
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))
        self.device = torch.device("cuda" if config.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
        self.model = build_model(config.model, data.num_classes).to(self.device).train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.layout = FlatLayout([p.shape for p in self.model.parameters()])
        self.train = data.train
        self.index, self.slowdown = index, slowdown
        self.started, self.busy = time.perf_counter(), 0.0
        self.tags = {"run": run_id, "worker": str(index)}
        self.m_busy = metrics.Gauge("abray_worker_busy_fraction", "fraction of time spent computing gradients",
                                    tag_keys=("run", "worker"))

    def ready(self) -> int:
        return self.index

    @ray.method(num_returns=2)
    def compute(self, work: Optional[dict]):
        """`work` is the server's `next_work()` (Ray resolves it): a step, or None when there is none yet."""
        if work is None:
            return {"step": None}, None
        start = time.perf_counter()
        x, y = collate(self.train, work["indices"])
        weights = ray.get(work["weights"])  # the version, from the object store (zero-copy on this node)
        w = self.layout.views(tensor_from_store(weights).to(self.device))
        load_buffers(self.model, work["buffers"])
        loss, grads = batch_gradient(self.model, self.names, w, x.to(self.device), y.to(self.device))
        flat = self.layout.flatten(grads, like=w[0]).cpu().numpy()
        elapsed = time.perf_counter() - start
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1) * elapsed)  # a straggler, on purpose
        self.busy += time.perf_counter() - start
        self.m_busy.set(self.busy / (time.perf_counter() - self.started), tags=self.tags)
        meta = {"step": work["step"], "version": work["version"], "loss": loss, "compute_time": elapsed,
                "worker": self.index, "buffers": model_buffers(self.model) if work["buffers"] else None}
        return meta, flat


@dataclass
class DistributedResult:
    history: list[EpochMetrics]
    applied_steps: list[int]
    weights: np.ndarray
    staleness: list[int]
    server_restarts: int = 0
    worker_failures: int = 0


def check_resources(config: TrainConfig) -> None:
    """Refuse, before anything starts, a run the cluster cannot hold (it would wait for ever)."""
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    need_cpu, need_gpu = config.workers * config.cpus_per_worker, config.workers * config.gpus_per_worker
    if need_gpu > gpus:
        raise ResourceError(f"workers x gpus_per_worker = {config.workers} x {config.gpus_per_worker:g} = "
                            f"{need_gpu:g} GPUs requested, but the Ray cluster has {gpus:g}; lower workers or "
                            "gpus_per_worker")
    if need_cpu > cpus:
        raise ResourceError(f"workers x cpus_per_worker = {config.workers} x {config.cpus_per_worker:g} = "
                            f"{need_cpu:g} CPUs requested, but the Ray cluster has {cpus:g}; lower workers or "
                            "cpus_per_worker")


def ensure_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start the embedded local one. "local", not None: with None Ray
    would join any `ray start` head on this machine (the job service's, say) instead of starting its own."""
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False,
                 log_to_driver=False, configure_logging=False)


def train_distributed(
    config: TrainConfig,
    data: DataSplit,
    on_step: Optional[Callable[[int, float], None]] = None,
    on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
    on_update: Optional[Callable[[dict], None]] = None,
    on_ready: Optional[Callable[[], None]] = None,
) -> DistributedResult:
    """Train with a parameter-server actor and `config.workers` worker actors (mode distributed or free)."""
    if config.mode not in ("distributed", "free"):
        raise ValueError(f"mode must be 'distributed' or 'free' for Ray training, got {config.mode!r}")
    ensure_ray()
    check_resources(config)
    run_id = uuid.uuid4().hex[:12]
    storage = config.storage_path or str(Path("runs") / f"ps-{run_id}")
    values = config.model_dump()
    data_ref = ray.put(data)
    server = ParameterServer.options(name=f"abray-ps-{run_id}", num_cpus=0, max_restarts=-1,
                                     max_task_retries=0).remote(values, data_ref, storage, run_id)
    slowdown = config.slowdown or [1.0] * config.workers
    workers = [Worker.options(name=f"abray-worker-{run_id}-{i}", num_cpus=config.cpus_per_worker,
                              num_gpus=config.gpus_per_worker, max_restarts=-1, max_task_retries=0)
               .remote(values, data_ref, i, slowdown[i], run_id)
               for i in range(config.workers)]
    driver = _Driver(server, workers, run_id, on_step, on_epoch, on_update, on_ready)
    try:
        driver.run()
        result = ray.get(server.result.remote())
    finally:
        for actor in [server, *workers]:
            ray.kill(actor, no_restart=True)
    return DistributedResult(result["history"], result["applied_steps"], result["weights"], result["staleness"],
                             driver.generation, driver.worker_failures)


class _Driver:
    """Keeps every worker busy and forwards gradients to the server, off the critical path.

    A worker's next task takes the server's `next_work()` reference as its argument, and the server
    runs calls in the order they were sent, so a worker starts as soon as the server has applied the
    previous gradient and picked its next step: no round trip through the driver in between.
    """

    def __init__(self, server, workers, run_id, on_step, on_epoch, on_update, on_ready=None):
        self.server, self.workers, self.run_id = server, workers, run_id
        self.on_ready = on_ready
        self.on_step, self.on_epoch, self.on_update = on_step, on_epoch, on_update
        self.generation = 0  # bumped whenever the server restarts: older results are dropped
        self.worker_failures = 0
        self.in_flight: dict = {}  # metadata ref -> (worker, work ref, gradient ref, generation)
        self.applies: list = []  # (the server's answer to `apply`, the gradient's metadata), in the order sent
        self.idle: list[int] = []  # workers that found no work the last time they asked

    def run(self) -> None:
        ray.get([w.ready.remote() for w in self.workers] + [self.server.ping.remote()])
        if self.on_ready:
            self.on_ready()
        for w in range(len(self.workers)):
            self._hand_out(w)
        while True:
            try:
                if self._next_event():
                    return
            except ray.exceptions.RayActorError:
                self._await_server_restart()

    def _hand_out(self, w: int) -> None:
        work_ref = self.server.next_work.remote()
        meta_ref, grad_ref = self.workers[w].compute.remote(work_ref)
        self.in_flight[meta_ref] = (w, work_ref, grad_ref, self.generation)

    def _next_event(self) -> bool:
        waitables = [a for a, _ in self.applies[:1]] + list(self.in_flight)
        if not waitables:
            if ray.get(self.server.ping.remote())["done"]:
                return True
            raise RuntimeError("no work in flight, yet the run is not finished")
        [ref], _ = ray.wait(waitables, num_returns=1)
        if self.applies and ref == self.applies[0][0]:
            _, meta = self.applies.pop(0)
            return self._applied(ray.get(ref), meta)
        w, work_ref, grad_ref, generation = self.in_flight.pop(ref)
        try:
            meta = ray.get(ref)
        except ray.exceptions.RayError as err:  # the worker died, or its work died with the old server
            self._worker_failed(w, work_ref, generation, err)
            return False
        if meta["step"] is None:
            self.idle.append(w)  # nothing to do until the next update
            return False
        if generation == self.generation:
            self.applies.append((self.server.apply.remote(meta["step"], meta["version"], grad_ref, meta), meta))
        self._hand_out(w)
        for i in self.idle:
            self._hand_out(i)
        self.idle = []
        return False

    def _applied(self, out: dict, meta: dict) -> bool:
        if self.on_update:
            self.on_update({**out, "run_id": self.run_id, "step": meta["step"], "worker": meta["worker"],
                            "compute_time": meta["compute_time"]})
        if self.on_step:
            self.on_step(out["applied"], out["loss"])
        for m in out["epochs"]:
            if self.on_epoch:
                self.on_epoch(m)
        return out["done"]

    def _worker_failed(self, w: int, work_ref, generation: int, err: Exception) -> None:
        if isinstance(err, ray.exceptions.RayActorError):
            self.worker_failures += 1
            self._await_worker(w)
        if generation == self.generation:
            try:
                work = ray.get(work_ref)
            except ray.exceptions.RayError:
                work = None
            if work is not None:
                ray.get(self.server.requeue.remote(work["step"]))
        self._hand_out(w)

    def _await_worker(self, w: int) -> None:
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(self.workers[w].ready.remote(), timeout=30)
                return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _await_server_restart(self) -> None:
        self.generation += 1
        self.applies = []
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                ray.get(self.server.ping.remote(), timeout=30)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError("the parameter server did not come back") from None
                time.sleep(0.2)
        for i in self.idle:  # workers still computing old-generation steps get new work when they return
            self._hand_out(i)
        self.idle = []
