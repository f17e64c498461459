"""Delayed SGD with momentum on the quadratic L(w) = lambda * w**2 / 2.

With heavy-ball momentum m (torch's convention, v <- m v + g, w <- w - eta v) and a gradient computed
on the weights of D updates ago, the weights follow the linear recurrence

    w[t+1] = (1 + m) w[t] - m w[t-1] - a w[t-D],      a = eta * lambda,

whose characteristic polynomial is z^D (z - 1)(z - m) + a z. It is stable when every root lies inside
the unit circle; `spectral_radius` is the largest root's modulus, taken as the largest eigenvalue of
the recurrence's companion matrix. Adaptive braking (and DC-ASGD) make the dynamics nonlinear, so
`simulate_quadratic` runs any method's real optimizer on many independent quadratics at once.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .optim.methods import METHODS, build_optimizer
from .optim.staleness import check_delay
from .training.delayed import DelayedUpdates


def companion_matrix(eta_lambda: float, momentum: float, delay: int) -> np.ndarray:
    """Companion matrix of the recurrence above, acting on (w[t], w[t-1], ..., w[t-n+1])."""
    check_delay(delay)
    n = max(delay, 1) + 1
    coeffs = np.zeros(n)
    coeffs[0] += 1.0 + momentum
    coeffs[1] -= momentum
    coeffs[delay] -= eta_lambda
    matrix = np.zeros((n, n))
    matrix[0] = coeffs
    matrix[1:, :-1] = np.eye(n - 1)
    return matrix


def spectral_radius(eta_lambda: float, momentum: float, delay: int) -> float:
    """Largest |root| of z^D (z-1)(z-m) + eta_lambda z: per-step growth (> 1) or decay (< 1) of |w|."""
    return float(np.max(np.abs(np.linalg.eigvals(companion_matrix(eta_lambda, momentum, delay)))))


def max_stable_eta_lambda(momentum: float, delay: int, tol: float = 1e-10) -> float:
    """Largest eta * lambda for which delayed SGDM on the quadratic converges.

    Scans a geometric grid for the first unstable value, then bisects; the stable set is (0, answer).
    With D = 0 this is 2 (1 + m).
    """
    check_delay(delay)
    grid = np.geomspace(1e-7, 4.0 * (1.0 + momentum), 600)
    stable = [spectral_radius(a, momentum, delay) < 1.0 for a in grid]
    if all(stable):
        raise RuntimeError("no unstable eta*lambda found on the grid")
    first = stable.index(False)
    if first == 0:
        return 0.0
    lo, hi = float(grid[first - 1]), float(grid[first])
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if spectral_radius(mid, momentum, delay) < 1.0:
            lo = mid
        else:
            hi = mid
    return lo


def simulate_quadratic(
    curvatures,
    *,
    lr: float,
    delay: int,
    steps: int,
    optimizer: str = "ab",
    momentum: float = 0.9,
    w0=1.0,
    seed: Optional[int] = None,
    **hyperparameters,
) -> np.ndarray:
    """Train independent quadratics at a fixed delay with the method `optimizer`; return their losses.

    `curvatures` of shape (P,) gives P one-dimensional problems; of shape (P, N), P problems with
    diagonal Hessians diag(curvatures[p]). Each problem is its own parameter tensor, so problems never share
    a cosine ("tensor" and "global" granularity both take it over one problem's N coordinates: for "global"
    each problem gets a parameter group of its own). The updates go through `DelayedUpdates` and the real optimizer of the
    method (`abray.optim.methods`), exactly as in the simulator. Other keyword arguments (rho, granularity,
    nesterov, weight_decay, dc_lambda, lookahead) go to the method. Starting weights are `w0` (a scalar
    or an array of the same shape), or standard normal draws when `seed` is given. Returns the losses
    sum_i lambda_i w_i^2 / 2, shape (steps + 1, P), in float64; a problem that overflows shows inf or nan.
    """
    check_delay(delay)
    lam = torch.as_tensor(np.asarray(curvatures, dtype=np.float64))
    if lam.dim() == 1:
        lam = lam[:, None]
    if lam.dim() != 2:
        raise ValueError(f"curvatures must have shape (P,) or (P, N), got {tuple(lam.shape)}")
    if seed is not None:
        w = torch.randn(lam.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    else:
        w = torch.as_tensor(np.broadcast_to(np.asarray(w0, dtype=np.float64), lam.shape).copy())
    params = [torch.nn.Parameter(row.clone()) for row in w]
    # Only AB's global granularity couples the tensors of a group (one cosine over all of them): then each problem
    # gets a group of its own. Otherwise one group holds them all, which the multi-tensor kernel steps at once.
    coupled = hyperparameters.get("granularity") == "global"
    groups = [{"params": [p]} for p in params] if coupled else [{"params": params}]
    opt = build_optimizer(optimizer, groups, delay, lr=lr, momentum=momentum, **hyperparameters)
    updates = DelayedUpdates(params, opt, delay, predict=METHODS[optimizer].predicts)
    losses = np.empty((steps + 1, lam.shape[0]))
    with torch.no_grad():
        current = torch.stack([p.data for p in params])
        losses[0] = (0.5 * lam * current * current).sum(1).numpy()
        for t in range(steps):
            updates.apply([l_p * w_p for l_p, w_p in zip(lam, updates.stale())])
            current = torch.stack([p.data for p in params])
            losses[t + 1] = (0.5 * lam * current * current).sum(1).numpy()
    return losses


def max_stable_eta_lambda_simulated(optimizer: str, delay: int, *, momentum: float = 0.9, steps: int = 3000,
                                    grid=None, **hyperparameters) -> float:
    """The quadratic verdict for any method: the largest eta*lambda on `grid` up to which every grid point,
    from the smallest, ends `steps` updates below its starting loss (w0 = 1, lr = 1, lambda = eta*lambda).

    For SGDM this approaches `max_stable_eta_lambda` from below (to the grid's resolution); for nonlinear
    methods (AB, DC-ASGD) it is the empirical edge of the region where training makes progress.
    """
    grid = np.geomspace(1e-4, 4.0, 121) if grid is None else np.asarray(grid)
    losses = simulate_quadratic(grid, lr=1.0, delay=delay, steps=steps, optimizer=optimizer, momentum=momentum,
                                **hyperparameters)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(losses[-1]) & (losses[-1] < losses[0])
    if not ok[0]:
        return 0.0
    first_bad = int(np.argmin(ok)) if not ok.all() else len(grid)
    return float(grid[first_bad - 1])


def growth_rate(losses: np.ndarray, window: int) -> np.ndarray:
    """Per-step growth factor of |w| over the last `window` steps of a loss trajectory (losses ~ |w|^2)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(losses[-1]) - np.log(losses[-1 - window])
    return np.exp(ratio / (2.0 * window))


__all__ = [
    "companion_matrix",
    "growth_rate",
    "max_stable_eta_lambda",
    "max_stable_eta_lambda_simulated",
    "simulate_quadratic",
    "spectral_radius",
]
