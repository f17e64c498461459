"""Braking against a plain-Python reference (lists of floats, no torch), with velocities that are partly missing: a
tensor without a momentum buffer yet (a parameter that got its first gradient later than the others) has v = 0, so
it is never braked, yet its gradient still counts in the global ||g||. Both kernel paths (single-tensor and
foreach) must agree with the reference, through `cosines`, `brake`, `absgd` and `ABSGD`."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abray.optim import ABSGD, absgd, brake, cosines

EPS = 1e-8


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def sign(x):
    return (x > 0) - (x < 0)


def reference_cosines(grads, velocities, granularity, eps=EPS):
    """c for each gradient (a list per coordinate for "element"); a missing velocity gives c = 0."""
    if granularity == "element":
        return [[0.0] * len(g) if v is None else [float(sign(x * y)) for x, y in zip(g, v)]
                for g, v in zip(grads, velocities)]
    if granularity == "tensor":
        return [0.0 if v is None else dot(g, v) / (math.sqrt(dot(g, g)) * math.sqrt(dot(v, v)) + eps)
                for g, v in zip(grads, velocities)]
    with_velocity = [(g, v) for g, v in zip(grads, velocities) if v is not None]
    gg = sum(dot(g, g) for g in grads)  # every gradient, with a velocity or not
    vv = sum(dot(v, v) for _, v in with_velocity)
    c = sum(dot(g, v) for g, v in with_velocity) / (math.sqrt(gg) * math.sqrt(vv) + eps)
    return [0.0 if v is None else c for v in velocities]


def reference_braked(grads, velocities, rho, granularity):
    out = []
    for g, c in zip(grads, reference_cosines(grads, velocities, granularity)):
        cs = c if granularity == "element" else [c] * len(g)
        out.append([(1 - rho * ci) * x for x, ci in zip(g, cs)])
    return out


def reference_step(weights, grads, velocities, *, lr, momentum, weight_decay, nesterov, rho, granularity):
    """One AB-SGDM step as the module docstring of abray.optim.functional writes it; returns (weights, velocities)."""
    grads = [[x + weight_decay * w for x, w in zip(g, ws)] for g, ws in zip(grads, weights)]
    braked = reference_braked(grads, velocities, rho, granularity)
    new_w, new_v = [], []
    for ws, g, b, v in zip(weights, grads, braked, velocities):
        v = list(g) if v is None else [momentum * y + x for x, y in zip(b, v)]  # a new buffer: the gradient as is
        step = [x + momentum * y for x, y in zip(b, v)] if nesterov else v
        new_w.append([w - lr * s for w, s in zip(ws, step)])
        new_v.append(v)
    return new_w, new_v


# two tensors: the first has a velocity, the second none yet
G = [[2.0, 0.0], [0.0, 3.0]]
V = [[1.0, 0.0], None]


def tensors(values):
    return [None if v is None else torch.tensor(v, dtype=torch.float64) for v in values]


@pytest.mark.parametrize("foreach", [False, True])
def test_the_global_norm_of_g_counts_a_gradient_whose_velocity_is_missing(foreach):
    # <g, v> = 2 over the first tensor; ||g|| = sqrt(4 + 9) over both; ||v|| = 1
    c = cosines(tensors(G), tensors(V), "global", eps=0.0, foreach=foreach)
    assert float(c[0]) == pytest.approx(2 / math.sqrt(13), rel=1e-12) and float(c[1]) == 0.0
    braked = brake(tensors(G), tensors(V), rho=0.5, granularity="global", eps=0.0, foreach=foreach)
    assert braked[0].tolist() == pytest.approx([2 * (1 - 1 / math.sqrt(13)), 0.0], rel=1e-12)
    assert braked[1].tolist() == [0.0, 3.0]  # no velocity: not braked


@pytest.mark.parametrize("granularity", ["global", "tensor", "element"])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 0.0), (False, 0.1), (True, 0.1)])
def test_one_step_with_a_velocity_missing_matches_the_reference(granularity, foreach, nesterov, weight_decay):
    weights = [[1.0, 1.0], [1.0, -2.0]]
    hyper = dict(lr=0.1, momentum=0.5, weight_decay=weight_decay, nesterov=nesterov, rho=0.5, granularity=granularity)
    expected_w, expected_v = reference_step(weights, G, V, **hyper)

    params = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in weights]
    opt = ABSGD(params, eps=EPS, foreach=foreach, **hyper)
    opt.state[params[0]]["momentum_buffer"] = torch.tensor(V[0], dtype=torch.float64)
    for p, g in zip(params, G):
        p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    for p, w, v in zip(params, expected_w, expected_v):
        assert p.tolist() == pytest.approx(w, rel=1e-12, abs=1e-15)
        assert opt.state[p]["momentum_buffer"].tolist() == pytest.approx(v, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("foreach", [False, True])
def test_the_functional_kernel_writes_the_new_buffer_back_and_leaves_the_gradients_alone(foreach):
    params = [torch.tensor([1.0, 1.0], dtype=torch.float64), torch.tensor([1.0, -2.0], dtype=torch.float64)]
    grads, bufs = tensors(G), tensors(V)
    absgd(params, grads, bufs, lr=0.1, momentum=0.5, weight_decay=0.0, nesterov=False, rho=0.5,
          granularity="global", eps=EPS, foreach=foreach)
    expected_w, expected_v = reference_step([[1.0, 1.0], [1.0, -2.0]], G, V, lr=0.1, momentum=0.5, weight_decay=0.0,
                                            nesterov=False, rho=0.5, granularity="global")
    assert [b.tolist() for b in bufs] == [pytest.approx(v, rel=1e-12) for v in expected_v]
    assert [p.tolist() for p in params] == [pytest.approx(w, rel=1e-12) for w in expected_w]
    assert [g.tolist() for g in grads] == G


@pytest.mark.parametrize("foreach", [False, True])
def test_several_steps_of_a_model_whose_layers_start_at_different_times_match_the_reference(foreach):
    # the second tensor gets its first gradient at the second step (a frozen-then-unfrozen layer)
    weights = [[0.5, -1.0, 2.0], [1.0, 1.0]]
    grads_per_step = [[[1.0, 2.0, -1.0], None], [[0.5, -1.0, 1.0], [2.0, -1.0]], [[1.0, 1.0, 1.0], [-1.0, 3.0]]]
    hyper = dict(lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=False, rho=0.8, granularity="global")
    params = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in weights]
    opt = ABSGD(params, eps=EPS, foreach=foreach, **hyper)
    velocities = [None, None]
    for grads in grads_per_step:
        live = [i for i, g in enumerate(grads) if g is not None]
        new_w, new_v = reference_step([weights[i] for i in live], [grads[i] for i in live],
                                      [velocities[i] for i in live], **hyper)
        for i, w, v in zip(live, new_w, new_v):
            weights[i], velocities[i] = w, v
        for p, g in zip(params, grads):
            p.grad = None if g is None else torch.tensor(g, dtype=torch.float64)
        opt.step()
        for p, w in zip(params, weights):
            assert p.tolist() == pytest.approx(w, rel=1e-12, abs=1e-15)


finite = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(1, 4), k=st.integers(2, 4), rho=st.floats(0.0, 2.0),
       granularity=st.sampled_from(["tensor", "global", "element"]), foreach=st.booleans())
def test_property_braking_with_some_velocities_missing_matches_the_reference(data, n, k, rho, granularity, foreach):
    grads = [data.draw(st.lists(finite, min_size=n, max_size=n)) for _ in range(k)]
    missing = data.draw(st.lists(st.booleans(), min_size=k, max_size=k))
    velocities = [None if gone else data.draw(st.lists(finite, min_size=n, max_size=n)) for gone in missing]
    braked = brake(tensors(grads), tensors(velocities), rho=rho, granularity=granularity, eps=EPS, foreach=foreach)
    for out, expected in zip(braked, reference_braked(grads, velocities, rho, granularity)):
        assert out.tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)
