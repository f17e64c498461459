"""The delay simulator (the paper's protocol): one process, every gradient computed on the weights of D
updates ago."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from ..optim.staleness import check_delay
from .data import DataSplit, batch_indices, collate
from .delayed import DelayedUpdates
from .epochs import EpochLog, EpochMetrics, batch_gradient, reversed_fraction, track_braking


def train_delayed(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataSplit,
    *,
    delay: int,
    epochs: int,
    batch_size: int,
    seed: int,
    scheduler=None,
    predict: bool = False,
    device="cpu",
    on_step: Optional[Callable[[int, float], None]] = None,
    on_epoch: Optional[Callable[[EpochMetrics], None]] = None,
) -> list[EpochMetrics]:
    """Train `model` with every gradient computed on the weights of `delay` updates ago.

    The model's parameters are the current weights; `DelayedUpdates` keeps delay + 1 versions of them
    and each batch's forward and backward pass runs on the stale version through
    `torch.func.functional_call`, so no weights are swapped in or out. The gradient is then handed to
    `optimizer` (any `torch.optim.Optimizer`; delay-aware ones also get `prepare(staleness, source)`)
    as the `.grad` of the current weights. `predict` computes gradients on linearly predicted weights
    instead (`abray.optim.prediction`). `scheduler`, if given, is stepped after every update.

    BatchNorm: buffers are not versioned. The running statistics are those of the training forward
    passes, which run on the stale weights, as they would on a real asynchronous worker; evaluation
    uses the current weights with those statistics, so any mismatch is part of what delay costs.

    Stops early, with the last epoch marked diverged at its step, when a training loss is not finite.
    """
    check_delay(delay)
    model.to(device).train()
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    updates = DelayedUpdates(params, optimizer, delay, predict=predict, scheduler=scheduler)
    track_braking(optimizer)
    history: list[EpochMetrics] = []
    log = EpochLog()
    for epoch in range(epochs):
        diverged_step = None
        for indices in batch_indices(len(data.train), batch_size, seed, epoch):
            x, y = collate(data.train, indices)
            loss, grads = batch_gradient(model, names, updates.stale(), x.to(device), y.to(device))
            if not math.isfinite(loss):
                diverged_step = updates.step
                break
            log.record(loss, updates.staleness)
            updates.apply(grads)  # and steps the scheduler
            if on_step is not None:
                on_step(updates.step, loss)
        metrics = log.close(model, data.test, epoch=epoch + 1, steps=updates.step,
                            lr=optimizer.param_groups[0]["lr"], diverged_step=diverged_step, device=device,
                            reversed_fraction=reversed_fraction(optimizer))
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if metrics.diverged:
            break
    return history
