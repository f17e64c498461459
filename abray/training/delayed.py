"""Applying gradients that are D updates old: `DelayRing`, the last D + 1 weight versions, and
`DelayedUpdates`, which computes nothing itself but hands each gradient to the optimizer with its staleness.

The definition of delay and staleness is `abray.optim.staleness`; the simulator and the quadratic theory
update through `DelayedUpdates`, the parameter server (which keeps its versions in the object store) through
the same `apply_gradients`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..optim.prediction import predicted_weights
from ..optim.staleness import check_delay, source_version, staleness_at


class DelayRing:
    """The last D + 1 versions of a list of tensors, in D + 1 preallocated slots.

    `newest` is the version last pushed (0 for the tensors given at construction); `stale()` returns
    version `source_version(newest, delay)`, the one the next gradient is computed on. Pushing
    version t + 1 overwrites the slot of version t - D, which no later update needs.
    """

    def __init__(self, tensors: Sequence[Tensor], delay: int):
        self.delay = check_delay(delay)
        self.newest = 0
        first = [t.detach().clone() for t in tensors]
        self._slots = [first] + [[torch.empty_like(t) for t in first] for _ in range(delay)]

    def push(self, tensors: Sequence[Tensor]) -> None:
        """Store the next version (a copy of `tensors`)."""
        self.newest += 1
        slot = self._slots[self.newest % (self.delay + 1)]
        with torch.no_grad():
            for dst, src in zip(slot, tensors):
                dst.copy_(src)

    def stale(self) -> list[Tensor]:
        """The version the next gradient is computed on (do not modify it)."""
        return self._slots[source_version(self.newest, self.delay) % (self.delay + 1)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for slot in self._slots for t in slot)


def apply_gradients(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], grads, staleness: int,
                    source: Sequence[Tensor]) -> None:
    """One update with gradients computed `staleness` updates ago on the weights `source`: set them as
    the parameters' `.grad`, tell a delay-aware optimizer (one with `prepare`), and step. The simulator
    and the parameter server both update through here."""
    for p, g in zip(params, grads):
        p.grad = g
    prepare = getattr(optimizer, "prepare", None)
    if prepare is not None:
        prepare(staleness=staleness, source=dict(zip(params, source)))
    optimizer.step()


class DelayedUpdates:
    """Applies every gradient `delay` updates after the weights it was computed on.

    Holds the `DelayRing` of versions the gradients are computed on: the weights themselves, or for a
    method that predicts (linear weight prediction), the weights predicted `delay` updates ahead. Before
    each step it tells a delay-aware optimizer (one with `prepare`) the gradient's staleness and source
    weights. `scheduler`, if given, is stepped after every update.
    """

    def __init__(self, params: Sequence[Tensor], optimizer: torch.optim.Optimizer, delay: int, predict: bool = False,
                 scheduler=None):
        self.params = list(params)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.delay = check_delay(delay)
        self.predict = predict
        self.ring = DelayRing(self.params, delay)

    @property
    def step(self) -> int:
        """The number of updates applied so far (the index of the next one)."""
        return self.ring.newest

    @property
    def staleness(self) -> int:
        """The staleness of the next update: min(step, delay)."""
        return staleness_at(self.step, self.delay)

    def stale(self) -> list[Tensor]:
        """The weights the next gradient must be computed on (do not modify them)."""
        return self.ring.stale()

    def apply(self, grads: Sequence[Optional[Tensor]]) -> None:
        """Apply gradients computed on `stale()` to the current weights, step the scheduler, then store the new
        version: a predicting method predicts with the lr of the updates to come, as the parameter server does."""
        apply_gradients(self.optimizer, self.params, grads, self.staleness, self.ring.stale())
        if self.scheduler is not None:
            self.scheduler.step()
        self.ring.push(predicted_weights(self.optimizer, self.params, self.delay) if self.predict else self.params)
