"""The parameter server's logic, free of Ray: it holds the weights as one flat fp32 buffer and runs AB-SGDM (or
any method of `abray.optim.methods`) on them with the same optimizer classes, and so the same functional
kernels, as the simulator. The Ray actor around it is `abray.training.distributed.ParameterServer`.

It hands out work as (lease, step, batch indices, weight version) and keeps every version a dispatched step
may still need in the Ray object store (each put there once). Two modes:

- "distributed" (fixed delay D): step t is computed on version `source_version(t, D)` and applied
  strictly in step order; early arrivals wait in a buffer. Given the seed this is the simulator's
  trajectory, update for update.
- "free": step t is computed on the newest version when it is handed out and applied on arrival;
  the staleness of every update is recorded.

Exactly once. Every hand-out is a lease, named after this instance (a random id, new at every start) and a
counter. A gradient is applied only against a lease this instance still holds, which it then forgets; a step
goes back to the queue only through its lease (`requeue`, `fail`). So a result that arrives twice, or after its
step was requeued, or from before a restart, is dropped, and a step is never applied twice. None is lost either:
a restarted instance resumes from its checkpoint, which lists the steps handed out but not applied, and hands
those out again, with every step it never reached.

Holders. Each lease is handed to a holder, (worker, generation): one run of a worker's loop. When a loop ends
without settling what it holds (its worker died), the holder is retired (`retire`) and its leases settled
(`leases_of`); a retired holder gets no more work, and its late results are dropped like any other of a lease
no longer held.

Checkpoints (`abray.training.checkpoints`): every `checkpoint_every` updates, at every epoch's end (before the
epoch is reported, so a restart never reports an epoch again) and at the end, the whole state goes to the run's
own folder; they carry the run's id and config fingerprint, and one of another run is refused.

Bounded retries: a step whose gradient fails (`fail`) more than `config.step_retries` times fails the run with
the worker's own error.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from typing import Callable, Optional

import numpy as np
import torch

from ..optim.methods import METHODS
from ..optim.prediction import predicted_weights, prediction_horizon
from ..optim.staleness import source_version
from .build import build_optimizer, make_scheduler
from .checkpoints import RunFolder, check_owner, config_fingerprint
from .config import TrainConfig
from .data import batch_indices
from .epochs import EpochLog, EpochMetrics, reversed_fraction, track_braking
from .flat import FlatLayout, apply_flat_gradient, bind_parameters, load_buffers, model_buffers
from .models import build_model
from .shards import Part


class TrainingFailed(RuntimeError):
    """A distributed run that cannot finish: a step out of retries (with the worker's error), a server that
    cannot restart, or no worker left."""


class ParameterServerState:
    """The parameter server's logic, free of Ray calls so that it reads (and tests) as plain Python.

    `test_set` may be given later (set the attribute): it is needed only when an epoch ends.
    `storage`: the storage root (a local path or a URI) under which this run checkpoints, in its own folder.
    `part`: with sharded servers, the tensors this one (the leader) steps; gradients and versions are of those
    only, and `fill_others(flat, epoch)` writes the other parts' weights at an epoch's end into `flat` before the
    model is evaluated (abray.training.shards)."""

    def __init__(self, config: TrainConfig, test_set, train_size: int, num_classes: int, storage: Optional[str],
                 run_id: str,
                 put=np.copy, get=lambda handle: handle, drop=lambda handle: None, part: Optional[Part] = None,
                 fill_others: Optional[Callable[[torch.Tensor, int], None]] = None):
        # put/get/drop store a version (a snapshot: the array given is a view of the live weights), read it back
        # and let it go: a copy in memory here; shared memory or the object store in the actor (VersionStore)
        self._put, self._get, self._drop = put, get, drop
        self.put_seconds = 0.0  # time spent storing versions, for the per-update breakdown
        self._train_size = train_size
        self.config = config
        self.run_id = run_id
        self.fingerprint = config_fingerprint(config.model_dump(mode="json"))
        self.test_set = test_set
        self.steps_per_epoch = train_size // config.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs
        self.fixed = config.mode == "distributed"
        self.delay = config.delay
        self.folder = RunFolder(storage, run_id) if storage else None
        self.instance = uuid.uuid4().hex[:8]  # names this instance's leases; new at every (re)start
        self._lease_numbers = itertools.count()

        torch.manual_seed(config.seed)  # the simulator's initial weights
        self.model = build_model(config.model, num_classes)
        self.layout = FlatLayout([p.shape for _, p in self.model.named_parameters()])
        self.flat = self.layout.flatten([p.detach() for p in self.model.parameters()]).clone()
        self.params = bind_parameters(self.model, self.layout.views(self.flat))
        self.part = part or Part(0, len(self.params), 0, self.layout.numel)
        self.fill_others = fill_others
        self.own_params = self.params[self.part.first:self.part.last]
        self.own_layout = FlatLayout(self.layout.shapes[self.part.first:self.part.last])
        self.own_flat = self.flat[self.part.start:self.part.stop]
        self.optimizer = build_optimizer(config, self.own_params)
        track_braking(self.optimizer)  # with sharded servers, of the leader's part only
        self.scheduler = make_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.predict = METHODS[config.optimizer].predicts

        self.applied = 0  # updates applied = the newest version
        self.next_step = 0  # the next step never handed out
        self.requeued: list[int] = []  # steps to hand out again
        self.outstanding: dict[str, tuple[int, int]] = {}  # lease -> (step, version it was handed out with)
        self.holders: dict[str, tuple] = {}  # lease -> the holder it was handed to, when one was named
        self.retired: dict = {}  # worker -> its newest retired generation
        self.pending: dict[int, tuple] = {}  # fixed mode: gradients that arrived early
        self.versions: dict = {}  # version -> handle of the weights the workers compute on
        self.failures: dict[int, int] = {}  # step -> failed attempts
        self.failure: Optional[str] = None  # why the run failed (a step out of retries)
        self.applied_steps: list[int] = []
        self.history: list[EpochMetrics] = []
        self.staleness: list[int] = []  # of every applied update
        self.epoch_log = EpochLog()
        self.diverged_step: Optional[int] = None
        self._epoch_cache: tuple = (None, None)
        self.buffers = model_buffers(self.model)
        self._store_version()

    # ---- versions ----------------------------------------------------------------------------------
    def prediction_horizon(self) -> float:
        """How many updates ahead linear weight prediction looks: D in fixed mode (the simulator's), the
        measured staleness (mean of the latest updates) in free mode."""
        return prediction_horizon(self.delay, None if self.fixed else self.staleness)

    def _put_version(self):
        """The newest weights (or their prediction), stored: `put` snapshots them."""
        start = time.perf_counter()
        if self.predict:
            weights = self.own_layout.flatten(predicted_weights(self.optimizer, self.own_params,
                                                                self.prediction_horizon())).numpy()
        else:
            weights = self.own_flat.numpy()  # a view: put copies it once (into the object store, in the actor)
        handle = self._put(weights)
        self.put_seconds += time.perf_counter() - start
        return handle

    def _store_version(self) -> None:
        if self.fixed or self.applied == 0:  # free mode stores a version only when a step needs it
            self.versions[self.applied] = self._put_version()
        self._drop_unneeded_versions()

    def _drop_unneeded_versions(self) -> None:
        """Fixed mode: the versions a step not yet applied may need, max(0, t - D) for t >= applied. Free mode:
        those of the leases held, and the newest."""
        if self.fixed:
            needed = source_version(self.applied, self.delay)
            unneeded = [v for v in self.versions if v < needed]
        else:
            held = {version for _, version in self.outstanding.values()}
            unneeded = [v for v in self.versions if v not in held and v != self.applied]
        for v in unneeded:
            self._drop(self.versions.pop(v))

    # ---- work ---------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.applied >= self.total_steps or self.diverged_step is not None or self.failure is not None

    def next_work(self, holder: Optional[tuple] = None) -> Optional[dict]:
        """The next (lease, step, batch indices, version) to compute, handed to `holder` (worker, generation),
        or None if nothing can start now (or ever, for a retired holder)."""
        if self.done or (holder is not None and self.is_retired(holder)):
            return None
        if self.requeued:
            step = min(self.requeued)
        elif self.next_step < self.total_steps:
            step = self.next_step
        else:
            return None
        if self.fixed:
            version = source_version(step, self.delay)
            if version > self.applied:
                return None  # its weights do not exist yet
        else:
            version = self.applied
            if version not in self.versions:
                self.versions[version] = self._put_version()
        if self.requeued and step == min(self.requeued):
            self.requeued.remove(step)
        else:
            self.next_step += 1
        lease = f"{self.instance}.{next(self._lease_numbers)}"
        self.outstanding[lease] = (step, version)
        if holder is not None:
            self.holders[lease] = holder
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"lease": lease, "step": step, "version": version, "weights": self.versions[version],
                "indices": self._indices(epoch, index), "buffers": self.buffers or None}

    def _indices(self, epoch: int, index: int) -> np.ndarray:
        if self._epoch_cache[0] != epoch:  # one permutation per epoch, not one per step
            self._epoch_cache = (epoch, batch_indices(self._train_size, self.config.batch_size, self.config.seed,
                                                      epoch))
        return self._epoch_cache[1][index]

    def holds(self, lease: str) -> bool:
        """Whether `lease` is one this instance handed out and has not yet settled."""
        return lease in self.outstanding

    def is_retired(self, holder: tuple) -> bool:
        worker, generation = holder
        return generation <= self.retired.get(worker, -1)

    def retire(self, holder: tuple) -> None:
        """The holder's loop has ended: it gets no more work (nor does any earlier generation of its worker)."""
        worker, generation = holder
        self.retired[worker] = max(generation, self.retired.get(worker, -1))

    def leases_of(self, holder: tuple) -> list[tuple[str, int]]:
        """(lease, step) of every lease `holder` holds, oldest first."""
        return [(lease, self.outstanding[lease][0]) for lease, h in self.holders.items()
                if h == holder and lease in self.outstanding]

    def requeue(self, lease: str) -> bool:
        """The lease's work was lost through no fault of the step (its worker was lost, or the weights it needed
        died with an earlier server): hand the step out again. False for a lease this instance does not hold."""
        if lease not in self.outstanding:
            return False
        step, _ = self._settle(lease)
        self.requeued.append(step)
        return True

    def fail(self, lease: str, error: str) -> bool:
        """Computing the lease's step failed with `error`. Hand the step out again (True), or, when it has
        failed more than `step_retries` times, fail the run with that error (False; see `failure`)."""
        if lease not in self.outstanding:
            return True  # not this instance's: the step is handed out again anyway
        step, _ = self._settle(lease)
        self.failures[step] = attempts = self.failures.get(step, 0) + 1
        if attempts > self.config.step_retries:
            self.failure = (f"step {step} failed {attempts} times (step_retries = {self.config.step_retries}); "
                            f"last error: {error}")
            return False
        self.requeued.append(step)
        return True

    def _settle(self, lease: str) -> tuple[int, int]:
        self.holders.pop(lease, None)
        return self.outstanding.pop(lease)

    # ---- updates ------------------------------------------------------------------------------------
    def receive(self, lease: str, grad: np.ndarray, loss: float, buffers) -> list[EpochMetrics]:
        """The gradient computed for `lease`. Returns the epochs this completed. A lease this instance does not
        hold (settled already, requeued, or from before a restart) is dropped: no step is applied twice."""
        if self.done or lease not in self.outstanding:
            return []
        step, version = self._settle(lease)
        if not math.isfinite(loss):
            self.diverged_step = step if self.fixed else self.applied
            return self._close_epoch()
        if self.fixed:
            self.pending[step] = (version, grad, loss, buffers)  # applied strictly in step order
            finished = []
            while self.applied in self.pending:
                finished += self._apply(self.applied, *self.pending.pop(self.applied))
            return finished
        return self._apply(step, version, grad, loss, buffers)

    def _apply(self, step, version, grad, loss, buffers) -> list[EpochMetrics]:
        apply_flat_gradient(self.optimizer, self.scheduler, self.own_params, self.own_layout, grad,
                            self.applied - version, lambda: self._get(self.versions[version]))
        if buffers:
            self.buffers = buffers
        self.staleness.append(self.applied - version)
        self.applied_steps.append(step)
        self.epoch_log.record(loss, self.applied - version)
        self.applied += 1
        self._store_version()
        if self.applied % self.steps_per_epoch == 0:
            return self._close_epoch()  # checkpoints too
        if self.folder and (self.applied % self.config.checkpoint_every == 0 or self.done):
            self.save_checkpoint()
        return []

    def _close_epoch(self) -> list[EpochMetrics]:
        if self.fill_others is not None:
            with torch.no_grad():
                self.fill_others(self.flat, len(self.history) + 1)
        load_buffers(self.model, self.buffers)
        metrics = self.epoch_log.close(self.model, self.test_set, epoch=len(self.history) + 1, steps=self.applied,
                                       lr=self.optimizer.param_groups[0]["lr"], diverged_step=self.diverged_step,
                                       reversed_fraction=reversed_fraction(self.optimizer))
        self.history.append(metrics)
        if self.folder:  # before anyone hears of the epoch: a restored server never closes it again
            self.save_checkpoint()
        return [metrics]

    def epochs_since(self, count: int) -> list[EpochMetrics]:
        """The epochs after the first `count` (those a caller has not reported yet)."""
        return self.history[count:]

    # ---- checkpoints --------------------------------------------------------------------------------
    def unapplied_steps(self) -> list[int]:
        """Steps handed out (or waiting in the buffer) but not applied: a restart hands them out again."""
        return sorted({step for step, _ in self.outstanding.values()} | set(self.requeued) | set(self.pending))

    def save_checkpoint(self) -> None:
        state = {
            "run_id": self.run_id, "config_fingerprint": self.fingerprint,
            "flat": self.flat.clone(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "applied": self.applied, "next_step": self.next_step,
            "unapplied": self.unapplied_steps(), "failures": dict(self.failures),
            "versions": {v: np.array(self._get(h)) for v, h in self.versions.items()
                         if v >= self._restart_needed_version()},
            "applied_steps": list(self.applied_steps), "history": list(self.history),
            "staleness": list(self.staleness), "epoch_log": self.epoch_log, "buffers": self.buffers,
            "diverged_step": self.diverged_step,
        }
        self.folder.save(state)

    def _restart_needed_version(self) -> int:
        # after a restart every unapplied step is handed out again: on version max(0, t - D) in fixed mode (all
        # those steps are >= applied), on the newest in free mode
        return source_version(self.applied, self.delay) if self.fixed else self.applied

    def restore(self) -> bool:
        """Resume from this run's checkpoint, if there is one (False if not). A checkpoint of another run, or
        of this run under another config, raises CheckpointError naming it."""
        if self.folder is None:
            return False
        state = self.folder.load()
        if state is None:
            return False
        check_owner(state, self.folder.checkpoint_uri, self.run_id, self.fingerprint)
        with torch.no_grad():
            self.flat.copy_(state["flat"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.applied, self.next_step = state["applied"], state["next_step"]
        self.requeued, self.failures = list(state["unapplied"]), dict(state["failures"])
        for handle in self.versions.values():
            self._drop(handle)
        self.versions = {v: self._put(a) for v, a in state["versions"].items()}
        self.applied_steps, self.history = state["applied_steps"], state["history"]
        self.staleness, self.epoch_log = state["staleness"], state["epoch_log"]
        self.epoch_log.start = time.perf_counter()  # the clock of the process that saved it means nothing here
        self.buffers, self.diverged_step = state["buffers"], state["diverged_step"]
        self.outstanding, self.pending, self.holders = {}, {}, {}
        return True
