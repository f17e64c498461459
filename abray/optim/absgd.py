"""`ABSGD`: SGD with momentum and Adaptive Braking, as a `torch.optim.Optimizer`.

A thin class over the functional kernel in `abray.optim.functional`, in the manner of
`torch/optim/sgd.py`: the class owns parameter groups and state, the kernel owns the arithmetic.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch.optim import Optimizer

from .functional import GRANULARITIES, absgd

# Chosen from the digits delay benchmark (benchmarks/digits_delay.py; figures in the README). Training runs take
# their defaults from here too (abray.training.config).
DEFAULT_RHO = 1.5
DEFAULT_GRANULARITY = "tensor"


def check_sgd_hyperparameters(lr: Any, momentum: float, weight_decay: float) -> None:
    """The checks every SGD-with-momentum method shares (ABSGD and the peers)."""
    lr_value = lr.item() if isinstance(lr, torch.Tensor) else lr
    if not lr_value >= 0.0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def check_hyperparameters(
    *,
    lr: Any,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    rho: float,
    granularity: str,
    eps: float,
) -> None:
    """Raise ValueError naming the first hyperparameter outside its allowed range."""
    check_sgd_hyperparameters(lr, momentum, weight_decay)
    if not rho >= 0.0:
        raise ValueError(f"rho must be >= 0, got {rho!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}, got {granularity!r}")
    if not eps > 0.0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True requires momentum in (0, 1), got momentum=0")


class ABSGD(Optimizer):
    r"""SGD with momentum and Adaptive Braking (Venigalla et al. 2020, arXiv 2007.01397).

    Before the momentum update each gradient is scaled by ``1 - rho * c``, where ``c`` is the cosine
    between the gradient (after weight decay) and the current velocity. Gradients that keep pushing
    along the velocity are braked; gradients that oppose it (an overshoot) are amplified. This damps
    the oscillations that stale gradients cause along high-curvature directions.

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
        track_braking: count, at every step, the tensors braked and those whose factor ``1 - rho * c`` was
            below 0 (coordinates for ``"element"``) into :attr:`braking_stats`; off by default (no cost).

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
        )
        check_hyperparameters(**{k: v for k, v in defaults.items() if k != "foreach"})
        super().__init__(params, defaults)
        self.track_braking = track_braking
        self.braking_stats: dict[str, Any] = {}

    def reset_braking_stats(self) -> dict[str, int]:
        """The counts since the last reset, as ints (one sync on an accelerator); the counting starts again."""
        counts = {key: int(value) for key, value in self.braking_stats.items()}
        self.braking_stats.clear()
        return counts

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_hyperparameters(**{k: group[k] for k in
                                 ("lr", "momentum", "weight_decay", "nesterov", "rho", "granularity", "eps")})

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
                rho=group["rho"],
                granularity=group["granularity"],
                eps=group["eps"],
                foreach=group["foreach"],
                stats=self.braking_stats if self.track_braking else None,
            )
            for state, old, new in zip(states, before, bufs):
                if new is not old:  # a new buffer, or a view into the kernel's flat block
                    state["momentum_buffer"] = new
        return loss
