"""`ABSGD`: SGD with momentum and Adaptive Braking, as a `torch.optim.Optimizer`.

A thin class over the functional kernel in `abray.optim.functional`, in the manner of
`torch/optim/sgd.py`: the class owns parameter groups and state, the kernel owns the arithmetic.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch.optim import Optimizer

from .functional import GRANULARITIES, absgd
from .staleness import check_delay

# Chosen on the task suite's selection tasks (benchmarks/task_suite.py; docs/when-ab-works.md). Training runs take
# their defaults from here too (abray.training.config).
DEFAULT_RHO = 1.5
DEFAULT_GRANULARITY = "tensor"
DEFAULT_RHO_RAMP = 8.0  # braking reaches full strength at this staleness; none at staleness 0
DEFAULT_CLIP_FACTOR = True  # a negative factor 1 - rho c is clipped to 0: aligned gradients stop, never reverse


def braking_strength(rho: float, staleness: Optional[int], rho_ramp: float) -> float:
    """The rho an update brakes with: rho * min(1, staleness / rho_ramp).

    An undelayed gradient (staleness 0) is not braked, so AB is SGD with momentum where nothing is stale, and
    braking grows linearly to `rho` at staleness `rho_ramp`. `rho_ramp=0`, or an unknown staleness (None), brakes
    at full strength, as the paper's AB does.
    """
    if staleness is None or rho_ramp == 0:
        return rho
    return rho * min(1.0, staleness / rho_ramp)


def check_number(name: str, value: Any, allowed: str, inside: Callable[[float], bool], tensor: bool = False) -> None:
    """Raise ValueError("NAME must be ALLOWED, got VALUE") unless `value` is a finite real number (a Python or
    numpy one; with `tensor`, also a 0-d real tensor, as torch takes for lr) for which `inside` holds. None, a
    string, a bool or inf gets the same message as a number out of range, never a TypeError from a comparison."""
    number = value
    if tensor and isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_meta \
            and not value.is_complex() and value.dtype != torch.bool:
        number = value.item()
    try:
        ok = (isinstance(number, numbers.Real) and not isinstance(number, (bool, np.bool_))
              and math.isfinite(float(number)) and inside(float(number)))
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def check_sgd_hyperparameters(lr: Any, momentum: float, weight_decay: float) -> None:
    """The checks every SGD-with-momentum method shares (ABSGD and the peers)."""
    check_number("lr", lr, ">= 0 and finite", lambda v: v >= 0.0, tensor=True)
    check_number("momentum", momentum, "in [0, 1)", lambda v: 0.0 <= v < 1.0)
    check_number("weight_decay", weight_decay, ">= 0 and finite", lambda v: v >= 0.0)


def check_hyperparameters(
    *,
    lr: Any,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    rho: float,
    granularity: str,
    eps: float,
    rho_ramp: float = DEFAULT_RHO_RAMP,
    clip_factor: bool = DEFAULT_CLIP_FACTOR,
) -> None:
    """Raise ValueError naming the first hyperparameter outside its allowed range."""
    check_sgd_hyperparameters(lr, momentum, weight_decay)
    check_number("rho", rho, ">= 0 and finite", lambda v: v >= 0.0)
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}")
    check_number("eps", eps, "> 0 and finite", lambda v: v > 0.0)
    check_number("rho_ramp", rho_ramp, ">= 0 and finite", lambda v: v >= 0.0)
    check_flag("clip_factor", clip_factor)
    check_flag("nesterov", nesterov)
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True requires momentum in (0, 1), got momentum=0")


class ABSGD(Optimizer):
    r"""SGD with momentum and Adaptive Braking (Venigalla et al. 2020, arXiv 2007.01397).

    Before the momentum update each gradient is scaled by ``1 - rho_t * c``, where ``c`` is the cosine
    between the gradient (after weight decay) and the current velocity, clipped at 0 (``clip_factor``).
    Gradients that keep pushing along the velocity are braked, and stopped when ``c > 1 / rho_t``;
    gradients that oppose it (an overshoot) are amplified. This damps the oscillations that stale
    gradients cause along high-curvature directions.

    The strength follows each update's staleness s (how many updates old its gradient is):
    ``rho_t = rho * min(1, s / rho_ramp)`` (`braking_strength`). Fresh gradients are not braked, so
    where nothing is stale ABSGD is SGD with momentum and costs no accuracy; braking reaches ``rho``
    at staleness ``rho_ramp``. Tell it the staleness in one of two ways:

    - ``delay=D`` at construction, for a pipeline whose every gradient is D updates old;
    - ``prepare(staleness)`` before a ``step()``, for asynchronous training where it varies (the
      simulator and the parameter server call it before every update).

    Without either (``delay=None``, the default) the staleness is unknown and ABSGD brakes at full
    strength ``rho`` every step, as the paper's AB does: safe under delay, but in an undelayed loop it
    costs accuracy (it stops aligned gradients whenever ``c > 1 / rho``, and reverses them with
    ``clip_factor=False``). ``rho_ramp=0`` always brakes at full strength. The staleness is not part of
    ``state_dict()``: after loading one, pass ``delay=`` again or call ``prepare()`` before stepping.

    Args:
        params: parameters or parameter groups; every hyperparameter below may be set per group.
        lr: learning rate (>= 0).
        momentum: momentum factor in [0, 1).
        weight_decay: L2 penalty (>= 0), added to the gradient on the current weights.
        nesterov: Nesterov momentum (requires momentum > 0).
        rho: braking strength (>= 0). ``rho=0`` is exactly ``torch.optim.SGD``.
        granularity: where the cosine is taken: ``"tensor"`` (per parameter tensor), ``"global"``
            (one cosine over all parameters of the group), ``"element"`` (``sign(g * v)`` per coordinate).
        eps: added to ``||g|| ||v||`` so that a zero gradient or velocity gives ``c = 0`` (> 0).
        foreach: use the multi-tensor kernel (``None``, the default, picks it: the faster path on every
            device); ``False`` runs the single-tensor reference loop.
        rho_ramp: the staleness at which braking reaches ``rho`` (>= 0; 0: always ``rho``).
        clip_factor: clip a negative factor ``1 - rho_t c`` to 0, so a gradient aligned with the velocity
            (``c > 1 / rho_t``) is stopped rather than reversed (tensor and global granularity).
        delay: the staleness of every gradient, until ``prepare`` says otherwise; ``None``: unknown.
        track_braking: count, at every step, the tensors braked and those whose factor ``1 - rho_t * c`` was
            below 0 before clipping (coordinates for ``"element"``) into :attr:`braking_stats`; off by default
            (no cost).

    Attributes:
        braking_stats: the running counts while ``track_braking`` is on: ``"tensors"`` and ``"reversed"``
            (``"elements"`` and ``"reversed_elements"`` for element granularity), ints or 0-dim device
            tensors (kept on an accelerator to avoid a sync at each step). :meth:`reset_braking_stats` reads
            them as ints and starts again from zero.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        rho: float = DEFAULT_RHO,
        granularity: str = DEFAULT_GRANULARITY,
        eps: float = 1e-8,
        foreach: Optional[bool] = None,
        rho_ramp: float = DEFAULT_RHO_RAMP,
        clip_factor: bool = DEFAULT_CLIP_FACTOR,
        delay: Optional[int] = None,
        track_braking: bool = False,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            rho=rho,
            granularity=granularity,
            eps=eps,
            foreach=foreach,
            rho_ramp=rho_ramp,
            clip_factor=clip_factor,
        )
        check_hyperparameters(**{k: v for k, v in defaults.items() if k != "foreach"})
        self.staleness = None if delay is None else check_delay(delay)
        super().__init__(params, defaults)
        self.track_braking = track_braking
        self.braking_stats: dict[str, Any] = {}

    def reset_braking_stats(self) -> dict[str, int]:
        """The counts since the last reset, as ints (one sync on an accelerator); the counting starts again."""
        counts = {key: int(value) for key, value in self.braking_stats.items()}
        self.braking_stats.clear()
        return counts

    def add_param_group(self, param_group: dict) -> None:
        # checked as torch will complete it from the defaults, before it is added: a refused group is never kept
        group = {**self.defaults, **param_group}
        check_hyperparameters(**{k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "rho",
                                                        "granularity", "eps", "rho_ramp", "clip_factor")})
        super().add_param_group(param_group)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state dicts saved before these existed: the paper's AB, as then
            group.setdefault("rho_ramp", 0.0)
            group.setdefault("clip_factor", False)

    def prepare(self, staleness: int, source=None) -> None:
        """The staleness of the gradients the next ``step()`` applies (and those after it, until told
        otherwise). `source` (the weights they were computed on) is accepted for the common delay-aware
        interface and not used."""
        self.staleness = check_delay(staleness)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, states, bufs = [], [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("ABSGD does not support sparse gradients")
                state = self.state[p]
                params.append(p)
                grads.append(grad)
                states.append(state)
                bufs.append(state.get("momentum_buffer"))
            before = bufs.copy()

            absgd(
                params,
                grads,
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                rho=braking_strength(group["rho"], self.staleness, group["rho_ramp"]),
                granularity=group["granularity"],
                eps=group["eps"],
                clip=group["clip_factor"],
                foreach=group["foreach"],
                stats=self.braking_stats if self.track_braking else None,
            )
            for state, old, new in zip(states, before, bufs):
                if new is not old:  # a new buffer, or a view into the kernel's flat block
                    state["momentum_buffer"] = new
        return loss
