"""The Ray actor of a following parameter-server shard (`abray.training.shards.ShardState`), and what a worker
does with the followers: read their parts of a version, send them their slices of a gradient.

Like the leading server, a shard runs a thread per call (`max_concurrency`), so that a worker waiting for a
version not made yet (fixed mode) holds up nobody; weights and gradients go through shared memory on the shard's
node and through the object store otherwise (`abray.training.transport`).
"""

from __future__ import annotations

import threading
import uuid
from typing import Optional

import numpy as np
import ray
import torch

from .config import TrainConfig
from .shards import Part, ShardState
from .transport import Attached, Slot, VersionStore, remove_segments, segment_prefix

WAIT_SECONDS = 0.5  # between looks at whether a version is made


@ray.remote
class ParameterShard:
    def __init__(self, config_values: dict, train_size: int, num_classes: int, part: tuple, run_id: str,
                 index: int, wanted: int):
        torch.set_num_threads(1)
        config = TrainConfig(**config_values)
        self.node = ray.get_runtime_context().get_node_id()
        prefix = segment_prefix(run_id, f"s{index}")
        remove_segments(prefix)
        self.store = VersionStore(f"{prefix}{uuid.uuid4().hex[:8]}", wanted, put=ray.put, get=ray.get)
        self.state = ShardState(config, train_size, num_classes, Part(*part), put=self.store.put,
                                get=self.store.get, drop=self.store.drop)
        self.cond = threading.Condition()
        self.gradients = Attached()  # the workers' gradient slots on this node

    def ready(self) -> bool:
        return True

    def weights(self, holder: tuple, node: str, version: Optional[int]) -> tuple[int, object]:
        """(version, handle) of this part for `holder` on node `node`: `version` (fixed mode; waits until it is
        made) or the newest (free mode, `version` None)."""
        holder = tuple(holder)
        with self.cond:
            while (found := self.state.weights(holder, version)) is None:
                self.cond.wait(timeout=WAIT_SECONDS)
            return found[0], found[1] if node == self.node else self.store.off_node(found[1])

    def epoch_weights(self, node: str, epoch: int):
        """This part's weights at the end of epoch `epoch` (waits until there), for the leader."""
        with self.cond:
            while (handle := self.state.epoch_weights(epoch)) is None:
                self.cond.wait(timeout=WAIT_SECONDS)
            return handle if node == self.node else self.store.off_node(handle)

    def push(self, holder: tuple, step: int, version: int, grad_slot: Optional[Slot],
             grad: Optional[np.ndarray]) -> bool:
        """The slice of step `step`'s gradient (computed on `version` of this part): in the worker's slot on this
        node, else `grad`. False if the step was taken already."""
        borrowed = grad_slot is not None
        with self.cond:
            if borrowed:
                grad = self.gradients.view_of(holder[0], grad_slot)
            taken = self.state.push(tuple(holder), step, version, grad, borrowed)
            self.cond.notify_all()
            return taken

    def release(self, holder: tuple) -> None:
        with self.cond:
            self.state.release(tuple(holder))
            self.cond.notify_all()

    def result(self) -> np.ndarray:
        with self.cond:
            return self.state.flat.numpy().copy()

    def stop(self) -> None:
        with self.cond:
            self.store.close()


class Followers:
    """A worker's side of the followers: `fetch` their parts of the weights it computes on, `push` them their
    slices of its gradient (all at once, in parallel)."""

    def __init__(self, handles: list, parts: list[Part], node: str, read):
        """`read(handle)`: the array behind a version's handle (a shared-memory slot or an object reference)."""
        self.handles, self.parts, self.node, self.read = handles, parts, node, read
        self.versions: list[int] = []  # of the weights last fetched, part by part
        self.local: list[bool] = []  # whether each follower is on this node (it answered with a slot)

    def fetch(self, holder: tuple, version: Optional[int]) -> list[np.ndarray]:
        found = ray.get([f.weights.remote(holder, self.node, version) for f in self.handles])
        self.versions = [v for v, _ in found]
        self.local = [isinstance(handle, Slot) for _, handle in found]
        return [self.read(handle) for _, handle in found]

    def push(self, holder: tuple, step: int, grad: np.ndarray, slot: Optional[Slot]) -> None:
        """Each follower's slice: by reference into the worker's slot (`slot`, when it has one) for a follower
        on this node, else as an array through the object store."""
        calls = []
        for follower, part, version, local in zip(self.handles, self.parts, self.versions, self.local):
            by_slot = slot is not None and local
            calls.append(follower.push.remote(holder, step, version, slot.part(part.start, part.stop) if by_slot
                                              else None, None if by_slot else grad[part.start:part.stop]))
        ray.get(calls)
