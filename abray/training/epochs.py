"""Epoch bookkeeping, the same for the simulator and the parameter server: one batch's gradient, evaluation,
and the log that turns an epoch's updates into its `EpochMetrics`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..optim.staleness import staleness_summary
from .data import collate


@dataclass
class EpochMetrics:
    """What a run reports after each epoch. Its fields are the metric columns of the tidy results schema
    (abray.results.schema), in this order."""

    epoch: int
    steps: int  # updates applied so far, over the whole run
    train_loss: float  # mean over the epoch's applied updates
    test_loss: float
    test_accuracy: float
    wall_time: float  # seconds this epoch took
    lr_now: float  # the learning rate at the epoch's end (`lr` is the configured one)
    diverged: bool = False
    diverged_step: Optional[int] = None
    staleness_mean: float = 0.0  # over the epoch's updates
    staleness_max: int = 0
    staleness_hist: dict = field(default_factory=dict)  # staleness -> number of updates
    # AB only: of the tensors braked this epoch (summed over updates), the fraction whose factor 1 - rho c was < 0
    # (elements, for element granularity); None where nothing was braked
    reversed_fraction: Optional[float] = None


def evaluate(model: nn.Module, dataset, batch_size: int = 1024, device="cpu") -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` (in eval mode) on `dataset`."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            x, y = collate(dataset, range(start, min(start + batch_size, len(dataset))))
            x, y = x.to(device), y.to(device)
            out = model(x)
            total_loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += len(y)
    model.train(was_training)
    return total_loss / n, correct / n


def batch_gradient(model: nn.Module, names: list[str], weights: Sequence[Tensor], x: Tensor, y: Tensor):
    """Cross-entropy loss and its gradient for one batch, computed on `weights` (not the model's own
    parameters) through `torch.func.functional_call`. Returns (loss as a float, gradients; None for a
    parameter the loss does not use). The simulator and the Ray workers both compute gradients here."""
    leaves = [t.detach().requires_grad_() for t in weights]
    loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.item(), grads


def track_braking(optimizer) -> None:
    """Have an optimizer that can count its braking (ABSGD) count it, for the epochs' reversed_fraction."""
    if hasattr(optimizer, "track_braking"):
        optimizer.track_braking = True


def reversed_fraction(optimizer) -> Optional[float]:
    """Of the tensors (elements, for element granularity) the optimizer braked since the last call, the fraction
    whose factor 1 - rho c was below 0; None for an optimizer that does not count or where nothing was braked."""
    reset = getattr(optimizer, "reset_braking_stats", None)
    if reset is None or not getattr(optimizer, "track_braking", False):
        return None
    counts = reset()
    braked = counts.get("tensors", 0) + counts.get("elements", 0)
    return (counts.get("reversed", 0) + counts.get("reversed_elements", 0)) / braked if braked else None


@dataclass
class EpochLog:
    """The running epoch: the loss and staleness of each update applied in it, and when it started.
    `close` evaluates the model and turns them into the epoch's `EpochMetrics`, then starts the next epoch."""

    losses: list[float] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def record(self, loss: float, staleness: int) -> None:
        self.losses.append(loss)
        self.staleness.append(staleness)

    def close(self, model: nn.Module, test_set, *, epoch: int, steps: int, lr: float,
              diverged_step: Optional[int] = None, device="cpu",
              reversed_fraction: Optional[float] = None) -> EpochMetrics:
        test_loss, test_accuracy = evaluate(model, test_set, device=device)
        metrics = EpochMetrics(
            epoch=epoch, steps=steps, train_loss=float(np.mean(self.losses)) if self.losses else float("nan"),
            test_loss=test_loss, test_accuracy=test_accuracy, wall_time=time.perf_counter() - self.start,
            lr_now=float(lr), diverged=diverged_step is not None, diverged_step=diverged_step,
            **staleness_summary(self.staleness), reversed_fraction=reversed_fraction,
        )
        self.losses, self.staleness, self.start = [], [], time.perf_counter()
        return metrics
