"""Asynchronous training on Ray: the `ParameterServer` and `Worker` actors, and `train_distributed`, which starts
them and the driver (`abray.training.dispatch`).

Each worker runs a loop that trades its gradient for its next work with the server directly (`Worker.loop`,
`Exchange.exchange`): one Ray call per update, with the driver off the critical path, listening. Weights and
gradients travel as flat float32 arrays, through shared memory between the server and the workers on its node
(`abray.training.transport`), through the object store otherwise; never through the driver. The data set is put
in the object store once; each worker reads the training set, and the server the test set, on first use.

Faults (docs/fault-tolerance.md). Both actors restart (max_restarts=-1), and a restart depends on nothing in the
object store (ray-project/ray#53727): constructors take only the config and a few numbers, and the data comes with
the calls that need it. Every hand-out is a lease of the server (`ParameterServerState`), settled exactly once by
the loop that holds it or, when that loop ends first, by the driver; a restarted server resumes from its
checkpoint, in the run's own folder under `storage_path`.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import astuple, dataclass
from typing import Callable, Optional

import numpy as np
import ray
import torch
from ray.exceptions import RayError, RayTaskError

from .checkpoints import CheckpointError, RunFolder, storage_uri
from .config import ConfigError, TrainConfig
from .data import DataSplit
from .dispatch import Driver, error_line
from .epochs import EpochMetrics
from .exchange import Exchange
from .flat import FlatLayout, flat_gradient, model_buffers
from .models import build_model
from .parameter_server import ParameterServerState, TrainingFailed  # noqa: F401 (TrainingFailed: for callers)
from .shard_actor import Followers, ParameterShard
from .shards import Part, partition, shard_sizes
from .transport import Attached, Slot, Slots, VersionStore, remove_segments, segment_prefix

DEFAULT_CHECKPOINT_ROOT = "runs/checkpoints"


class ResourceError(ConfigError):
    """The cluster cannot hold the requested workers; raised before any actor starts (a config that cannot run
    here, so the CLI reports it as it reports any other)."""


@ray.remote
class ParameterServer:
    """Ray actor around `ParameterServerState`, through its `Exchange`: versions live in the object store,
    metrics go to Ray. Run with `max_concurrency` > 1 (a thread per call): a worker's exchange may wait for
    work while the others, and the driver's polls, go on."""

    def __init__(self, config_values: dict, train_size: int, num_classes: int, storage: Optional[str], run_id: str,
                 part: Optional[tuple] = None):
        """`part`: with sharded servers, the leader's (`abray.training.shards.Part` as a tuple); the followers
        come with `set_followers`."""
        from ray.util import metrics

        torch.set_num_threads(1)
        config = TrainConfig(**config_values)
        self.node = ray.get_runtime_context().get_node_id()
        wanted = config.delay + 2 if config.mode == "distributed" else config.workers + 2  # versions kept at once
        self.followers: list = []
        self.epoch_reads = Attached()
        prefix = segment_prefix(run_id, "v")
        remove_segments(prefix)  # of an instance before this one, dead on this machine
        self.store = VersionStore(f"{prefix}{uuid.uuid4().hex[:8]}", wanted, put=ray.put, get=ray.get)
        self.state = ParameterServerState(config, None, train_size, num_classes, storage, run_id,
                                          put=self.store.put, get=self.store.get, drop=self.store.drop,
                                          part=Part(*part) if part else None,
                                          fill_others=self._fill_others if part else None)
        self.gradients = Attached()  # the workers' gradient slots
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
        self.desk = Exchange(self.state, observe=self._observe)
        self.test_lock = threading.Lock()

    def set_followers(self, followers: list, parts: list[tuple]) -> None:
        """The following shards (parts 1...), whose weights an epoch's evaluation needs."""
        self.followers, self.follower_parts = followers, [Part(*p) for p in parts]

    def _fill_others(self, flat: torch.Tensor, epoch: int) -> None:
        handles = ray.get([f.epoch_weights.remote(self.node, epoch) for f in self.followers])
        for part, handle in zip(self.follower_parts, handles):
            part_weights = self.epoch_reads.view(handle) if isinstance(handle, Slot) else ray.get(handle)
            flat[part.start:part.stop] = torch.from_numpy(np.array(part_weights))

    def _observe(self, record: dict) -> None:
        now = time.perf_counter()
        self.m_updates.inc(1, tags=self.tags)
        self.m_staleness.observe(record["staleness"], tags=self.tags)
        self.m_loss.set(record["loss"], tags=self.tags)
        self.m_queue.set(len(self.state.pending) + len(self.state.requeued), tags=self.tags)
        self.apply_times = self.apply_times[-49:] + [now]
        if len(self.apply_times) > 1:
            span = self.apply_times[-1] - self.apply_times[0]
            self.m_rate.set((len(self.apply_times) - 1) / span if span > 0 else 0.0, tags=self.tags)

    def ping(self) -> dict:
        s = self.state
        return {"applied": s.applied, "restored": self.restored, "done": s.done, "instance": s.instance,
                "failure": s.failure, "node": ray.get_runtime_context().get_node_id()}

    def exchange(self, holder: tuple, node: str, test_set: Optional[list], lease: Optional[str],
                 outcome: Optional[dict], grad: Optional[np.ndarray]) -> Optional[dict]:
        """A worker's loop (on node `node`): its last lease's outcome, with its gradient (in its shared-memory
        slot, `outcome["grad_slot"]`, on this node; else `grad`, which Ray resolves from the object store), for
        its next work. `test_set`: [the test set's reference], sent until this instance has read it (the work
        says `send_test_set`; a reference in every call would cost each a borrower's bookkeeping)."""
        if self.state.test_set is None and test_set:
            with self.test_lock:
                if self.state.test_set is None:
                    self.state.test_set = ray.get(test_set[0])
        holder = tuple(holder)
        borrowed = False
        if outcome is not None and outcome.get("grad_slot") is not None:
            try:
                grad, borrowed = self._gradient_view(holder[0], outcome["grad_slot"]), True
            except FileNotFoundError:  # its worker died and took its slot along: the step goes back
                outcome = {"kind": "requeue", "error": "the gradient's shared memory is gone"}
        work = self.desk.exchange(holder, lease, outcome, grad, borrowed)
        if work is not None:
            work["send_test_set"] = self.state.test_set is None
        if work is not None and node != self.node:
            with self.desk.cond:  # the store is the state's, guarded by the desk's lock
                work["weights"] = self.store.off_node(work["weights"])
        return work

    def _gradient_view(self, worker: int, slot: Slot) -> np.ndarray:
        with self.desk.cond:
            return self.gradients.view_of(worker, slot)

    def release(self, holder: tuple, error: Optional[str]) -> Optional[str]:
        return self.desk.release(tuple(holder), error)

    def poll(self, instance: Optional[str], after: int, reported: int, retired: dict,
             limit: Optional[int] = None) -> dict:
        return self.desk.poll(instance, after, reported, retired, limit=limit)

    def stop(self) -> None:
        """The run is over: write no more checkpoints (its folder is about to be removed), and free the shared
        memory of its versions."""
        with self.desk.cond:
            self.state.folder = None
            self.store.close()

    def result(self) -> dict:
        s = self.state
        with self.desk.cond:
            return {"history": s.history, "applied_steps": s.applied_steps, "weights": s.flat.numpy().copy(),
                    "staleness": s.staleness, "diverged_step": s.diverged_step}


def server_concurrency(workers: int) -> int:
    """Threads of the server actor: an exchange per worker loop (and one of a loop being replaced), the driver's
    poll, and its other calls."""
    return 2 * workers + 4


@ray.remote
class Worker:
    """Computes gradients. `loop` trades each with the server for the next work until the server says stop;
    `compute` is one gradient, for callers that hand out work themselves (benchmarks/straggler.py)."""

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
        self.node = ray.get_runtime_context().get_node_id()
        self.versions = Attached()  # the server's version slots (and the following shards'), on this node
        self.follower_segments: set[str] = set()
        self.fixed = config.mode == "distributed"
        prefix = segment_prefix(run_id, f"w{index}")
        remove_segments(prefix)  # of this worker before it restarted
        self.gradient_name = f"{prefix}{uuid.uuid4().hex[:8]}"
        self.gradient_slot: Optional[Slots] = None  # this worker's, made when a server on this node first asks
        self.started, self.busy = time.perf_counter(), 0.0
        self.tags = {"run": run_id, "worker": str(index)}
        self.m_busy = metrics.Gauge("abray_worker_busy_fraction", "fraction of time spent computing gradients",
                                    tag_keys=("run", "worker"))

    def ready(self) -> int:
        return self.index

    def loop(self, server, generation: int, train_set: list, test_set: list, followers: Optional[list] = None,
             parts: Optional[list[tuple]] = None) -> dict:
        """Exchange gradients for work with `server` until it says stop. The step's own errors, and weights lost
        with an earlier server, are settled with the server too; the loop ends, saying why, only when the
        server stops it ("done"), cannot be reached ("server": the driver waits for its restart and starts a
        new loop) or raised ("server failed"), or a following shard failed ("shard"). `train_set`,
        `test_set`: [reference], read on first use. With sharded servers, `followers` are the following shards
        and `parts` every shard's part (the leader's first): each follower gets its slice of a gradient before
        the leader settles the step."""
        holder = (self.index, generation)
        lease = outcome = grad = None
        send_test_set = True
        parts = [Part(*p) for p in parts] if parts else None
        shards = Followers(followers, parts[1:], self.node, self._read) if followers else None
        while True:
            start = time.perf_counter()
            try:
                work = ray.get(server.exchange.remote(holder, self.node, test_set if send_test_set else None, lease,
                                                      outcome, grad))
            except RayTaskError as err:
                if isinstance(err.cause, RayError):
                    return {"ended": "server", "error": error_line(err)}
                return {"ended": "server failed", "error": error_line(err)}
            except RayError as err:  # the server died or restarts: whatever this loop held died with it
                return {"ended": "server", "error": error_line(err)}
            if work is None:
                return {"ended": "done"}
            round_trip = time.perf_counter() - start
            lease, grad, send_test_set = work["lease"], None, work["send_test_set"]
            if self.train is None:
                self.train = ray.get(train_set[0])
            start = time.perf_counter()
            try:
                weights, local = self._weights(work["weights"])
            except (RayError, FileNotFoundError) as err:  # lost with the server instance that made them
                outcome = {"kind": "requeue", "error": error_line(err)}
                continue
            try:
                if shards:  # the other parts: of the same version in fixed mode, each shard's newest in free mode
                    weights = [weights, *shards.fetch(holder, work["version"] if self.fixed else None)]
                    local = local or any(shards.local)
            except RayError as err:
                return {"ended": "shard", "error": error_line(err)}
            fetch = time.perf_counter() - start
            out = self._gradient_out(self.layout.numel) if local else None
            try:
                meta, grad = self._gradient(work, weights, out, parts)
            except Exception as err:  # the step's own error: a try of the step, counted by the server
                outcome, grad = {"kind": "failed", "error": f"{type(err).__name__}: {err} (on worker {self.index})"}, None
                continue
            slot = self.gradient_slot.slot(0) if out is not None else None
            if shards:  # every follower has the step before the leader counts it done
                try:
                    shards.push(holder, work["step"], grad, slot)
                except RayError as err:
                    return {"ended": "shard", "error": error_line(err)}
            own = parts[0] if parts else None
            outcome = {"kind": "gradient", "step": work["step"], "loss": meta["loss"], "buffers": meta["buffers"],
                       "compute_time": meta["compute_time"], "fetch_time": fetch, "round_trip": round_trip,
                       "grad_slot": (slot.part(own.start, own.stop) if own else slot)
                       if slot is not None and isinstance(work["weights"], Slot) else None,
                       **{f"server_{k}": v for k, v in work["timing"].items()}}
            if outcome["grad_slot"] is not None:
                grad = None  # the server reads it in place
            elif own:
                grad = grad[own.start:own.stop]  # the leader's part, through the object store

    def _weights(self, handle) -> tuple[np.ndarray, bool]:
        """A version's weights, and whether they came through shared memory (the server is on this node)."""
        if isinstance(handle, Slot):
            self.versions.forget_except({handle.segment} | self.follower_segments)  # a restarted server's is new
            return self.versions.view(handle), True
        return ray.get(handle), False  # the object store (zero-copy on this node)

    def _read(self, handle) -> np.ndarray:
        """A following shard's part: through shared memory on this node, else the object store."""
        if isinstance(handle, Slot):
            self.follower_segments.add(handle.segment)
            return self.versions.view(handle)
        return ray.get(handle)

    def _gradient_out(self, numel: int) -> Optional[np.ndarray]:
        """This worker's gradient slot, made on first use; None if there is no room (the object store then)."""
        if self.gradient_slot is None:
            self.gradient_slot = Slots.create(self.gradient_name, numel, 1) or False
        return self.gradient_slot.view(0) if self.gradient_slot else None

    def close(self) -> None:
        """The run is over: free this worker's gradient slot."""
        if self.gradient_slot:
            self.gradient_slot.close()
            self.gradient_slot = None

    @ray.method(num_returns=2)
    def compute(self, work: dict, train_set: list):
        """One gradient for `work` (a step, its batch indices and weight version, as the server hands out):
        (metadata, flat gradient). `train_set`: [the training set's reference], read once."""
        if self.train is None:
            self.train = ray.get(train_set[0])
        meta, flat = self._gradient(work, ray.get(work["weights"]))
        return {**meta, "lease": work["lease"], "step": work["step"], "version": work["version"],
                "worker": self.index}, flat

    def _gradient(self, work: dict, weights, out: Optional[np.ndarray] = None,
                  parts: Optional[list[Part]] = None) -> tuple[dict, np.ndarray]:
        start = time.perf_counter()
        loss, flat = flat_gradient(self.model, self.names, self.layout, self.train, work, weights, self.device, out,
                                   bounds=[(p.first, p.last) for p in parts] if parts else None)
        elapsed = time.perf_counter() - start
        if self.slowdown > 1:
            time.sleep((self.slowdown - 1) * elapsed)  # a straggler, on purpose
        self.busy += time.perf_counter() - start
        self.m_busy.set(self.busy / (time.perf_counter() - self.started), tags=self.tags)
        return {"loss": loss, "compute_time": elapsed,
                "buffers": model_buffers(self.model) if work["buffers"] else None}, flat


@dataclass
class DistributedResult:
    history: list[EpochMetrics]
    applied_steps: list[int]
    weights: np.ndarray
    staleness: list[int]
    server_restarts: int = 0
    worker_failures: int = 0
    checkpoint: str = ""  # the run's checkpoint folder (removed at the end unless keep_checkpoints)


def shard_parts(config: TrainConfig, num_classes: int) -> Optional[list[Part]]:
    """The parts of the weights of sharded servers (None for one server); a model with fewer tensors than
    `server_shards` is refused before anything starts."""
    if config.server_shards == 1:
        return None
    try:
        return partition(shard_sizes(config, num_classes), config.server_shards)
    except ValueError as err:
        raise ConfigError(f"invalid config:\n  server_shards: {err}") from None


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
    parts = shard_parts(config, data.num_classes)
    values = config.model_dump()
    train_ref, test_ref = ray.put(data.train), ray.put(data.test)
    threads = server_concurrency(config.workers)
    server = ParameterServer.options(**{"name": f"abray-ps-{run_id}", "num_cpus": 0,
                                        "max_restarts": 0 if parts else -1, "max_task_retries": 0,
                                        "max_concurrency": threads, **(server_options or {})}
                                     ).remote(values, len(data.train), data.num_classes, None if parts else root,
                                              run_id, astuple(parts[0]) if parts else None)
    kept = 2 * config.delay + 5 if config.mode == "distributed" else config.workers + 3  # a follower's versions
    followers = [ParameterShard.options(name=f"abray-ps-{run_id}-{k}", num_cpus=0, max_restarts=0, max_task_retries=0,
                                        max_concurrency=threads)
                 .remote(values, len(data.train), data.num_classes, astuple(part), run_id, k, kept)
                 for k, part in enumerate((parts or [])[1:], start=1)]
    introduced = [server.set_followers.remote(followers, [astuple(p) for p in parts[1:]])] if followers else []
    slowdown = config.slowdown or [1.0] * config.workers
    workers = [Worker.options(name=f"abray-worker-{run_id}-{i}", num_cpus=config.cpus_per_worker,
                              num_gpus=config.gpus_per_worker, max_restarts=-1, max_task_retries=0)
               .remote(values, data.num_classes, i, slowdown[i], run_id)
               for i in range(config.workers)]
    driver = Driver(server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready,
                    followers=followers, parts=[astuple(p) for p in parts] if parts else None)
    try:
        try:  # the leader knows its followers before any work
            ray.get(introduced)
        except RayError as err:
            raise TrainingFailed(f"the parameter server could not start: {error_line(err)}") from None
        driver.run()
        result = driver.server_call(lambda: server.result.remote())
        if parts:  # the leader's part, then the followers'
            own = result["weights"][parts[0].start:parts[0].stop]
            result["weights"] = np.concatenate([own, *ray.get([f.result.remote() for f in followers])])
    finally:
        # a server still writing would leave files behind in the folder about to be removed; shared memory goes
        ray.wait([a.stop.remote() for a in [server, *followers]] + [w.close.remote() for w in workers],
                 num_returns=1 + len(followers) + len(workers), timeout=10)
        for actor in [server, *followers, *workers]:
            ray.kill(actor, no_restart=True)
        remove_segments(segment_prefix(run_id))  # what actors that died left on this machine
        if not config.keep_checkpoints:
            folder.remove()
    return DistributedResult(result["history"], result["applied_steps"], result["weights"], result["staleness"],
                             driver.server_restarts, driver.worker_failures, folder.uri)
