"""The delay mitigations by name: one registry that the simulator, the CLI, sweeps and the parameter
server all build their optimizers from.

The registry restates no default: a hyperparameter the caller leaves out takes the optimizer
constructor's default, and a training run passes every one of its own (`TrainConfig` holds the run
defaults).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch.optim import SGD, Optimizer

from .absgd import ABSGD
from .peers import DCASGD, NesterovLookahead, SpikeCompensatedSGD, StalenessAwareSGD

SGD_HYPERPARAMETERS = ("lr", "momentum", "weight_decay")


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    strength: Optional[str]  # the hyperparameter that sets how strongly it acts (0 = plain SGDM), if any
    predicts: bool  # computes gradients on linearly predicted weights
    cls: type  # the optimizer class
    hyperparameters: tuple[str, ...]  # what its constructor takes besides params (and delay, if delay-aware)

    def build(self, params, delay: int, hyperparameters: dict) -> Optimizer:
        given = {k: v for k, v in hyperparameters.items() if k in self.hyperparameters and v is not None}
        if "delay" in self.hyperparameters:
            given["delay"] = delay
        return self.cls(params, **given)


def _method(name, summary, strength, predicts, cls, *extra) -> Method:
    return Method(name, summary, strength, predicts, cls, SGD_HYPERPARAMETERS + extra)


METHODS = {
    m.name: m
    for m in [
        _method("sgdm", "SGD with momentum (torch.optim.SGD)", None, False, SGD, "nesterov"),
        _method("ab", "Adaptive Braking: g <- (1 - rho_t cos(g, v)) g, rho_t = rho min(1, staleness / rho_ramp)",
                "rho", False, ABSGD, "nesterov", "rho", "granularity", "rho_ramp", "clip_factor", "delay"),
        _method("dcasgd", "DC-ASGD, adaptive: g <- g + lambda0/sqrt(MS) g*g*(w_now - w_then)", "dc_lambda", False,
                DCASGD, "dc_lambda", "delay"),
        _method("staleness_lr", "staleness-aware learning rate: lr / (D + 1)", None, False, StalenessAwareSGD,
                "delay"),
        _method("lwp", "linear weight prediction: gradient on w - lr D v", None, True, SGD, "nesterov"),
        _method("spike", "spike compensation: w <- w - lr (m^D v + (1 - m^D)/(1 - m) g)", None, False,
                SpikeCompensatedSGD, "delay"),
        _method("nesterov_lookahead", "Nesterov look-ahead of D + 1 steps: w <- w - lr (g + gamma_D v)",
                "lookahead", False, NesterovLookahead, "lookahead", "delay"),
        _method("ab_lwp", "Adaptive Braking with linear weight prediction", "rho", True, ABSGD, "nesterov", "rho",
                "granularity", "rho_ramp", "clip_factor", "delay"),
    ]
}


def build_optimizer(name: str, params, delay: int, *, lr: float, momentum: float, **hyperparameters) -> Optimizer:
    """The optimizer of method `name` over `params`, for gradients `delay` updates stale.

    `lr` and `momentum` are required, because torch's SGD and ABSGD default momentum differently. Other
    hyperparameters the method does not take are ignored (a run's config carries every method's), and one
    left out or None takes the constructor's default."""
    if name not in METHODS:
        raise ValueError(f"optimizer must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name].build(params, delay, {**hyperparameters, "lr": lr, "momentum": momentum})
