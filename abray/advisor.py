"""The lr advisor: the largest learning rate the quadratic theory calls stable for a model at a given delay.

Delayed SGD with momentum on L(w) = lambda w^2 / 2 is stable while eta * lambda stays below an edge that shrinks
fast with the delay D (3.8 at D = 0, 0.0041 at D = 32 with momentum 0.9; `abray.theory`). A network's sharpest
direction is its top Hessian eigenvalue lambda_max, so the advice is

    lr_max = edge(method, D, momentum) / lambda_max

with lambda_max estimated by power iteration on Hessian-vector products (reverse-over-reverse through
`torch.func`), over a few fixed training batches, at the weights given (a fresh model: its initialisation).
SGDM's edge is exact (the roots of the recurrence); AB's is simulated on one-dimensional quadratics with its real
optimizer (its braking is nonlinear). Networks are not quadratics: the estimate is taken at one point of training
and sharpness changes as training goes, so treat the advice as an order of magnitude and check it
(benchmarks/task_suite.py measures how often it holds).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .optim.absgd import DEFAULT_CLIP_FACTOR, DEFAULT_RHO, DEFAULT_RHO_RAMP, braking_strength
from .optim.staleness import check_delay
from .theory import max_stable_eta_lambda, max_stable_eta_lambda_simulated
from .training.config import TrainConfig
from .training.data import DataSplit, batch_indices, collate

BRAKING_METHODS = ("ab", "ab_lwp")  # advised with AB's edge


@dataclass(frozen=True)
class Advice:
    """The largest stable learning rates for SGDM and AB at one delay, for a model whose top Hessian eigenvalue
    is `top_eigenvalue`."""

    top_eigenvalue: float
    delay: int
    momentum: float
    rho: float
    rho_ramp: float
    clip_factor: bool
    sgdm_edge: float  # the largest stable eta * lambda
    ab_edge: float

    @property
    def sgdm_lr(self) -> float:
        return self.sgdm_edge / self.top_eigenvalue

    @property
    def ab_lr(self) -> float:
        return self.ab_edge / self.top_eigenvalue

    def lr_for(self, optimizer: str) -> Optional[float]:
        """The advised lr for a method of the registry: SGDM's for sgdm, AB's for the braking methods, None for
        the other peers (each has its own edge: `abray.theory.max_stable_eta_lambda_simulated`)."""
        return self.ab_lr if optimizer in BRAKING_METHODS else self.sgdm_lr if optimizer == "sgdm" else None

    def lines(self) -> list[str]:
        return [
            f"top Hessian eigenvalue: {self.top_eigenvalue:.4g}",
            f"largest stable lr at delay {self.delay}, momentum {self.momentum:g} (quadratic theory):",
            f"  SGDM: {self.sgdm_lr:.3g}  (eta*lambda < {self.sgdm_edge:.3g})",
            f"  AB (rho {self.rho:g}, rho_ramp {self.rho_ramp:g}{', factor clipped at 0' if self.clip_factor else ''}):"
            f" {self.ab_lr:.3g}  (eta*lambda < {self.ab_edge:.3g})",
        ]


def _training_loss_model(model: nn.Module) -> nn.Module:
    """A copy of `model` whose loss is the training loss and which changes nothing when called: BatchNorm uses
    batch statistics without updating running ones, dropout is off (so the loss is a function of the weights)."""
    model = copy.deepcopy(model).train()
    torch.func.replace_all_batch_norm_modules_(model)
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
    return model


def top_hessian_eigenvalue(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, iterations: int = 50,
                           tol: float = 1e-3, seed: int = 0, loss_fn: Callable = F.cross_entropy) -> float:
    """The largest eigenvalue of the Hessian of the mean loss over `batches` (each an (inputs, targets) pair;
    `loss_fn(outputs, targets)`, cross-entropy by default) with respect to `model`'s parameters, by power iteration
    on Hessian-vector products.

    Stops when the estimate changes by less than `tol` (relative) or after `iterations` products. If the
    dominant eigenvalue is negative, a second iteration on H + |lambda| I finds the largest one.
    """
    if not batches:
        raise ValueError("need at least one batch")
    model = _training_loss_model(model)
    names = [n for n, _ in model.named_parameters()]
    weights = tuple(p.detach() for _, p in model.named_parameters())
    buffers = {n: b for n, b in model.named_buffers()}

    def loss(ws, x, y):
        return loss_fn(torch.func.functional_call(model, ({**dict(zip(names, ws)), **buffers}), (x,)), y)

    gradient = torch.func.grad(loss)

    def directional(ws, vector, x, y):  # <grad L(ws), vector>, whose gradient is H(ws) vector
        return sum((g * v).sum() for g, v in zip(gradient(ws, x, y), vector))

    hessian_times = torch.func.grad(directional)

    def hvp(vector):
        total = [torch.zeros_like(w) for w in weights]
        # Reverse over reverse: forward-mode derivatives of some backward ops (mse_loss's, fused attention's) are
        # missing or wrong in torch; double backward through the math attention kernel is not.
        with sdpa_kernel(SDPBackend.MATH):
            for x, y in batches:
                product = hessian_times(weights, tuple(vector), x, y)
                total = [t + p / len(batches) for t, p in zip(total, product)]
        return total

    generator = torch.Generator().manual_seed(seed)
    start = [torch.randn(w.shape, generator=generator).to(w) for w in weights]
    top = _power_iteration(hvp, start, iterations, tol, shift=0.0)
    if top < 0:
        top = _power_iteration(hvp, start, iterations, tol, shift=-top) + top
    return top


def _power_iteration(hvp, vector, iterations: int, tol: float, shift: float) -> float:
    """The dominant eigenvalue of (H + shift I) from the start `vector`."""
    vector = _normalised(vector)
    estimate = math.nan
    for _ in range(iterations):
        product = [h + shift * v for h, v in zip(hvp(vector), vector)]
        new = float(sum((h * v).sum() for h, v in zip(product, vector)))
        vector = _normalised(product)
        if abs(new - estimate) <= tol * abs(new):
            return new
        estimate = new
    return estimate


def _normalised(vector: list[Tensor]) -> list[Tensor]:
    norm = math.sqrt(float(sum((v * v).sum() for v in vector)))
    if not norm > 0:
        raise ValueError("the Hessian-vector product vanished: the loss is flat here")
    return [v / norm for v in vector]


AB_EDGE_STEPS = 1000  # updates after which the simulated quadratic must be below its start


@functools.lru_cache(maxsize=256)
def stable_edges(delay: int, momentum: float, rho: float, rho_ramp: float, clip_factor: bool) -> tuple[float, float]:
    """(SGDM's, AB's) largest stable eta * lambda at `delay` on one-dimensional quadratics. AB's is simulated with
    its real optimizer (`max_stable_eta_lambda_simulated`): AB_EDGE_STEPS updates from w0 = 1 must end below the
    start, at every point of the theory's grid up to it. With the factor clipped, the stable region has holes
    and slow transients, so fewer updates give a smaller, more cautious edge."""
    check_delay(delay)
    sgdm = max_stable_eta_lambda(momentum, delay)
    if braking_strength(rho, delay, rho_ramp) == 0:  # nothing stale enough to brake: AB is SGDM
        return sgdm, sgdm
    ab = max_stable_eta_lambda_simulated("ab", delay, momentum=momentum, rho=rho, rho_ramp=rho_ramp,
                                         clip_factor=clip_factor, steps=AB_EDGE_STEPS)
    return sgdm, ab


def advise(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], *, delay: int, momentum: float = 0.9,
           rho: float = DEFAULT_RHO, rho_ramp: float = DEFAULT_RHO_RAMP, clip_factor: bool = DEFAULT_CLIP_FACTOR,
           iterations: int = 50, seed: int = 0, loss_fn: Callable = F.cross_entropy) -> Advice:
    """The advice for `model` at its current weights, from its top Hessian eigenvalue on `batches`."""
    top = top_hessian_eigenvalue(model, batches, iterations=iterations, seed=seed, loss_fn=loss_fn)
    if not top > 0:
        raise ValueError(f"the top Hessian eigenvalue is {top:.3g}: no curvature to advise from")
    sgdm, ab = stable_edges(check_delay(delay), float(momentum), float(rho), float(rho_ramp), bool(clip_factor))
    return Advice(top, delay, momentum, rho, rho_ramp, clip_factor, sgdm, ab)


def advise_config(config: TrainConfig, data: Optional[DataSplit] = None, *, batches: int = 8,
                  iterations: int = 50) -> Advice:
    """The advice for a run's config: its model as initialised by its seed, on the first `batches` training
    batches of its first epoch, at its delay, momentum, rho and rho_ramp."""
    from .training.build import load_data
    from .training.models import build_model

    data = data if data is not None else load_data(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_classes).to(config.device)
    chosen = batch_indices(len(data.train), config.batch_size, config.seed, 0)[:batches]
    xy = [tuple(t.to(config.device) for t in collate(data.train, idx)) for idx in chosen]
    return advise(model, xy, delay=config.delay, momentum=config.momentum, rho=config.rho, rho_ramp=config.rho_ramp,
                  clip_factor=config.clip_factor, iterations=iterations, seed=config.seed)


FAR_BELOW = 4.0  # warn when the configured lr is this many times the advised one
ADVICE_MAX_WEIGHTS = 5_000_000  # `abray train` advises by itself only below this size (the estimate costs HVPs)


def delay_warning(config: TrainConfig, advice: Advice) -> Optional[str]:
    """A warning when the config's lr is more than FAR_BELOW times the advised lr of its method at its delay."""
    advised = advice.lr_for(config.optimizer)
    if advised is None or config.delay == 0 or config.lr <= FAR_BELOW * advised:
        return None
    return (f"at delay {config.delay} the quadratic theory's largest stable lr for {config.optimizer} on this model "
            f"is {advised:.3g} (top Hessian eigenvalue {advice.top_eigenvalue:.3g} at initialisation), "
            f"{config.lr / advised:.0f}x below the configured lr {config.lr:g}: expect the run to diverge or stall "
            f"unless the model has normalization layers (docs/when-ab-works.md); `abray advise` prints the advice")
