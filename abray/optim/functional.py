"""Functional AB-SGDM kernels: the one home of the update rule.

`ABSGD`, the delay simulator, the quadratic theory and the parameter server all call `absgd` here, so
there is exactly one implementation of the arithmetic.

The update, at a step that receives gradient g (possibly computed on stale weights) for weights w
with momentum buffer v (v = 0 before the first step):

    g <- g + weight_decay * w                     weight decay, on the current weights
    c  = <g, v> / (||g|| ||v|| + eps)             cosine of gradient and velocity
    g <- (1 - rho * c) * g                        braking (clip: max(0, 1 - rho * c), so g is stopped, never reversed)
    v <- momentum * v + g
    w <- w - lr * v                               (nesterov: w <- w - lr * (g + momentum * v))

Each line is a transformation of the gradient given state (optax-style); `brake` below states the braking
alone. Without braking (rho = 0 or momentum = 0) both paths run exactly the arithmetic of
`torch.optim.SGD` with dampening 0, op for op, so rho = 0 reproduces torch's SGD bit for bit.

The sums behind the cosine (<g, v>, ||g||^2, ||v||^2) accumulate in at least float32 whatever the
parameters' dtype: in float16, ||g|| ||v|| passes 65504 at modest gradients and eps = 1e-8 rounds to 0.

Two paths, chosen by `foreach` as in `torch/optim/sgd.py`:

- single-tensor (`foreach=False`): a Python loop over tensors that reads each tensor's sums back as
  Python floats; the plain reference implementation (on an accelerator every read-back is a sync).
- multi-tensor (`foreach=True`, the default): never reads a value back to the host. Tensors of up to
  `flat_max_numel(device)` elements are stepped together as a *flat block*: their velocities live as
  views in one (rows, ROW) buffer, each tensor padded to whole rows, so every reduction and update is one
  kernel for all of them (row sums, then `segment_reduce` over each tensor's rows) instead of one per
  tensor. Larger tensors are stepped one at a time, each finished while still in cache (on CPU their sums
  are read back: free there). docs/optimizer-step.md has the measurements behind the thresholds.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

GRANULARITIES = ("tensor", "global", "element")

# Width of a row of the flat block. Each tensor is padded to whole rows (zeros, which no update moves), so a
# tensor's sums are the sums of its rows; 128 keeps the padding under 0.1% on ResNets.
ROW = 128
# Tensors up to this many elements go in the flat block. On CPU a larger tensor is cheaper one at a time (the
# launch cost is amortised and g, v, w are reused from cache); on an accelerator, launches dominate up to much
# larger tensors, and the flat block's one extra copy of the gradient is cheap there.
FLAT_MAX_NUMEL_CPU = 1 << 16
FLAT_MAX_NUMEL_ACCELERATOR = 1 << 22

Factor = Union[float, Tensor]


def _default_foreach(tensors: list[Tensor]) -> bool:
    # The multi-tensor path is the faster one on every device (docs/optimizer-step.md); TorchScript cannot run it.
    return bool(tensors) and not torch.jit.is_scripting()


def flat_max_numel(device: torch.device) -> int:
    """The largest tensor the multi-tensor path steps in its flat block on `device`."""
    if torch.compiler.is_compiling():
        return 0  # the flat block keeps buffers between steps; under torch.compile the compiler does the fusing
    return FLAT_MAX_NUMEL_CPU if device.type == "cpu" else FLAT_MAX_NUMEL_ACCELERATOR


def _sum_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _cosine(dot, gg, vv, eps: float):
    """c from the sums <g, v>, ||g||^2, ||v||^2; Python floats or tensors alike."""
    return dot / (gg ** 0.5 * vv ** 0.5 + eps)


def _pair_sums(g: Tensor, v: Optional[Tensor]) -> Tensor:
    """(<g, v>, ||g||^2, ||v||^2) of one tensor as a tensor of 3 in at least float32; v = None counts as 0."""
    # Three BLAS dots, not dot and vector_norm: on CPU, alternating BLAS calls with ATen's own parallel reductions
    # makes the two thread pools wait on each other (a step 5x slower on ResNet-50 with 2 threads).
    g = g.reshape(-1).to(_sum_dtype(g.dtype))
    gg = torch.dot(g, g)
    if v is None:
        return torch.stack([gg.new_zeros(()), gg, gg.new_zeros(())])
    v = v.reshape(-1).to(g.dtype)
    return torch.stack([torch.dot(g, v), gg, torch.dot(v, v)])


def _element_signs(g: Tensor, v: Tensor) -> Tensor:
    # sign(g) sign(v), not sign(g * v): in float16 the product of two small values underflows to 0.
    return torch.sign(g) * torch.sign(v)


# ---- the flat block --------------------------------------------------------------------------------------

class _Layout(NamedTuple):
    offsets: tuple[int, ...]  # first element of each tensor in the flat buffer, a multiple of ROW
    row_counts: tuple[int, ...]  # rows of each tensor
    rows: int


@functools.lru_cache(maxsize=64)
def _layout(numels: tuple[int, ...]) -> _Layout:
    row_counts = tuple(-(-n // ROW) for n in numels)
    offsets = tuple(itertools.accumulate((r * ROW for r in row_counts[:-1]), initial=0))
    return _Layout(offsets, row_counts, sum(row_counts))


def _views(buffer: Tensor, like: list[Tensor], offsets: tuple[int, ...]) -> list[Tensor]:
    flat = buffer.view(-1)
    return [flat[o:o + t.numel()].view(t.shape) for t, o in zip(like, offsets)]


class _Workspace(NamedTuple):
    grads: Tensor  # (rows, ROW): the gradients, copied in each step; its padding stays 0
    grad_views: list[Tensor]
    # (rows, ROW) in at least float32, for the product g * v. Kept on CPU, where a fresh buffer of a megabyte
    # costs more in page faults than the whole reduction; an accelerator's caching allocator makes it free.
    scratch: Optional[Tensor]
    row_owner: Tensor  # (rows,): the tensor each row belongs to
    row_counts: Tensor  # (tensors,)


# Velocity buffer -> its workspace. Keyed by the buffer's identity and dropped with it; the workspace holds
# no reference to the buffer. Device tensors live here, not in `_layout`'s cache, so that a step under
# FakeTensorMode (or on another device) never meets tensors made elsewhere.
_WORKSPACES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _make_workspace(params: list[Tensor], layout: _Layout) -> _Workspace:
    p = params[0]
    grads = p.new_zeros(layout.rows, ROW)
    scratch = grads.new_empty(grads.shape, dtype=_sum_dtype(p.dtype)) if p.device.type == "cpu" else None
    counts = torch.tensor(layout.row_counts, device=p.device)
    owner = torch.repeat_interleave(torch.arange(len(params), device=p.device), counts, output_size=layout.rows)
    return _Workspace(grads, _views(grads, params, layout.offsets), scratch, owner, counts)


def _is_block_velocity(base: Optional[Tensor], bufs: list[Optional[Tensor]], layout: _Layout, like: Tensor) -> bool:
    """Whether `bufs` are the views into `base`, one of ours, laid out as `layout` on like's device and dtype."""
    return (base is not None and base in _WORKSPACES and base.shape == (layout.rows, ROW)
            and base.device == like.device and base.dtype == like.dtype
            and all(b is not None and b._base is base and b.storage_offset() == o
                    for b, o in zip(bufs, layout.offsets)))


def _block_sums(grads: Tensor, velocities: Tensor, row_counts: Tensor, scratch: Optional[Tensor] = None) -> Tensor:
    """(tensors, 3): each tensor's <g, v>, ||g||^2, ||v||^2, summed over its rows in at least float32."""
    dtype = _sum_dtype(grads.dtype)
    if scratch is None:
        scratch = grads.new_empty(grads.shape, dtype=dtype)
    if grads.dtype == dtype:
        torch.mul(grads, velocities, out=scratch)
    else:  # multiply in float32: a float16 product underflows or overflows
        scratch.copy_(grads).mul_(velocities)
    per_row = torch.stack([scratch.sum(1), torch.linalg.vector_norm(grads, dim=1, dtype=dtype),
                           torch.linalg.vector_norm(velocities, dim=1, dtype=dtype)], 1)
    per_row[:, 1:].square_()
    # unsafe: the lengths are right by construction, and checking them would read them back (a sync)
    return torch.segment_reduce(per_row, "sum", lengths=row_counts, axis=0, unsafe=True)


class _FlatBlock:
    """The small tensors of one device and dtype, stepped as rows of two (rows, ROW) buffers."""

    def __init__(self, params: list[Tensor], grads: list[Tensor], bufs: list[Optional[Tensor]], weight_decay: float,
                 numels: tuple[int, ...]):
        layout = _layout(numels)
        self.params = params
        self.with_velocity = [b is not None for b in bufs]
        base = bufs[0]._base if bufs[0] is not None else None
        self.adopted = not _is_block_velocity(base, bufs, layout, params[0])
        if not self.adopted:
            self.velocity, self.velocity_views = base, bufs
        else:  # first step, or buffers from a state dict: adopt them (one copy); a missing one starts at 0
            self.velocity = params[0].new_zeros(layout.rows, ROW)
            self.velocity_views = _views(self.velocity, params, layout.offsets)
            for view, b in zip(self.velocity_views, bufs):
                if b is not None:
                    view.copy_(b)
            _WORKSPACES[self.velocity] = _make_workspace(params, layout)
        self.work = _WORKSPACES[self.velocity]
        torch._foreach_copy_(self.work.grad_views, grads)
        if weight_decay != 0:
            torch._foreach_add_(self.work.grad_views, params, alpha=weight_decay)

    def sums(self) -> Tensor:
        return _block_sums(self.work.grads, self.velocity, self.work.row_counts, self.work.scratch)

    def step(self, factors: Tensor, *, lr: float, momentum: float, nesterov: bool) -> None:
        """factors: one per tensor, or one for all; a zero velocity gets v = factor * g, so the caller gives
        those tensors factor 1 (as c = 0 does) and v = g, as in torch's SGD."""
        v, g = self.velocity, self.work.grads
        # (rows, 1) or (1,): dimensioned, so type promotion computes in float32 for half tensors
        factors = factors.index_select(0, self.work.row_owner).unsqueeze(1) if factors.dim() else factors.reshape(1)
        v.mul_(momentum).addcmul_(g, factors.to(_sum_dtype(g.dtype)))
        self._update(lr=lr, momentum=momentum, nesterov=nesterov, braked=factors)

    def step_element(self, rho: float, *, lr: float, momentum: float, nesterov: bool,
                     stats: Optional[dict]) -> None:
        """Per coordinate, g <- g - rho |g| sign(v)."""
        v, g = self.velocity, self.work.grads
        if stats is not None:  # a coordinate without velocity has sign(v) = 0: neither braked nor reversed
            _count(stats, "elements", sum(p.numel() for p, has in zip(self.params, self.with_velocity) if has))
            _count(stats, "reversed_elements", (_element_signs(g, v) > 0).sum() if rho > 1 else 0)
        scratch = self.work.scratch
        signs = torch.sign(v) if scratch is None else scratch.copy_(v).sign_()
        g.addcmul_(g.abs(), signs, value=-rho)
        v.mul_(momentum).add_(g)
        self._update(lr=lr, momentum=momentum, nesterov=nesterov, braked=None)

    def _update(self, *, lr: float, momentum: float, nesterov: bool, braked: Optional[Tensor]) -> None:
        if nesterov:
            g = self.work.grads
            if braked is not None:
                g.mul_(braked)
            g.add_(self.velocity, alpha=momentum)
            torch._foreach_add_(self.params, self.work.grad_views, alpha=-lr)
        else:
            torch._foreach_add_(self.params, self.velocity_views, alpha=-lr)


# ---- one tensor at a time ----------------------------------------------------------------------------------

def _step_tensor(param: Tensor, grad: Tensor, buf: Tensor, factor: Factor, *, lr: float, momentum: float,
                 nesterov: bool) -> None:
    """v <- m v + factor g, then the weight step; factor a Python float or a 0-dim tensor (kept on device)."""
    if isinstance(factor, Tensor):
        factor = factor.reshape(1)  # 1-dim, so type promotion computes in float32 for half tensors
        buf.mul_(momentum).addcmul_(grad, factor)
        braked = grad * factor if nesterov else None
    else:
        buf.mul_(momentum).add_(grad, alpha=factor)
        braked = grad.mul(factor) if nesterov else None
    param.add_(braked.add(buf, alpha=momentum) if nesterov else buf, alpha=-lr)


def _step_tensor_element(param: Tensor, grad: Tensor, buf: Tensor, rho: float, *, lr: float, momentum: float,
                         nesterov: bool) -> None:
    # (1 - rho sign(g v)) g = g - rho |g| sign(v): three passes instead of five.
    grad = grad.addcmul(grad.abs(), torch.sign(buf), value=-rho)
    buf.mul_(momentum).add_(grad)
    param.add_(grad.add(buf, alpha=momentum) if nesterov else buf, alpha=-lr)


def _clipped(factor: Factor, clip: bool) -> Factor:
    """The braking factor 1 - rho c, with `clip` at least 0: a gradient aligned with the velocity (c > 1 / rho)
    is stopped rather than reversed."""
    if not clip:
        return factor
    return factor.clamp_min(0) if isinstance(factor, Tensor) else max(factor, 0.0)


def _count(stats: Optional[dict], key: str, value) -> None:
    if stats is None:
        return
    if isinstance(value, Tensor) and value.device.type == "cpu" and not torch.compiler.is_compiling():
        value = int(value)  # free on CPU; elsewhere the count stays on the device (no sync)
    stats[key] = stats.get(key, 0) + value


def _count_element_reversals(stats: Optional[dict], grad: Tensor, buf: Tensor, rho: float) -> None:
    if stats is not None:
        _count(stats, "elements", grad.numel())
        _count(stats, "reversed_elements", (_element_signs(grad, buf) > 0).sum() if rho > 1 else 0)


# ---- the cosines and the braking, as functions of their own ------------------------------------------------

def cosines(
    grads: list[Tensor],
    velocities: list[Optional[Tensor]],
    granularity: str = "tensor",
    eps: float = 1e-8,
    foreach: bool = False,
) -> list[Tensor]:
    """The alignment c of each gradient with its velocity, as the braking uses it.

    Returns one tensor per gradient: a 0-dim cosine (in at least float32) for "tensor" (per tensor) and
    "global" (one cosine over all tensors, repeated), and sign(g * v) elementwise for "element". A velocity
    of None (no momentum buffer yet) counts as zero: c = 0, so the gradient is left unscaled. `foreach`
    computes the sums as the multi-tensor kernel does (in a flat block), otherwise one tensor at a time.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if granularity == "element":
        return [torch.zeros_like(g) if v is None else _element_signs(g, v) for g, v in zip(grads, velocities)]
    if not grads:
        return []
    sums = _flat_sums(grads, velocities) if foreach else [_pair_sums(g, v) for g, v in zip(grads, velocities)]
    if granularity == "global":
        c = _cosine(*_sum_on_first_device(sums), eps)
        # one cosine for every tensor that has a velocity; one without has none to align with (c = 0)
        return [c.new_zeros((), device=g.device) if v is None else c.to(g.device) for g, v in zip(grads, velocities)]
    return [_cosine(*s, eps) for s in sums]


def _flat_sums(grads: list[Tensor], velocities: list[Optional[Tensor]]) -> list[Tensor]:
    """Each tensor's sums through `_block_sums`, the multi-tensor kernel's reduction, on copies."""
    out: list[Optional[Tensor]] = [None] * len(grads)
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype([grads, velocities], with_indices=True)
    for (device_grads, device_vels), indices in grouped.values():
        layout = _layout(tuple(g.numel() for g in device_grads))
        g_buf, v_buf = (device_grads[0].new_zeros(layout.rows, ROW) for _ in range(2))
        for buf, tensors in ((g_buf, device_grads), (v_buf, device_vels)):
            for view, t in zip(_views(buf, device_grads, layout.offsets), tensors):
                if t is not None:
                    view.copy_(t)
        counts = torch.tensor(layout.row_counts, device=g_buf.device)
        for i, s in zip(indices, _block_sums(g_buf, v_buf, counts).unbind(0)):
            out[i] = s
    return out


def brake(
    grads: list[Tensor],
    velocities: list[Optional[Tensor]],
    *,
    rho: float,
    granularity: str = "tensor",
    eps: float = 1e-8,
    clip: bool = False,
    foreach: bool = False,
) -> list[Tensor]:
    """Adaptive braking as a gradient transformation: g <- (1 - rho * c) * g, the factor at least 0 with `clip`
    (tensor and global granularity; "element" is never clipped). Returns new tensors."""
    if granularity == "element":
        # (1 - rho*sign(g v)) g = g - rho |g| sign(v)
        return [g.clone() if v is None else g.addcmul(g.abs(), torch.sign(v), value=-rho)
                for g, v in zip(grads, velocities)]
    c = cosines(grads, velocities, granularity, eps, foreach)
    return [g * _clipped(1 - rho * ci, clip) for g, ci in zip(grads, c)]


# ---- the kernel -----------------------------------------------------------------------------------------------

def absgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Optional[Tensor]],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
    rho: float,
    granularity: str,
    eps: float,
    clip: bool = False,
    foreach: Optional[bool] = None,
    stats: Optional[dict] = None,
) -> None:
    """One AB-SGDM step, in place on `params`; new momentum buffers are written into `momentum_buffers`.

    `grads` are not modified. A buffer of None means "no velocity yet" (v = 0): as in torch's SGD it
    is created as a copy of the (decayed) gradient, and the braking leaves that gradient unscaled. The
    multi-tensor path may also replace buffers (with views into its flat block): store them all back.

    `clip` clips the factor 1 - rho * c at 0 (tensor and global granularity): a gradient aligned with the
    velocity (c > 1 / rho) is stopped rather than reversed. Element granularity is never clipped: sign(g v)
    does not fade as the velocity decays, so a stopped coordinate could stay stopped for good.

    `stats`, when given a dict, receives running counts: for "tensor" and "global" granularity,
    `stats["tensors"]` += the tensors braked (those with a velocity) and `stats["reversed"]` += those whose
    factor 1 - rho * c was below 0 (before any clipping); for "element", `stats["elements"]` and `stats["reversed_elements"]`
    count coordinates instead. Counts are ints, or 0-dim tensors on an accelerator (no sync): `int()` them
    when reporting. With `stats=None` nothing is counted.
    """
    if foreach is None:
        foreach = _default_foreach(params)
    if torch.compiler.is_compiling():
        foreach = True  # the single-tensor path reads scalars back to Python, which breaks graphs
    fn = _multi_tensor_absgd if foreach else _single_tensor_absgd
    fn(
        params,
        grads,
        momentum_buffers,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        nesterov=nesterov,
        rho=rho,
        granularity=granularity,
        eps=eps,
        clip=clip,
        stats=stats,
    )


def _count_unbraked(stats: Optional[dict], granularity: str) -> None:
    for key in ("elements", "reversed_elements") if granularity == "element" else ("tensors", "reversed"):
        _count(stats, key, 0)


def _single_tensor_absgd(params, grads, momentum_buffers, *, lr, momentum, weight_decay, nesterov, rho,
                         granularity, eps, clip, stats):
    # Everything for one tensor happens before the next, so g, v and w are read while still in cache,
    # and the braking factor is a Python float folded into the momentum update (no braked copy of g).
    braking = rho != 0 and momentum != 0
    if not braking:
        _count_unbraked(stats, granularity)
    if weight_decay != 0:
        grads = [g.add(p, alpha=weight_decay) for g, p in zip(grads, params)]
    if braking and granularity == "global":
        totals = [0.0, 0.0, 0.0]  # summed as Python floats: float64 across tensors
        for g, v in zip(grads, momentum_buffers):
            totals = [t + s for t, s in zip(totals, _pair_sums(g, v).tolist())]
        global_factor = 1.0 - rho * _cosine(*totals, eps)
    for i, param in enumerate(params):
        grad = grads[i]
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffers[i] = buf
            elif not braking:
                buf.mul_(momentum).add_(grad)
            elif granularity == "element":
                _count_element_reversals(stats, grad, buf, rho)
                _step_tensor_element(param, grad, buf, rho, lr=lr, momentum=momentum, nesterov=nesterov)
                continue
            else:
                factor = global_factor if granularity == "global" else 1.0 - rho * _cosine(
                    *_pair_sums(grad, buf).tolist(), eps)
                _count(stats, "tensors", 1)
                _count(stats, "reversed", int(factor < 0))
                _step_tensor(param, grad, buf, _clipped(factor, clip), lr=lr, momentum=momentum, nesterov=nesterov)
                continue
            if nesterov:
                grad = grad.add(buf, alpha=momentum)
            else:
                grad = buf
        param.add_(grad, alpha=-lr)


def _multi_tensor_sgd(params, grads, momentum_buffers, *, lr, momentum, weight_decay, nesterov):
    """torch.optim.SGD's foreach arithmetic (dampening 0), op for op."""
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffers], with_indices=True
    )
    for (device_params, device_grads, device_bufs), indices in grouped.values():
        if weight_decay != 0:
            device_grads = torch._foreach_add(device_grads, device_params, alpha=weight_decay)
        if momentum != 0:
            if all(b is not None for b in device_bufs):
                bufs = device_bufs
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, device_grads)
            else:
                bufs = []
                for i, b in enumerate(device_bufs):
                    if b is None:
                        b = torch.clone(device_grads[i]).detach()
                        momentum_buffers[indices[i]] = b
                    else:
                        b.mul_(momentum).add_(device_grads[i])
                    bufs.append(b)
            if nesterov:
                device_grads = torch._foreach_add(device_grads, bufs, alpha=momentum)
            else:
                device_grads = bufs
        torch._foreach_add_(device_params, device_grads, alpha=-lr)


class _LargeTensor(NamedTuple):
    param: Tensor
    grad: Tensor  # weight decay applied
    buf: Tensor
    fresh: bool  # its buffer was just created as a copy of grad (v = 0 before): stepped unbraked, as by SGD

    def step_fresh(self, *, lr: float, momentum: float, nesterov: bool) -> None:
        self.param.add_(self.grad.add(self.buf, alpha=momentum) if nesterov else self.buf, alpha=-lr)


def _multi_tensor_absgd(params, grads, momentum_buffers, *, lr, momentum, weight_decay, nesterov, rho,
                        granularity, eps, clip, stats):
    if not params:
        return
    if rho == 0 or momentum == 0:
        _count_unbraked(stats, granularity)
        _multi_tensor_sgd(params, grads, momentum_buffers, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov)
        return
    hyper = dict(lr=lr, momentum=momentum, nesterov=nesterov)
    grouped = torch.optim.Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffers], with_indices=True
    )
    parts = []  # (flat block or None, large tensors) per device and dtype
    for (device_params, device_grads, device_bufs), indices in grouped.values():
        limit = flat_max_numel(device_params[0].device)
        numels = [p.numel() for p in device_params]
        small = range(len(numels)) if max(numels) <= limit else [i for i, n in enumerate(numels) if n <= limit]
        block = None
        if len(small) == len(numels):
            block = _FlatBlock(device_params, device_grads, device_bufs, weight_decay, tuple(numels))
        elif small:
            block = _FlatBlock([device_params[i] for i in small], [device_grads[i] for i in small],
                               [device_bufs[i] for i in small], weight_decay, tuple(numels[i] for i in small))
        if block is not None and block.adopted:
            for i, view in zip(small, block.velocity_views):
                momentum_buffers[indices[i]] = view
        large = []
        for i, (p, g, b) in enumerate(zip(device_params, device_grads, device_bufs)):
            if numels[i] > limit:
                if weight_decay != 0:
                    g = g.add(p, alpha=weight_decay)
                fresh = b is None
                if fresh:
                    b = torch.clone(g).detach()
                    momentum_buffers[indices[i]] = b
                large.append(_LargeTensor(p, g, b, fresh))
        parts.append((block, large))

    for _, large in parts:
        for t in large:
            if t.fresh:
                t.step_fresh(**hyper)
    if granularity == "element":
        for block, large in parts:
            if block is not None:
                block.step_element(rho, stats=stats, **hyper)
            for t in large:
                if not t.fresh:
                    _count_element_reversals(stats, t.grad, t.buf, rho)
                    _step_tensor_element(t.param, t.grad, t.buf, rho, **hyper)
        return
    if granularity == "global":
        _global_step(parts, rho, eps, clip, stats, hyper)
        return
    for block, large in parts:
        if block is not None:
            factors = 1 - rho * _cosine(*block.sums().unbind(1), eps)
            if stats is not None:  # a tensor without velocity has factor 1: never reversed
                _count(stats, "tensors", sum(block.with_velocity))
                _count(stats, "reversed", (factors < 0).sum())
            block.step(_clipped(factors, clip), **hyper)
        for t in large:
            if t.fresh:
                continue
            factor = 1 - rho * _cosine(*_read_back_on_cpu(_pair_sums(t.grad, t.buf)), eps)
            if stats is not None:
                _count(stats, "tensors", 1)
                _count(stats, "reversed", factor < 0)
            _step_tensor(t.param, t.grad, t.buf, _clipped(factor, clip), **hyper)


def _read_back_on_cpu(t: Tensor):
    """`t` as Python floats where that is free (CPU, not compiling): float arithmetic beats tiny tensor ops."""
    return t.tolist() if t.device.type == "cpu" and not torch.compiler.is_compiling() else t


def _global_step(parts, rho: float, eps: float, clip: bool, stats: Optional[dict], hyper: dict) -> None:
    """One cosine over every tensor, whatever device or dtype it is on: each device's sums are added on the
    first one's, and the factor sent back."""
    partial = []
    for block, large in parts:
        if block is not None:
            partial.append(block.sums().sum(0))
        # a fresh tensor's velocity counts as 0 (its buffer holds g already), but its gradient counts in ||g||
        partial.extend(_pair_sums(t.grad, None if t.fresh else t.buf) for t in large)
    factor = 1 - rho * _cosine(*_sum_on_first_device(partial), eps)
    if stats is not None:
        braked = sum(sum(block.with_velocity) if block is not None else 0 for block, _ in parts)
        braked += sum(not t.fresh for _, large in parts for t in large)
        _count(stats, "tensors", braked)
        _count(stats, "reversed", (factor < 0) * braked)
    factor = _clipped(factor, clip)
    for block, large in parts:
        if block is not None:
            on_device = factor.to(block.velocity.device)
            if not all(block.with_velocity):  # a tensor without velocity keeps its gradient unscaled (c = 0): v = g
                has = torch.tensor(block.with_velocity, device=on_device.device)
                on_device = torch.where(has, on_device, torch.ones_like(on_device))
            block.step(on_device, **hyper)
        for t in large:
            if not t.fresh:
                _step_tensor(t.param, t.grad, t.buf, _read_back_on_cpu(factor.to(t.buf.device)), **hyper)


def _sum_on_first_device(partial: list[Tensor]) -> Tensor:
    """The sum of tensors of 3 that may sit on several devices and dtypes, on the first one's device."""
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in partial))
    return torch.stack([s.to(partial[0].device, dtype) for s in partial]).sum(0)
