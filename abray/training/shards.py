"""Sharded parameter servers (`server_shards` > 1): the weights split, at tensor boundaries, into contiguous parts
of about equal size, each held and stepped by a server of its own, so that no one server carries every byte and
every update (docs/scale.md: why, and when one server saturates).

Shard 0 leads: it is the `ParameterServerState` of the unsharded run, leases, step order, epochs and all, over its
own part. The others follow (`ShardState`): each holds a part, steps it with the same optimizer and schedule, and
keeps the versions workers read. A worker sends each follower its slice of the gradient before it settles the
step's lease with the leader, so that every part has a step before the leader counts it done; followers take
each step once (a step sent again, because its lease was given back and it was computed again, is dropped), in
step order in fixed mode (early arrivals wait), on arrival in free mode. Fixed mode is then, part for part, the
unsharded run, and so the simulator's trajectory. In free mode each part applies on arrival, so the parts' update
orders may differ, and a step whose worker died midway may reach some parts from one computation and the rest from
another: each part still applies it once.

AB's global cosine spans every tensor, so it cannot be sharded (the config refuses it); per-tensor and
per-element braking, and every other method, act tensor by tensor.

Sharded servers do not restart: they keep no checkpoints, and a shard's death fails the run (a consistent
restart would roll every shard back to a common checkpoint; not built). Workers' deaths are handled as without
shards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..optim.methods import METHODS
from ..optim.prediction import predicted_weights, prediction_horizon
from ..optim.staleness import source_version
from .build import build_optimizer, make_scheduler
from .config import TrainConfig
from .flat import FlatLayout, apply_flat_gradient
from .models import build_model


@dataclass(frozen=True)
class Part:
    """Tensors [first, last) of a model, at [start, stop) of its flat buffer."""

    first: int
    last: int
    start: int
    stop: int


def partition(sizes: list[int], shards: int) -> list[Part]:
    """`shards` contiguous parts of the tensors of `sizes` (elements each), each with at least one tensor, cut
    where the running total is nearest to an equal share."""
    if not 1 <= shards <= len(sizes):
        raise ValueError(f"server_shards must be between 1 and the model's {len(sizes)} parameter tensors, got "
                         f"{shards}")
    total, ends, running = sum(sizes), [0], 0
    cuts = []
    for i, size in enumerate(sizes):
        running += size
        ends.append(running)
    for k in range(1, shards):
        target = total * k / shards
        low = (cuts[-1] if cuts else 0) + 1  # at least one tensor in every part, before and after
        high = len(sizes) - (shards - k)
        cuts.append(min(range(low, high + 1), key=lambda i: abs(ends[i] - target)))
    bounds = [0] + cuts + [len(sizes)]
    return [Part(a, b, ends[a], ends[b]) for a, b in zip(bounds, bounds[1:])]


class ShardState:
    """A following shard's logic, free of Ray: part `part` of the weights, its optimizer and schedule, the versions
    of it that workers read, and the steps it has taken."""

    def __init__(self, config: TrainConfig, train_size: int, num_classes: int, part: Part,
                 put=np.copy, get=lambda handle: handle, drop=lambda handle: None):
        self._put, self._get, self._drop = put, get, drop
        self.config, self.part = config, part
        self.fixed, self.delay = config.mode == "distributed", config.delay
        self.steps_per_epoch = train_size // config.batch_size
        torch.manual_seed(config.seed)  # the same initial weights as the leader's model (and the simulator's)
        model = build_model(config.model, num_classes)
        tensors = [p.detach() for p in model.parameters()][part.first:part.last]
        self.layout = FlatLayout([t.shape for t in tensors])
        self.flat = self.layout.flatten(tensors).clone()
        self.params = [nn.Parameter(v) for v in self.layout.views(self.flat)]
        self.optimizer = build_optimizer(config, self.params)
        self.scheduler = make_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.predict = METHODS[config.optimizer].predicts
        self.applied = 0
        self.taken: set[int] = set()  # steps applied or waiting to be (fixed mode)
        self.pending: dict[int, tuple] = {}  # fixed mode: step -> (version, gradient), early
        self.staleness: list[int] = []
        self.versions: dict[int, object] = {}
        self.reads: dict[tuple, int] = {}  # holder -> the version it computes on (free mode keeps it)
        self.retired: dict = {}
        self.epochs_read = 0  # epoch ends the leader has read; later ones are kept until it does
        self._store()

    # ---- versions -----------------------------------------------------------------------------------
    def _store(self) -> None:
        if self.applied not in self.versions:
            if self.predict:
                horizon = prediction_horizon(self.delay, None if self.fixed else self.staleness)
                weights = self.layout.flatten(predicted_weights(self.optimizer, self.params, horizon)).numpy()
            else:
                weights = self.flat.numpy()
            self.versions[self.applied] = self._put(weights)
        # fixed mode: what a step not yet applied by the leader may need. This part may be ahead of the leader by up
        # to D + 1 steps (sent before the leader counts them), and a step given back is computed again on
        # max(0, t - D) weights of every part: so 2 D + 1 versions back
        needed = source_version(self.applied, 2 * self.delay + 1) if self.fixed else self.applied
        kept = set(self.reads.values()) | {v for v in self.versions if v % self.steps_per_epoch == 0
                                            and v // self.steps_per_epoch > self.epochs_read}
        for v in [v for v in self.versions if v < needed and v not in kept]:
            self._drop(self.versions.pop(v))

    def is_retired(self, holder: tuple) -> bool:
        return holder[1] <= self.retired.get(holder[0], -1)

    def weights(self, holder: tuple, version: Optional[int]) -> Optional[tuple[int, object]]:
        """(version, handle) for `holder` to compute on: `version` in fixed mode (None while it is not made yet),
        the newest in free mode (`version` None). Kept until the holder sends its next gradient or is released."""
        if self.is_retired(holder):
            raise LookupError(f"holder {holder} was released")
        if version is None:
            version = self.applied
            self._store()
        elif version > self.applied:
            return None
        if version not in self.versions:
            raise LookupError(f"version {version} of part {self.part} is gone (newest {self.applied})")
        self.reads[holder] = version
        return version, self.versions[version]

    def epoch_weights(self, epoch: int) -> Optional[object]:
        """The handle of this part's weights at the end of epoch `epoch` (fixed mode: after exactly that many
        updates; None while not there yet; free mode: the newest), for the leader to evaluate the whole model."""
        version = epoch * self.steps_per_epoch if self.fixed else self.applied
        if version > self.applied:
            return None
        if not self.fixed:
            self._store()
        self.epochs_read = max(self.epochs_read, epoch)
        return self.versions[version]

    def release(self, holder: tuple) -> None:
        worker, generation = holder
        self.retired[worker] = max(generation, self.retired.get(worker, -1))
        for h in [h for h in self.reads if self.is_retired(h)]:
            del self.reads[h]

    # ---- steps --------------------------------------------------------------------------------------
    def push(self, holder: tuple, step: int, version: int, grad: np.ndarray, borrowed: bool = False) -> bool:
        """This part's slice of step `step`'s gradient, computed on `version`. False if the step was taken
        already (dropped). `borrowed`: `grad` is the worker's memory, copied if kept for later."""
        self.reads.pop(holder, None)
        if step in self.taken:
            return False
        self.taken.add(step)
        if self.fixed:
            self.pending[step] = (version, np.array(grad) if borrowed and step != self.applied else grad)
            while self.applied in self.pending:
                self._apply(*self.pending.pop(self.applied))
        else:
            self._apply(version, grad)
        return True

    def _apply(self, version: int, grad) -> None:
        apply_flat_gradient(self.optimizer, self.scheduler, self.params, self.layout, grad, self.applied - version,
                            lambda: self._get(self.versions[version]) if version in self.versions else None)
        self.staleness.append(self.applied - version)
        self.applied += 1
        if self.fixed:
            self._store()


def shard_sizes(config: TrainConfig, num_classes: int) -> list[int]:
    """The number of elements of each parameter tensor of the config's model, without building its weights."""
    with torch.device("meta"):
        model = build_model(config.model, num_classes)
    return [math.prod(p.shape) for p in model.parameters()]
