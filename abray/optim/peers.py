"""Peer delay mitigations, each a transformation of the stale gradient in front of SGD with momentum.

Every optimizer here is SGD with momentum (torch's convention, dampening 0) plus one change, so all
methods share a harness and reduce to plain SGDM where they should. Each is a thin class over a
functional kernel, like `ABSGD`. Delay-aware ones expose `prepare(staleness, source)`, which the
simulator and the parameter server call before each `step()` with the gradient's staleness (updates
between the weights it was computed on and now) and those weights.

Equations, with g the gradient computed on weights w_then, applied to the current weights w_now at
staleness D, v the velocity, m the momentum, eta the learning rate:

DC-ASGD (Zheng et al. 2017, "Asynchronous SGD with Delay Compensation", ICML; eq. for DC-ASGD-c and
DC-ASGD-a):
    g <- g + lambda * g * g * (w_now - w_then)                           (elementwise)
    adaptive:  lambda = lambda0 / sqrt(MS + eps),  MS <- ms_decay * MS + (1 - ms_decay) * g^2,  MS_0 = 0
  Then SGDM. Defaults lambda0 = 2, ms_decay = 0.95, eps = 1e-7 follow the paper's ImageNet settings as
  reported by public implementations; the paper itself pairs DC with plain SGD, here it feeds SGDM.

Staleness-aware learning rate (Zhang, Gupta, Lian, Liu 2016, "Staleness-aware Async-SGD", IJCAI):
    eta_t = eta / (D + 1)
  The paper divides by the staleness tau; with the convention tau = D + 1 (an undelayed gradient has
  staleness 1), D = 0 is plain SGDM.

Spike compensation (Kosson, Chiley, Venigalla, Hestness, Köster 2021, "Pipelined Backpropagation at
Scale", MLSys):
    v <- m v + g;   w <- w - eta * (a v + b g),   a = m^D,   b = (1 - m^D) / (1 - m)
  An undelayed gradient would, by the time a delayed one arrives, already have moved the weights by
  eta (1 + m + ... + m^(D-1)) = eta b; that missed part is applied at once (the spike) and the
  momentum tail is scaled by a = m^D, so the gradient's total contribution is eta / (1 - m), as without
  delay. D = 0 gives a = 1, b = 0 (SGDM); D = 1 gives Nesterov momentum.

Nesterov-style look-ahead for stale gradients (after Ajanthan et al. 2025, "Nesterov Method for
Asynchronous Pipeline Parallel Optimization", ICML). The text we could reach says only that NAG's
look-ahead step is modified to address the staleness (their code runs NAdam with momentum 0.99). Our
assumption: NAG in its gradient-at-the-current-point form, w <- w - eta (g + m v), looks one step
ahead; a gradient that is D updates stale should look D + 1 steps ahead, gamma = m + m^2 + ... +
m^(D+1); `lookahead` in [0, 1] blends that step with SGDM's:
    v <- m v + g;   w <- w - eta * ((1 - lookahead) v + lookahead (g + gamma v))
  lookahead = 0 is SGDM; lookahead = 1 at D = 0 is Nesterov momentum.

Linear weight prediction lives in `abray.optim.prediction`: it changes which weights the gradient is
computed on, not the update.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .absgd import check_flag, check_number, check_sgd_hyperparameters
from .functional import absgd
from .staleness import check_delay

# Training runs take their defaults from here too (abray.training.config).
DEFAULT_DC_LAMBDA = 2.0
DEFAULT_LOOKAHEAD = 1.0


def spike_coefficients(momentum: float, delay: int) -> tuple[float, float]:
    """(a, b) of spike compensation: w <- w - eta (a v + b g)."""
    a = momentum**delay
    b = float(delay) if momentum == 1.0 else (1.0 - a) / (1.0 - momentum)
    return a, b


def lookahead_coefficient(momentum: float, delay: int) -> float:
    """gamma of the Nesterov look-ahead at staleness D: m + m^2 + ... + m^(D+1)."""
    return sum(momentum**k for k in range(1, delay + 2))


def dc_compensate(grads, params, sources, sq_avgs, *, dc_lambda, adaptive, ms_decay, eps):
    """DC-ASGD's delay compensation, g + lambda g*g*(w_now - w_then); returns new gradient tensors.

    `sq_avgs` (the running mean of g^2, adaptive variant) are updated in place; None entries are created
    and written back into the list.
    """
    out = []
    for i, (g, p, src) in enumerate(zip(grads, params, sources)):
        if adaptive:
            if sq_avgs[i] is None:
                sq_avgs[i] = torch.zeros_like(g)  # MS_0 = 0, as the recurrence says
            sq_avgs[i].mul_(ms_decay).addcmul_(g, g, value=1 - ms_decay)
        if src is None or dc_lambda == 0:
            out.append(g)
            continue
        lam = dc_lambda / (sq_avgs[i] + eps).sqrt() if adaptive else dc_lambda
        out.append(g + lam * g * g * (p - src))
    return out


def momentum_step(params, grads, bufs, *, lr, momentum, weight_decay, velocity_scale, gradient_scale):
    """SGDM with a generalised final step: w <- w - lr (velocity_scale * v + gradient_scale * g).

    (1, 0) is SGDM, (m, 1) Nesterov; spike compensation and the look-ahead use other pairs.
    """
    for i, (p, g) in enumerate(zip(params, grads)):
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        buf = bufs[i]
        if buf is None:
            buf = bufs[i] = torch.clone(g).detach()
        else:
            buf.mul_(momentum).add_(g)
        p.add_(buf, alpha=-lr * velocity_scale)
        if gradient_scale != 0:
            p.add_(g, alpha=-lr * gradient_scale)


class DelayAwareSGD(Optimizer):
    """Base for the SGDM-family peers: the step loop, state and `prepare` in one place."""

    def __init__(self, params, defaults: dict, delay: int = 0):
        check_sgd_hyperparameters(defaults["lr"], defaults["momentum"], defaults["weight_decay"])
        check_delay(delay)
        super().__init__(params, defaults)
        self.staleness = delay
        self._sources: dict[Tensor, Tensor] = {}

    def add_param_group(self, param_group: dict) -> None:
        # checked as torch will complete it from the defaults, before it is added: a refused group is never kept
        g = {**self.defaults, **param_group}
        check_sgd_hyperparameters(g["lr"], g["momentum"], g["weight_decay"])
        self._check_group(g)
        super().add_param_group(param_group)

    def _check_group(self, group: dict) -> None:
        pass

    def prepare(self, staleness: int, source: Optional[dict[Tensor, Tensor]] = None) -> None:
        """Tell the optimizer about the gradients the next `step()` applies: their staleness and, per
        parameter, the weights they were computed on."""
        check_delay(staleness)
        self.staleness = staleness
        self._sources = dict(source) if source is not None else {}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad for p in params]
            bufs = [self.state[p].get("momentum_buffer") for p in params]
            self._update(group, params, grads, bufs)
            for p, buf in zip(params, bufs):
                if buf is not None:
                    self.state[p]["momentum_buffer"] = buf
        return loss

    def _update(self, group, params, grads, bufs):
        raise NotImplementedError


class DCASGD(DelayAwareSGD):
    """SGDM on DC-ASGD's delay-compensated gradient (adaptive lambda by default)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 dc_lambda: float = DEFAULT_DC_LAMBDA, adaptive: bool = True, ms_decay: float = 0.95, eps: float = 1e-7,
                 delay: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, dc_lambda=dc_lambda,
                                      adaptive=adaptive, ms_decay=ms_decay, eps=eps), delay)

    def _check_group(self, group):
        check_number("dc_lambda", group["dc_lambda"], ">= 0 and finite", lambda v: v >= 0)
        check_number("ms_decay", group["ms_decay"], "in [0, 1)", lambda v: 0 <= v < 1)
        check_number("eps", group["eps"], "> 0 and finite", lambda v: v > 0)
        check_flag("adaptive", group["adaptive"])

    def _update(self, group, params, grads, bufs):
        sq = [self.state[p].get("sq_avg") for p in params]
        grads = dc_compensate(grads, params, [self._sources.get(p) for p in params], sq,
                              dc_lambda=group["dc_lambda"], adaptive=group["adaptive"], ms_decay=group["ms_decay"],
                              eps=group["eps"])
        for p, s in zip(params, sq):
            if s is not None:
                self.state[p]["sq_avg"] = s
        absgd(params, grads, bufs, lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"],
              nesterov=False, rho=0.0, granularity="tensor", eps=1e-8, foreach=False)


class StalenessAwareSGD(DelayAwareSGD):
    """SGDM with the step divided by the gradient's staleness, D + 1."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, delay: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay), delay)

    def _update(self, group, params, grads, bufs):
        absgd(params, grads, bufs, lr=group["lr"] / (self.staleness + 1), momentum=group["momentum"],
              weight_decay=group["weight_decay"], nesterov=False, rho=0.0, granularity="tensor", eps=1e-8,
              foreach=False)


class SpikeCompensatedSGD(DelayAwareSGD):
    """SGDM with spike compensation: w <- w - lr (m^D v + (1 - m^D) / (1 - m) g)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, delay: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay), delay)

    def _update(self, group, params, grads, bufs):
        a, b = spike_coefficients(group["momentum"], self.staleness)
        momentum_step(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                      weight_decay=group["weight_decay"], velocity_scale=a, gradient_scale=b)


class NesterovLookahead(DelayAwareSGD):
    """SGDM whose step looks D + 1 momentum steps ahead, blended with SGDM's step by `lookahead`."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 lookahead: float = DEFAULT_LOOKAHEAD, delay: int = 0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, lookahead=lookahead), delay)

    def _check_group(self, group):
        check_number("lookahead", group["lookahead"], "in [0, 1]", lambda v: 0 <= v <= 1)

    def _update(self, group, params, grads, bufs):
        lam = group["lookahead"]
        gamma = lookahead_coefficient(group["momentum"], self.staleness)
        momentum_step(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],
                      weight_decay=group["weight_decay"], velocity_scale=1 - lam + lam * gamma, gradient_scale=lam)
