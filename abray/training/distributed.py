"""Asynchronous training on Ray: the `ParameterServer` and `Worker` actors, and `train_distributed`, which starts
them and runs the driver loop (`abray.training.dispatch`).

The driver asks the server for work, gives it to an idle worker, and forwards each finished gradient
to the server by reference: gradients travel worker -> server through the object store, as flat
float32 numpy arrays, never through the driver. The data set is put in the object store once; each
worker reads the training set, and the server the test set, on first use.

Faults (docs/fault-tolerance.md). Both actors restart (max_restarts=-1), and a restart depends on nothing in the
object store (ray-project/ray#53727): constructors take only the config and a few numbers, and the data comes with
the calls that need it. Every hand-out is a lease of the server (`ParameterServerState`), which the driver settles
exactly once; a restarted server resumes from its checkpoint, in the run's own folder under `storage_path`.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from .checkpoints import CheckpointError, RunFolder, storage_uri
from .config import ConfigError, TrainConfig
from .data import DataSplit
from .dispatch import Driver
from .epochs import EpochMetrics
from .flat import FlatLayout, flat_gradient, model_buffers
from .models import build_model
from .parameter_server import ParameterServerState, TrainingFailed  # noqa: F401 (TrainingFailed: for callers)

DEFAULT_CHECKPOINT_ROOT = "runs/checkpoints"


class ResourceError(ConfigError):
    """The cluster cannot hold the requested workers; raised before any actor starts (a config that cannot run
    here, so the CLI reports it as it reports any other)."""


@ray.remote
class ParameterServer:
    """Ray actor around `ParameterServerState`: versions live in the object store, metrics go to Ray."""

    def __init__(self, config_values: dict, train_size: int, num_classes: int, storage: str, run_id: str):
        from ray.util import metrics

        torch.set_num_threads(1)
        config = TrainConfig(**config_values)
        self.state = ParameterServerState(config, None, train_size, num_classes, storage, run_id,
                                          put=ray.put, get=ray.get)
        self.restored = self.state.restore()  # a checkpoint of another run raises here, and the actor stays dead
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
        s = self.state
        return {"applied": s.applied, "restored": self.restored, "done": s.done, "instance": s.instance,
                "failure": s.failure, "node": ray.get_runtime_context().get_node_id()}

    def next_work(self) -> Optional[dict]:
        return self.state.next_work()

    def requeue(self, lease: str) -> bool:
        return self.state.requeue(lease)

    def fail(self, lease: str, error: str) -> Optional[str]:
        """None when the step goes back to the queue; the run's failure when it is out of retries."""
        return None if self.state.fail(lease, error) else self.state.failure

    def apply(self, lease: str, grad: np.ndarray, meta: dict, test_set: list) -> dict:
        """`test_set`: [the test set's reference], read on first use (not resolved for every call)."""
        if self.state.test_set is None:
            self.state.test_set = ray.get(test_set[0])
        start = time.perf_counter()
        before = self.state.applied
        accepted = self.state.holds(lease)
        finished = self.state.receive(lease, grad, meta["loss"], meta.get("buffers"))
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
        if accepted:
            self.m_loss.set(meta["loss"], tags=self.tags)
        return {"accepted": accepted, "applied": self.state.applied, "done": self.state.done, "epochs": finished,
                "loss": meta["loss"], "server_seconds": now - start, "instance": self.state.instance}

    def epochs_since(self, count: int) -> list[EpochMetrics]:
        return self.state.epochs_since(count)

    def stop_checkpoints(self) -> None:
        """The run is over: write nothing more (its folder is about to be removed)."""
        self.state.folder = None

    def result(self) -> dict:
        s = self.state
        return {"history": s.history, "applied_steps": s.applied_steps, "weights": s.flat.numpy().copy(),
                "staleness": s.staleness, "diverged_step": s.diverged_step}


@ray.remote
class Worker:
    """Computes gradients: (lease, step, weight version, batch indices) in, (metadata, flat gradient) out."""

    def __init__(self, config_values: dict, num_classes: int, index: int, slowdown: float, run_id: str = ""):
        from ray.util import metrics

        config = TrainConfig(**config_values)
        torch.set_num_threads(max(1, int(config.cpus_per_worker)))
        self.device = torch.device("cuda" if config.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu")
        self.model = build_model(config.model, num_classes).to(self.device).train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.layout = FlatLayout([p.shape for p in self.model.parameters()])
        self.train = None  # read on first use from the reference that comes with the work
        self.index, self.slowdown = index, slowdown
        self.started, self.busy = time.perf_counter(), 0.0
        self.tags = {"run": run_id, "worker": str(index)}
        self.m_busy = metrics.Gauge("abray_worker_busy_fraction", "fraction of time spent computing gradients",
                                    tag_keys=("run", "worker"))

    def ready(self) -> int:
        return self.index

    @ray.method(num_returns=2)
    def compute(self, work: Optional[dict], train_set: list):
        """`work` is the server's `next_work()` (Ray resolves it): a step, or None when there is none yet.
        `train_set`: [the training set's reference], read once."""
        if work is None:
            return {"lease": None}, None
        if self.train is None:
            self.train = ray.get(train_set[0])
        start = time.perf_counter()
        weights = ray.get(work["weights"])  # the version, from the object store (zero-copy on this node)
        loss, flat = flat_gradient(self.model, self.names, self.layout, self.train, work, weights, self.device)
        elapsed = time.perf_counter() - start
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1) * elapsed)  # a straggler, on purpose
        self.busy += time.perf_counter() - start
        self.m_busy.set(self.busy / (time.perf_counter() - self.started), tags=self.tags)
        meta = {"lease": work["lease"], "step": work["step"], "version": work["version"], "loss": loss,
                "compute_time": elapsed, "worker": self.index,
                "buffers": model_buffers(self.model) if work["buffers"] else None}
        return meta, flat


@dataclass
class DistributedResult:
    history: list[EpochMetrics]
    applied_steps: list[int]
    weights: np.ndarray
    staleness: list[int]
    server_restarts: int = 0
    worker_failures: int = 0
    checkpoint: str = ""  # the run's checkpoint folder (removed at the end unless keep_checkpoints)


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
    server_options: Optional[dict] = None,
) -> DistributedResult:
    """Train with a parameter-server actor and `config.workers` worker actors (mode distributed or free).

    The run checkpoints to a folder of its own, `<storage_path>/<run id>` (storage_path defaults to
    runs/checkpoints), removed at the end unless `keep_checkpoints`. `server_options`: Ray actor options for the
    server (`resources`, `scheduling_strategy`: where it may run). Raises TrainingFailed when the run cannot finish.
    """
    if config.mode not in ("distributed", "free"):
        raise ValueError(f"mode must be 'distributed' or 'free' for Ray training, got {config.mode!r}")
    ensure_ray()
    check_resources(config)
    run_id = uuid.uuid4().hex[:12]
    root = storage_uri(config.storage_path or DEFAULT_CHECKPOINT_ROOT)
    folder = RunFolder(root, run_id)
    if folder.has_checkpoint():  # not ours: never resumed, and never removed at the end either
        raise CheckpointError(f"{folder.checkpoint_uri} exists already; this run will not touch it")
    values = config.model_dump()
    train_ref, test_ref = ray.put(data.train), ray.put(data.test)
    server = ParameterServer.options(**{"name": f"abray-ps-{run_id}", "num_cpus": 0, "max_restarts": -1,
                                        "max_task_retries": 0, **(server_options or {})}
                                     ).remote(values, len(data.train), data.num_classes, root, run_id)
    slowdown = config.slowdown or [1.0] * config.workers
    workers = [Worker.options(name=f"abray-worker-{run_id}-{i}", num_cpus=config.cpus_per_worker,
                              num_gpus=config.gpus_per_worker, max_restarts=-1, max_task_retries=0)
               .remote(values, data.num_classes, i, slowdown[i], run_id)
               for i in range(config.workers)]
    driver = Driver(server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready)
    try:
        driver.run()
        result = driver.server_call(lambda: server.result.remote())
    finally:
        try:  # a server still writing would leave files behind in the folder about to be removed
            ray.get(server.stop_checkpoints.remote(), timeout=10)
        except RayError:
            pass
        for actor in [server, *workers]:
            ray.kill(actor, no_restart=True)
        if not config.keep_checkpoints:
            folder.remove()
    return DistributedResult(result["history"], result["applied_steps"], result["weights"], result["staleness"],
                             driver.server_restarts, driver.worker_failures, folder.uri)
