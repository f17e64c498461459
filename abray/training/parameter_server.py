"""The parameter server's logic, free of Ray: it holds the weights as one flat fp32 buffer and runs AB-SGDM (or
any method of `abray.optim.methods`) on them with the same optimizer classes, and so the same functional
kernels, as the simulator. The Ray actor around it is `abray.training.distributed.ParameterServer`.

It hands out work as (step, batch indices, weight version) and keeps every version a dispatched step
may still need in the Ray object store (each put there once). Two modes:

- "distributed" (fixed delay D): step t is computed on version `source_version(t, D)` and applied
  strictly in step order; early arrivals wait in a buffer. Given the seed this is the simulator's
  trajectory, update for update.
- "free": step t is computed on the newest version when it is handed out and applied on arrival;
  the staleness of every update is recorded.

Every `checkpoint_every` updates the whole state (weights, optimizer, schedule, the versions still
needed, metrics so far) goes to `<storage>/checkpoint.pt`; a restarted actor resumes from it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..optim.methods import METHODS
from ..optim.prediction import predicted_weights
from ..optim.staleness import source_version
from .build import build_optimizer, make_scheduler
from .config import TrainConfig
from .data import batch_indices
from .delayed import apply_gradients
from .epochs import EpochLog, EpochMetrics
from .flat import FlatLayout, bind_parameters, load_buffers, model_buffers, tensor_from_store
from .models import build_model


class ParameterServerState:
    """The parameter server's logic, free of Ray calls so that it reads (and tests) as plain Python."""

    def __init__(self, config: TrainConfig, test_set, train_size: int, num_classes: int, storage: Optional[str],
                 run_id: str,
                 put=lambda array: array, get=lambda handle: handle):
        # put/get store a version and read it back: the identity here, the Ray object store in the actor
        self._put, self._get = put, get
        self._train_size = train_size
        self.config = config
        self.run_id = run_id
        self.test_set = test_set
        self.steps_per_epoch = train_size // config.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs
        self.fixed = config.mode == "distributed"
        self.delay = config.delay
        self.storage = Path(storage) if storage else None

        torch.manual_seed(config.seed)  # the simulator's initial weights
        self.model = build_model(config.model, num_classes)
        self.layout = FlatLayout([p.shape for _, p in self.model.named_parameters()])
        self.flat = self.layout.flatten([p.detach() for p in self.model.parameters()]).clone()
        self.params = bind_parameters(self.model, self.layout.views(self.flat))
        self.optimizer = build_optimizer(config, self.params)
        self.scheduler = make_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.predict = METHODS[config.optimizer].predicts

        self.applied = 0  # updates applied = the newest version
        self.next_step = 0  # the next step never handed out
        self.requeued: list[int] = []  # steps to hand out again (their worker died)
        self.outstanding: dict[int, int] = {}  # step -> version it was handed out with
        self.pending: dict[int, tuple] = {}  # fixed mode: gradients that arrived early
        self.versions: dict = {}  # version -> handle of the weights the workers compute on
        self.applied_steps: list[int] = []
        self.history: list[EpochMetrics] = []
        self.staleness: list[int] = []  # of every applied update
        self.epoch_log = EpochLog()
        self.diverged_step: Optional[int] = None
        self._epoch_cache: tuple = (None, None)
        self.buffers = model_buffers(self.model)
        self._store_version()

    # ---- versions ----------------------------------------------------------------------------------
    def _version_weights(self) -> np.ndarray:
        if self.predict:
            return self.layout.flatten(predicted_weights(self.optimizer, self.params, self.delay)).numpy()
        return self.flat.numpy().copy()

    def _store_version(self) -> None:
        if self.fixed or self.applied == 0:  # free mode stores a version only when a step needs it
            self.versions[self.applied] = self._put(self._version_weights())
        needed = self._oldest_needed_version()
        for v in [v for v in self.versions if v < needed]:
            del self.versions[v]

    def _oldest_needed_version(self) -> int:
        if not self.fixed:
            return min(list(self.outstanding.values()) + [self.applied])
        return source_version(self.applied, self.delay)

    # ---- work ---------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.applied >= self.total_steps or self.diverged_step is not None

    def next_work(self) -> Optional[dict]:
        """The next (step, batch indices, version) to compute, or None if nothing can start now."""
        if self.done:
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
                self.versions[version] = self._put(self._version_weights())
        if self.requeued and step == min(self.requeued):
            self.requeued.remove(step)
        else:
            self.next_step += 1
        self.outstanding[step] = version
        epoch, index = divmod(step, self.steps_per_epoch)
        return {"step": step, "version": version, "weights": self.versions[version],
                "indices": self._indices(epoch, index), "buffers": self.buffers or None}

    def _indices(self, epoch: int, index: int) -> np.ndarray:
        if self._epoch_cache[0] != epoch:  # one permutation per epoch, not one per step
            self._epoch_cache = (epoch, batch_indices(self._train_size, self.config.batch_size, self.config.seed,
                                                      epoch))
        return self._epoch_cache[1][index]

    def requeue(self, step: int) -> None:
        """A worker died with this step: hand it out again."""
        if step in self.outstanding:
            del self.outstanding[step]
            self.requeued.append(step)

    # ---- updates ------------------------------------------------------------------------------------
    def receive(self, step: int, version: int, grad: np.ndarray, loss: float, buffers) -> list[EpochMetrics]:
        """A gradient for `step`, computed on `version`. Returns the epochs this completed."""
        if step not in self.outstanding or self.outstanding[step] != version or self.done:
            return []  # a duplicate (e.g. from before a restart) or late: never apply a step twice
        del self.outstanding[step]
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
        source = self.layout.views(tensor_from_store(self._get(self.versions[version])))  # zero-copy
        apply_gradients(self.optimizer, self.params, self.layout.views(tensor_from_store(grad)),
                        self.applied - version, source)
        self.scheduler.step()
        for p in self.params:
            p.grad = None
        if buffers:
            self.buffers = buffers
        self.staleness.append(self.applied - version)
        self.applied_steps.append(step)
        self.epoch_log.record(loss, self.applied - version)
        self.applied += 1
        self._store_version()
        finished = []
        if self.applied % self.steps_per_epoch == 0:
            finished = self._close_epoch()
        if self.storage and (self.applied % self.config.checkpoint_every == 0 or self.done):
            self.save_checkpoint()
        return finished

    def _close_epoch(self) -> list[EpochMetrics]:
        load_buffers(self.model, self.buffers)
        metrics = self.epoch_log.close(self.model, self.test_set, epoch=len(self.history) + 1, steps=self.applied,
                                       lr=self.optimizer.param_groups[0]["lr"], diverged_step=self.diverged_step)
        self.history.append(metrics)
        return [metrics]

    # ---- checkpoints --------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.storage / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        self.storage.mkdir(parents=True, exist_ok=True)
        state = {
            "flat": self.flat.clone(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "applied": self.applied,
            "versions": {v: np.array(self._get(h)) for v, h in self.versions.items()
                         if v >= self._restart_needed_version()},
            "applied_steps": list(self.applied_steps), "history": list(self.history),
            "staleness": list(self.staleness), "epoch_log": self.epoch_log, "buffers": self.buffers,
            "diverged_step": self.diverged_step, "run_id": self.run_id,
        }
        tmp = self.checkpoint_path().with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path())  # atomic: a crash never leaves half a checkpoint

    def _restart_needed_version(self) -> int:
        # after a restart every step from `applied` on is handed out again
        return source_version(self.applied, self.delay) if self.fixed else self.applied

    def restore(self) -> bool:
        if not (self.storage and self.checkpoint_path().exists()):
            return False
        state = torch.load(self.checkpoint_path(), weights_only=False)
        with torch.no_grad():
            self.flat.copy_(state["flat"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.applied = self.next_step = state["applied"]
        self.versions = {v: self._put(a) for v, a in state["versions"].items()}
        self.applied_steps, self.history = state["applied_steps"], state["history"]
        self.staleness, self.epoch_log = state["staleness"], state["epoch_log"]
        self.epoch_log.start = time.perf_counter()  # the clock of the process that saved it means nothing here
        self.buffers, self.diverged_step = state["buffers"], state["diverged_step"]
        self.outstanding, self.pending, self.requeued = {}, {}, []
        return True

