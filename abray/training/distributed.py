"""Asynchronous training on Ray: the `ParameterServer` and `Worker` actors, and the driver loop.

The driver asks the server for work, gives it to an idle worker, and forwards each finished gradient
to the server by reference: gradients travel worker -> server through the object store, as flat
float32 numpy arrays, never through the driver. The data set is put in the object store once; each
worker reads the training set, and the server the test set, on first use.

Faults (docs/fault-tolerance.md). Both actors restart (max_restarts=-1), and a restart depends on nothing in the
object store: constructors take only the config and a few numbers, and the data comes with the calls that need it.
Every hand-out is a lease of the server (`ParameterServerState`), and the driver settles each one exactly once:
it forwards the gradient (`apply`), or gives the step back (`requeue` when the loss was not the step's fault: a
lost worker, weights lost with a dead server; `fail` when computing it raised, or killed its worker, which counts
against `step_retries`). A server that restarts resumes from its checkpoint and hands out again every step it had
not applied; leases from before the restart are unknown to it, so their results are dropped there, never applied
twice and never lost. Epochs are reported once each: the server checkpoints an epoch before reporting it, and after
a restart the driver asks for the epochs it has not heard of. A worker that does not come back within
RESTART_TIMEOUT_S leaves the run to the others.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import ray
import torch
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from .checkpoints import RunFolder, storage_uri
from .config import TrainConfig
from .data import DataSplit
from .epochs import EpochMetrics
from .flat import FlatLayout, flat_gradient, model_buffers
from .models import build_model
from .parameter_server import ParameterServerState, TrainingFailed

RESTART_TIMEOUT_S = 180.0
DEFAULT_CHECKPOINT_ROOT = "runs/checkpoints"


class ResourceError(ValueError):
    """The cluster cannot hold the requested workers; raised before any actor starts."""


def error_line(err: BaseException) -> str:
    """The last line of an error's text: for a task error, the remote exception's own `Type: message`."""
    if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


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
                            f"{need_gpu:g} GPUs requested, but the Ray cluster has {gpus:g}")
    if need_cpu > cpus:
        raise ResourceError(f"workers x cpus_per_worker = {config.workers} x {config.cpus_per_worker:g} = "
                            f"{need_cpu:g} CPUs requested, but the Ray cluster has {cpus:g}")


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
    driver = _Driver(server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready)
    folder = RunFolder(root, run_id)
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


class _Driver:
    """Keeps every worker busy and forwards gradients to the server, off the critical path, settling every lease
    exactly once (see the module's docstring).

    A worker's next task takes the server's `next_work()` reference as its argument, and the server
    runs calls in the order they were sent, so a worker starts as soon as the server has applied the
    previous gradient and picked its next step: no round trip through the driver in between.
    """

    def __init__(self, server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready=None):
        self.server, self.workers, self.run_id = server, workers, run_id
        self.train_ref, self.test_ref = train_ref, test_ref
        self.on_ready = on_ready
        self.on_step, self.on_epoch, self.on_update = on_step, on_epoch, on_update
        self.instance: Optional[str] = None  # the server instance last heard from
        self.server_restarts = 0
        self.worker_failures = 0
        self.reported = 0  # epochs passed to on_epoch
        self.in_flight: dict = {}  # compute's metadata ref -> (worker, work ref, gradient ref)
        self.applies: list = []  # (the server's answer to `apply`, the gradient's metadata), in the order sent
        self.probes: dict = {}  # `ready` ref of a restarting worker -> (worker, deadline)
        self.idle: set[int] = set()  # workers that found no work the last time they asked
        self.alive: set[int] = set(range(len(workers)))
        self.woken_without_progress = False

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            ray.get([w.ready.remote() for w in self.workers])
        except RayError as err:
            raise TrainingFailed(f"a worker could not start: {error_line(err)}") from None
        self._heard_from(self.server_call(lambda: self.server.ping.remote())["instance"])
        if self.on_ready:
            self.on_ready()
        for w in sorted(self.alive):
            self._hand_out(w)
        while not self._next_event():
            pass

    def _next_event(self) -> bool:
        waitables = [a for a, _ in self.applies[:1]] + list(self.in_flight) + list(self.probes)
        if not waitables:
            return self._stalled()
        ready, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
        finished = self._handle(ready[0]) if ready else False
        self._expire_probes()
        return finished

    def _handle(self, ref) -> bool:
        if self.applies and ref == self.applies[0][0]:
            _, meta = self.applies.pop(0)
            return self._applied(ref, meta)
        if ref in self.probes:
            self._probed(ref)
        else:
            self._computed(ref)
        return False

    def _stalled(self) -> bool:
        """Nothing in flight: the run is over, or the idle workers get one more chance to find work."""
        status = self.server_call(lambda: self.server.ping.remote())
        self._heard_from(status["instance"])
        if status["failure"]:
            raise TrainingFailed(status["failure"])
        if status["done"]:
            return True
        if not self.alive:
            raise TrainingFailed("no worker left")
        if self.woken_without_progress:
            raise RuntimeError(f"no work in flight, yet the run is not finished ({status['applied']} updates "
                               f"applied)")
        self.woken_without_progress = True
        self._wake_idle()
        return False

    def _hand_out(self, w: int) -> None:
        work_ref = self.server.next_work.remote()
        meta_ref, grad_ref = self.workers[w].compute.remote(work_ref, [self.train_ref])
        self.in_flight[meta_ref] = (w, work_ref, grad_ref)

    def _wake_idle(self) -> None:
        for w in sorted(self.idle & self.alive):
            self._hand_out(w)
        self.idle.clear()

    # ---- results ------------------------------------------------------------------------------------
    def _computed(self, ref) -> None:
        w, work_ref, grad_ref = self.in_flight.pop(ref)
        try:
            meta = ray.get(ref)
        except RayError as err:
            try:  # the gradient holds the same error: read it, so Ray does not report it as unhandled
                ray.get(grad_ref)
            except RayError:
                pass
            self._compute_failed(w, work_ref, err)
            return
        if meta["lease"] is None:
            self.idle.add(w)  # nothing to do until the next update
            return
        apply_ref = self.server.apply.remote(meta["lease"], grad_ref, meta, [self.test_ref])
        self.applies.append((apply_ref, meta))
        self._hand_out(w)

    def _applied(self, ref, meta: dict) -> bool:
        try:
            out = ray.get(ref)
        except RayError as err:
            if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):
                raise TrainingFailed(f"the parameter server failed: {error_line(err)}") from None
            if isinstance(err, RayActorError) and not isinstance(err, RayTaskError):
                self._server_failed(err)  # it died with this gradient
            # the gradient was not applied (the server died, or the gradient was lost with its node): give the
            # step back; for a lease from before a restart this does nothing, the restarted server redoes it anyway
            self.server_call(lambda: self.server.requeue.remote(meta["lease"]))
            self._wake_idle()
            return False
        self._heard_from(out["instance"])
        if out["accepted"]:
            self.woken_without_progress = False
            if self.on_update:
                self.on_update({**out, "run_id": self.run_id, "step": meta["step"], "worker": meta["worker"],
                                "compute_time": meta["compute_time"]})
            if self.on_step:
                self.on_step(out["applied"], out["loss"])
        self._report(out["epochs"])
        if out["done"]:
            return True
        self._wake_idle()
        return False

    def _compute_failed(self, w: int, work_ref, err: RayError) -> None:
        try:
            work = ray.get(work_ref)
        except RayTaskError as server_err:
            raise TrainingFailed(f"the parameter server failed: {error_line(server_err)}") from None
        except RayActorError as server_err:  # the server died handing the step out: no lease to settle
            self._server_failed(server_err)
            work = None
        if work is None:
            self._hand_out(w)
            return
        lease = work["lease"]
        if isinstance(err, RayActorError) and not isinstance(err, RayTaskError):  # the worker's process died
            self.worker_failures += 1
            if isinstance(err, ActorDiedError):  # for good (killed, or its restart failed): the others go on
                self._drop_worker(w, error_line(err))
                self.server_call(lambda: self.server.requeue.remote(lease))
                self._wake_idle()
                return
            self._settle_failure(lease, f"worker {w} died computing step {work['step']}: {error_line(err)}")
            self._probe(w)
            return
        if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):  # the step's own error
            self._settle_failure(lease, f"{error_line(err)} (on worker {w})")
        else:  # a Ray error inside the task, e.g. its weights died with an earlier server instance
            self.server_call(lambda: self.server.requeue.remote(lease))
        self._hand_out(w)

    def _settle_failure(self, lease: str, error: str) -> None:
        failure = self.server_call(lambda: self.server.fail.remote(lease, error))
        if failure:
            raise TrainingFailed(failure)
        self._wake_idle()

    def _report(self, epochs: list[EpochMetrics]) -> None:
        for metrics in epochs:
            if metrics.epoch == self.reported + 1:
                self.reported += 1
                if self.on_epoch:
                    self.on_epoch(metrics)

    # ---- workers that died ----------------------------------------------------------------------------
    def _probe(self, w: int, deadline: Optional[float] = None) -> None:
        """Wait (without blocking the loop) for worker `w` to come back before it gets work again."""
        self.probes[self.workers[w].ready.remote()] = (w, deadline or time.monotonic() + RESTART_TIMEOUT_S)

    def _probed(self, ref) -> None:
        w, deadline = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ActorDiedError as err:
            self._drop_worker(w, error_line(err))
            return
        except RayActorError:
            self._probe(w, deadline)
            return
        self._hand_out(w)

    def _expire_probes(self) -> None:
        now = time.monotonic()
        for ref, (w, deadline) in list(self.probes.items()):
            if now > deadline:
                del self.probes[ref]
                self._drop_worker(w, f"it did not come back within {RESTART_TIMEOUT_S:.0f} s")

    def _drop_worker(self, w: int, why: str) -> None:
        self.alive.discard(w)
        self.idle.discard(w)
        print(f"abray: worker {w} of run {self.run_id} is gone ({why}); {len(self.alive)} left", file=sys.stderr,
              flush=True)
        if not self.alive:
            raise TrainingFailed(f"no worker left: the last one, worker {w}, is gone ({why})")

    # ---- the server -----------------------------------------------------------------------------------
    def server_call(self, make_call):
        """`ray.get(make_call())`, again after the server restarts if it died meanwhile. Only calls that are safe
        to repeat go through here (a lease of a dead instance means nothing to the restarted one)."""
        while True:
            try:
                return ray.get(make_call())
            except RayActorError as err:
                if isinstance(err, RayTaskError):
                    raise
                self._server_failed(err)

    def _server_failed(self, err: RayActorError) -> None:
        """The server died: wait for it to come back (it resumes from its checkpoint), or fail the run if it
        cannot. Not for workers: their deaths go through `_compute_failed`."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                status = ray.get(self.server.ping.remote(), timeout=30)
                break
            except ActorDiedError as dead:
                raise TrainingFailed(f"the parameter server died and cannot restart: {error_line(dead)}") from None
            except (RayActorError, GetTimeoutError):
                if time.monotonic() > deadline:
                    raise TrainingFailed(f"the parameter server did not come back within {RESTART_TIMEOUT_S:.0f} s "
                                         f"({error_line(err)})") from None
                time.sleep(0.2)
        self._heard_from(status["instance"])

    def _heard_from(self, instance: str) -> None:
        """An answer from server instance `instance`: if it is a new one, it restarted from its checkpoint; hear
        the epochs it closed that were never reported, and give the idle workers its work."""
        if instance == self.instance:
            return
        if self.instance is not None:
            self.server_restarts += 1
        self.instance = instance
        self._report(self.server_call(lambda: self.server.epochs_since.remote(self.reported)))
        self._wake_idle()
