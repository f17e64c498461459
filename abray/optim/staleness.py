"""Delay and staleness: the one definition the whole project uses.

Delay D is the number of optimizer updates between the weights a gradient was computed on and the
update that applies it. Update t (the one that turns version t of the weights into version t + 1)
applies a gradient computed on version `source_version(t, D) = max(0, t - D)`: until D updates have
happened, gradients are computed on the initial weights, as in a pipeline that is still filling.
D = 0 is ordinary training.

An update's *staleness* is the delay it actually had: t - source_version(t, D) in a fixed-delay run
(so less than D for the first D updates), whatever the cluster produced in a free run. Delay-aware
optimizers (`prepare(staleness, source)`) are told each update's staleness.

This module sits at the bottom of the layers: it imports nothing from abray.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def source_version(step: int, delay: int) -> int:
    """The weight version that the gradient applied at update `step` was computed on."""
    return max(0, step - delay)


def staleness_at(step: int, delay: int) -> int:
    """The staleness of update `step` at fixed delay D: min(step, D)."""
    return step - source_version(step, delay)


def check_delay(delay: int) -> int:
    """`delay` as an int, or ValueError if it is not an integer >= 0 (bools are not integers here)."""
    if isinstance(delay, bool) or not isinstance(delay, (int, np.integer)) or delay < 0:
        raise ValueError(f"delay must be an integer >= 0, got {delay!r}")
    return int(delay)


def staleness_summary(staleness: Iterable[int]) -> dict:
    """Mean, max and histogram (staleness -> number of updates) of some updates' staleness."""
    values = [int(s) for s in staleness]
    return {"staleness_mean": float(np.mean(values)) if values else 0.0,
            "staleness_max": max(values, default=0),
            "staleness_hist": {k: values.count(k) for k in sorted(set(values))}}
