"""Weights as one flat float32 buffer, the form they travel in between the parameter server and its workers,
the BatchNorm buffers that travel with them, and a worker's gradient in that form."""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .delayed import apply_gradients


class FlatLayout:
    """Where each parameter tensor lives in the flat buffer."""

    def __init__(self, shapes: list[torch.Size]):
        self.shapes = shapes
        self.sizes = [math.prod(s) for s in shapes]
        self.numel = sum(self.sizes)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, shape in zip(flat.split(self.sizes), self.shapes)]

    def views_of_parts(self, parts: list[torch.Tensor], bounds: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Every tensor's view, from flat `parts` holding tensors [first, last) each (sharded servers' parts)."""
        return [v for part, (first, last) in zip(parts, bounds)
                for v in FlatLayout(self.shapes[first:last]).views(part)]

    def flatten(self, tensors, like: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """One flat tensor from per-parameter tensors (into `out`, when given, on their device); None (an
        unused parameter) becomes zeros."""
        parts = [t.reshape(-1) if t is not None else torch.zeros(n, dtype=torch.float32, device=like.device
                                                                  if like is not None else "cpu")
                 for t, n in zip(tensors, self.sizes)]
        return torch.cat(parts) if out is None else torch.cat(parts, out=out)


def apply_flat_gradient(optimizer: torch.optim.Optimizer, scheduler, params: list[torch.Tensor], layout: FlatLayout,
                        grad: np.ndarray, staleness: int, source: Callable[[], Optional[np.ndarray]]) -> None:
    """One update of `params` (views into a flat buffer laid out by `layout`) with the flat gradient `grad`,
    through `apply_gradients`, then the schedule's step; the server and each of its shards step so. `source()`:
    the flat weights the gradient was computed on (None where they are gone), read, zero-copy, only for a
    delay-aware optimizer (one with `prepare`). The gradient's memory is let go of after."""
    weights = source() if hasattr(optimizer, "prepare") else None
    apply_gradients(optimizer, params, layout.views(tensor_from_store(grad)), staleness,
                    layout.views(tensor_from_store(weights)) if weights is not None else ())
    scheduler.step()
    for p in params:
        p.grad = None


def tensor_from_store(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (read-only) array from the object store, without copying."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only: we never write through it
        return torch.from_numpy(array)


def bind_parameters(model: nn.Module, views: list[torch.Tensor]) -> list[nn.Parameter]:
    """Make the model's parameters views into the flat buffer, so the optimizer updates it in place."""
    params = []
    named = list(model.named_parameters())
    for (name, _), view in zip(named, views):
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        param = nn.Parameter(view)
        module._parameters[attr] = param
        params.append(param)
    return params


def model_buffers(model: nn.Module) -> dict[str, np.ndarray]:
    return {name: b.detach().cpu().numpy().copy() for name, b in model.named_buffers()}


def load_buffers(model: nn.Module, buffers: Optional[dict]) -> None:
    if buffers:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(torch.as_tensor(buffers[name]))


def flat_gradient(model: nn.Module, names: list[str], layout: FlatLayout, train, work: dict, weights,
                  device="cpu", out: Optional[np.ndarray] = None,
                  bounds: Optional[list[tuple[int, int]]] = None) -> tuple[float, np.ndarray]:
    """What a worker computes for the server's `work` (a step's batch indices and BatchNorm buffers) on the flat
    `weights` of its version (or, with `bounds`, on a list of parts, each holding tensors [first, last): sharded
    servers'): the batch's loss and its gradient as a flat float32 numpy array, on the CPU (in `out`, when
    given: the worker's shared-memory slot)."""
    from .data import collate
    from .epochs import batch_gradient

    x, y = collate(train, work["indices"])
    if bounds is None:
        w = layout.views(tensor_from_store(weights).to(device))
    else:
        w = layout.views_of_parts([tensor_from_store(part).to(device) for part in weights], bounds)
    load_buffers(model, work["buffers"])
    loss, grads = batch_gradient(model, names, w, x.to(device), y.to(device))
    if out is None:
        return loss, layout.flatten(grads, like=w[0]).cpu().numpy()
    target = torch.from_numpy(out)
    if w[0].device.type == "cpu":
        layout.flatten(grads, like=w[0], out=target)
    else:  # gathered on the device, then one copy to the host
        target.copy_(layout.flatten(grads, like=w[0]))
    return loss, out
