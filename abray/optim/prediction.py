"""Linear weight prediction (Kosson et al. 2021; Chen et al. 2018, SpecTrain): compute a gradient that will
be applied `horizon` updates from now on the weights predicted for then, assuming the velocity holds:

    w_pred = w - lr * horizon * v

With horizon = D this changes which weights the delayed gradient is computed on, not the update, so it
combines with any optimizer that keeps torch's `momentum_buffer` state (SGD, ABSGD).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.optim import Optimizer


PREDICTION_WINDOW = 50  # free mode: the horizon is the mean staleness of this many latest updates


def prediction_horizon(delay: int, measured: Optional[Sequence[int]] = None) -> float:
    """How many updates ahead to predict: the delay D where it is fixed (`measured` None), else the mean of the
    latest PREDICTION_WINDOW measured stalenesses (0 before any was measured)."""
    if measured is None:
        return delay
    recent = measured[-PREDICTION_WINDOW:]
    return float(sum(recent) / len(recent)) if recent else 0.0


def predicted_weights(optimizer: Optimizer, params: list[Tensor], horizon: int) -> list[Tensor]:
    """The weights `horizon` updates ahead for each of `params` (new tensors; the params are untouched)."""
    lr_of = {p: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    out = []
    with torch.no_grad():
        for p in params:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            out.append(p.detach().clone() if buf is None or horizon == 0 else p - lr_of[p] * horizon * buf)
    return out
