"""The kernel's numerics and machinery: half precision, several devices, the flat block, braking counts.

Expected values come from `reference_step`, the update rule written out in float64 from its definition
(abray.optim.functional's docstring), independent of the kernel's code paths.
"""

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from abray.optim import ABSGD, absgd, cosines
from abray.optim.functional import (FLAT_MAX_NUMEL_ACCELERATOR, FLAT_MAX_NUMEL_CPU, brake,
                                    flat_max_numel)

PATHS = [pytest.param(False, id="single-tensor"), pytest.param(True, id="foreach")]
GRANULARITIES = ["tensor", "global", "element"]


def reference_step(ws, gs, vs, *, lr, momentum, rho, granularity, eps=1e-8, weight_decay=0.0, nesterov=False):
    """One AB-SGDM step in float64 from the definition; returns new (weights, velocities)."""
    ws = [w.double() for w in ws]
    gs = [g.double() + weight_decay * w for g, w in zip(gs, ws)]
    vs = [torch.zeros_like(g) if v is None else v.double() for g, v in zip(gs, vs)]
    if granularity == "element":
        cs = [torch.sign(g * v) for g, v in zip(gs, vs)]
    elif granularity == "global":
        dot = sum(float((g * v).sum()) for g, v in zip(gs, vs))
        gn = math.sqrt(sum(float((g * g).sum()) for g in gs))
        vn = math.sqrt(sum(float((v * v).sum()) for v in vs))
        cs = [dot / (gn * vn + eps)] * len(gs)
    else:
        cs = [float((g * v).sum()) / (float(g.norm()) * float(v.norm()) + eps) for g, v in zip(gs, vs)]
    braked = [(1 - rho * c) * g for g, c in zip(gs, cs)]
    new_vs = [momentum * v + b for v, b in zip(vs, braked)]
    steps = [b + momentum * v for b, v in zip(braked, new_vs)] if nesterov else new_vs
    return [w - lr * s for w, s in zip(ws, steps)], new_vs


def assert_close_to_reference(params, expected, dtype):
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5, torch.float64: 1e-10}[dtype]
    for p, e in zip(params, expected):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)


# ---- half precision ---------------------------------------------------------------------------------------

def gradient(case, shape, gen, dtype):
    if case == "zero":  # eps is below float16's resolution, so only float32 sums give c = 0 rather than 0/0
        return torch.zeros(shape, dtype=dtype)
    # entries of ~300: ||g|| ||v|| is about 1e7, far above float16's largest value (65504)
    return (300 * torch.randn(shape, generator=gen)).to(dtype)


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["zero", "huge"])
def test_half_precision_steps_with_zero_or_huge_gradients_are_finite_and_exact(case, dtype, granularity, foreach):
    gen = torch.Generator().manual_seed(0)
    shapes = [(100,), (4, 5)]
    params = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in shapes]
    kw = dict(lr=1e-3, momentum=0.9, rho=1.5, granularity=granularity)
    opt = ABSGD(params, foreach=foreach, **kw)
    for p in params:
        p.grad = (300 * torch.randn(p.shape, generator=gen)).to(dtype)
    opt.step()
    before = [p.detach().clone() for p in params]
    velocities = [opt.state[p]["momentum_buffer"].clone() for p in params]
    for p in params:
        p.grad = gradient(case, p.shape, gen, dtype)
    opt.step()
    expected, _ = reference_step(before, [p.grad for p in params], velocities, **kw)
    assert_close_to_reference(params, expected, dtype)


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_cosines_are_summed_in_float32(dtype, foreach):
    # bfloat16 keeps 8 bits: a cosine summed and divided in bfloat16 is off by about 1e-2
    gen = torch.Generator().manual_seed(1)
    g = [torch.randn(1000, generator=gen).to(dtype), torch.randn(7, 3, generator=gen).to(dtype)]
    v = [(0.6 * a.double() + 0.4 * torch.randn(a.shape, generator=gen)).to(dtype) for a in g]
    for granularity in ("tensor", "global"):
        c = cosines(g, v, granularity, eps=1e-8, foreach=foreach)
        if granularity == "tensor":
            exact = [float((a.double() * b.double()).sum() / (a.double().norm() * b.double().norm()))
                     for a, b in zip(g, v)]
        else:
            dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(g, v))
            exact = [dot / math.sqrt(sum(float(a.double().norm()) ** 2 for a in g)
                                     * sum(float(b.double().norm()) ** 2 for b in v))] * 2
        assert [float(ci) for ci in c] == pytest.approx(exact, abs=1e-5)


def test_element_signs_of_tiny_float16_values_do_not_underflow():
    g = torch.tensor([1e-4, -1e-4, 1e-4], dtype=torch.float16)
    v = torch.tensor([1e-4, 1e-4, 0.0], dtype=torch.float16)  # g * v = 1e-8 underflows float16 to 0
    assert cosines([g], [v], "element")[0].tolist() == [1.0, -1.0, 0.0]


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rho_zero_is_torch_sgd_bit_for_bit_in_half_precision(dtype, foreach):
    gen = torch.Generator().manual_seed(2)
    a = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in [(50,), (3, 4)]]
    b = [p.detach().clone().requires_grad_() for p in a]
    kw = dict(lr=0.01, momentum=0.9, weight_decay=1e-3, nesterov=True, foreach=foreach)
    oa, ob = ABSGD(a, rho=0.0, **kw), torch.optim.SGD(b, **kw)
    for _ in range(5):
        for p, q in zip(a, b):
            p.grad = torch.randn(p.shape, generator=gen).to(dtype)
            q.grad = p.grad.clone()
        oa.step()
        ob.step()
    assert all(torch.equal(p, q) for p, q in zip(a, b))


# ---- several devices and dtypes in one group -------------------------------------------------------------

def test_global_granularity_across_dtypes_is_one_cosine():
    # the foreach path sums per device and dtype and adds the partial sums: here three dtypes on CPU
    gen = torch.Generator().manual_seed(3)
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    params = [torch.randn(6, generator=gen).to(d).requires_grad_() for d in dtypes]
    kw = dict(lr=0.1, momentum=0.9, rho=1.5, granularity="global")
    opt = ABSGD(params, foreach=True, **kw)
    for _ in range(2):
        before = [p.detach().clone() for p in params]
        velocities = [opt.state[p].get("momentum_buffer") for p in params]
        velocities = [None if v is None else v.clone() for v in velocities]
        for p in params:
            p.grad = torch.randn(6, generator=gen).to(p.dtype)
        opt.step()
        expected, _ = reference_step(before, [p.grad for p in params], velocities, **kw)
        for p, e in zip(params, expected):
            tol = 1.6e-2 if p.dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(p.detach().double(), e, rtol=tol, atol=tol)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_a_group_spread_over_several_devices_steps_each_tensor_on_its_own_device(granularity):
    # FakeTensorMode carries devices without data (no GPU needed) and raises on any cross-device op,
    # as a real CUDA run would; values are checked by the test above.
    with FakeTensorMode():
        devices = ["cpu", "cuda:0", "cuda:1", "cuda:1"]
        params = [torch.zeros(5, device=d, requires_grad=True) for d in devices]
        opt = ABSGD(params, lr=0.1, granularity=granularity, foreach=True)
        for _ in range(2):  # the first step creates the velocities, the second brakes
            for p in params:
                p.grad = torch.ones(5, device=p.device)
            opt.step()
        assert [str(opt.state[p]["momentum_buffer"].device) for p in params] == devices
        assert [str(p.device) for p in params] == devices


# ---- the flat block ---------------------------------------------------------------------------------------

def mixed_model(seed=0):
    # one weight above FLAT_MAX_NUMEL_CPU (stepped on its own), the rest in the flat block
    torch.manual_seed(seed)
    n = int(math.isqrt(FLAT_MAX_NUMEL_CPU)) + 8
    return torch.nn.Sequential(torch.nn.Linear(n, n), torch.nn.Tanh(), torch.nn.Linear(n, 3))


def train_mixed(model, opt, steps, drop_grad_every=0):
    gen = torch.Generator().manual_seed(5)
    n = model[0].in_features
    for step in range(steps):
        opt.zero_grad()
        x, y = torch.randn(8, n, generator=gen), torch.randn(8, 3, generator=gen)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if drop_grad_every and step % drop_grad_every == 1:
            model[2].bias.grad = None  # a parameter without a gradient this step
        if drop_grad_every and step == 0:
            model[0].weight.grad = None  # the large weight starts its velocity a step after the others
        opt.step()


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_large_and_small_tensors_step_alike_on_both_paths(granularity):
    assert mixed_model()[0].weight.numel() > FLAT_MAX_NUMEL_CPU
    a, b = mixed_model(), mixed_model()
    kw = dict(lr=0.02, rho=1.5, granularity=granularity, nesterov=True, weight_decay=1e-3)
    train_mixed(a, ABSGD(a.parameters(), foreach=False, **kw), 12, drop_grad_every=3)
    train_mixed(b, ABSGD(b.parameters(), foreach=True, **kw), 12, drop_grad_every=3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_a_replaced_momentum_buffer_is_the_one_used():
    a, b = mixed_model(), mixed_model()
    opts = [ABSGD(m.parameters(), lr=0.02, foreach=f) for m, f in ((a, False), (b, True))]
    for model, opt in zip((a, b), opts):
        train_mixed(model, opt, 3)
        opt.state[model[2].weight]["momentum_buffer"] = torch.zeros_like(model[2].weight)  # a new tensor
        opt.state[model[0].bias]["momentum_buffer"].mul_(-1.0)  # changed in place
        train_mixed(model, opt, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_velocities_follow_parameters_cast_to_another_dtype():
    gen = torch.Generator().manual_seed(6)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in [(4,), (2, 3)]]
    kw = dict(lr=0.1, momentum=0.9, rho=1.5, granularity="tensor")
    opt = ABSGD(params, foreach=True, **kw)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    for p in params:  # as model.double() does
        p.data = p.data.double()
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
    before = [p.detach().clone() for p in params]
    velocities = [opt.state[p]["momentum_buffer"].double() for p in params]
    opt.step()
    expected, expected_velocities = reference_step(before, [p.grad for p in params], velocities, **kw)
    assert_close_to_reference(params, expected, torch.float64)
    assert_close_to_reference([opt.state[p]["momentum_buffer"] for p in params], expected_velocities, torch.float64)


def test_zero_size_tensors_are_stepped_with_the_rest():
    params = [torch.ones(0, requires_grad=True), torch.ones(3, requires_grad=True)]
    opt = ABSGD(params, lr=0.1, momentum=0.5, rho=1.0, foreach=True)
    for _ in range(2):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    # step 1: v = 1, w = 1 - 0.1; step 2: c = 1, braked g = 0, v = 0.5, w = 0.9 - 0.05
    torch.testing.assert_close(params[1].detach(), torch.full((3,), 0.85))


# ---- braking counts ------------------------------------------------------------------------------------------

def braking_counts(grads, velocities, *, rho, granularity, foreach):
    params = [torch.zeros_like(g) for g in grads]
    stats = {}
    absgd(params, grads, list(velocities), lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, rho=rho,
          granularity=granularity, eps=1e-8, foreach=foreach, stats=stats)
    return stats


# gradients, velocities ("big": ones of FLAT_MAX_NUMEL_CPU + 1 elements, which the foreach path steps on its own;
# None: no velocity yet), and the counts expected at each rho, worked out by hand
BRAKING_CASES = {
    # c = 1, -1, (no velocity: not braked), 1; factors 1 - rho c at rho 1.5: -0.5, 2.5, -, -0.5; at 0.5: 0.5,
    # 1.5, -, 0.5; rho = 0 brakes nothing
    "tensor": ([[2.0, 0.0], [-1.0, 0.0], [1.0, 1.0], "big"], [[1.0, 0.0], [1.0, 0.0], None, "big"],
               {1.5: {"tensors": 3, "reversed": 2}, 0.5: {"tensors": 3, "reversed": 0},
                0.0: {"tensors": 0, "reversed": 0}}),
    # <g, v> = 3, ||g|| = sqrt 5, ||v|| = sqrt 2: c = 0.9487; factor 1 - rho c < 0 iff rho > 1.054
    "global": ([[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]],
               {1.1: {"tensors": 2, "reversed": 2}, 1.0: {"tensors": 2, "reversed": 0}}),
    # sign(g v) = 1, -1, -1, 0: factors 1 - 1.5 sign = -0.5, 2.5, 2.5, 1; the second tensor has no velocity
    "element": ([[1.0, -2.0, 3.0, 0.0], [5.0]], [[1.0, 1.0, -1.0, 1.0], None],
                {1.5: {"elements": 4, "reversed_elements": 1}, 1.0: {"elements": 4, "reversed_elements": 0}}),
}


def as_tensors(values):
    return [None if v is None else torch.ones(FLAT_MAX_NUMEL_CPU + 1) if v == "big" else torch.tensor(v)
            for v in values]


@pytest.mark.parametrize("foreach", PATHS)
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_braking_counts_by_hand(granularity, foreach):
    grads, velocities, expected = BRAKING_CASES[granularity]
    for rho, counts in expected.items():
        assert braking_counts(as_tensors(grads), as_tensors(velocities), rho=rho, granularity=granularity,
                              foreach=foreach) == counts


@pytest.mark.parametrize("foreach", PATHS)
def test_optimizer_accumulates_braking_counts_until_reset(foreach):
    w = torch.zeros(2, requires_grad=True)
    opt = ABSGD([w], lr=0.1, momentum=0.5, rho=1.5, foreach=foreach, track_braking=True)
    for g in ([1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0]):
        w.grad = torch.tensor(g)
        opt.step()
    # step 1: no velocity, v = (1, 0); step 2: c = 1, factor -0.5 (reversed), v = 0.5 - 0.5 = 0;
    # step 3: c = 0 (v = 0), factor 1, v = (-1, 0); step 4: c = -1, factor 2.5, v = -0.5 + 2.5 = (2, 0)
    assert opt.reset_braking_stats() == {"tensors": 3, "reversed": 1}
    assert opt.braking_stats == {}
    w.grad = torch.tensor([1.0, 0.0])  # c = 1 against v = (2, 0): reversed
    opt.step()
    assert opt.reset_braking_stats() == {"tensors": 1, "reversed": 1}


def test_braking_counts_are_off_by_default():
    w = torch.zeros(2, requires_grad=True)
    opt = ABSGD([w], lr=0.1)
    for _ in range(2):
        w.grad = torch.ones(2)
        opt.step()
    assert opt.braking_stats == {} and opt.reset_braking_stats() == {}


@pytest.mark.parametrize("foreach", PATHS)
def test_global_braking_counts_with_large_tensors_and_missing_velocities_by_hand(foreach):
    n = FLAT_MAX_NUMEL_CPU + 1  # "big": stepped on its own by the foreach path
    # small [2, 0] with v [1, 0]; small [1, 1] without; big ones with v = ones; big without: <g, v> = 2 + n,
    # ||g||^2 = 4 + 2 + 2n, ||v||^2 = 1 + n: c = 0.7071, so rho 1.5 reverses (factor -0.06) and rho 1 does not
    grads, velocities = [[2.0, 0.0], [1.0, 1.0], "big", "big"], [[1.0, 0.0], None, "big", None]
    c = (2 + n) / math.sqrt((6 + 2 * n) * (1 + n))
    assert 1 - 1.5 * c < 0 < 1 - 1.0 * c
    for rho, reversed_ in [(1.5, 2), (1.0, 0)]:  # braked: the two with a velocity
        assert braking_counts(as_tensors(grads), as_tensors(velocities), rho=rho, granularity="global",
                              foreach=foreach) == {"tensors": 2, "reversed": reversed_}
    # only big tensors (no flat block at all), one with a velocity: c = n / sqrt(2n * n)
    assert braking_counts(as_tensors(["big", "big"]), as_tensors(["big", None]), rho=1.5, granularity="global",
                          foreach=foreach) == {"tensors": 1, "reversed": 1}


@pytest.mark.parametrize("foreach", PATHS)
def test_a_factor_of_exactly_zero_is_not_counted_as_reversed(foreach):
    # g = v: c = 1 exactly with eps 0, so rho 1 gives factor 0, which stops the tensor but does not reverse it
    for granularity in ("tensor", "global"):
        stats = {}
        absgd([torch.zeros(2)], [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 0.0])], lr=0.1, momentum=0.9,
              weight_decay=0.0, nesterov=False, rho=1.0, granularity=granularity, eps=0.0, foreach=foreach,
              stats=stats)
        assert stats == {"tensors": 1, "reversed": 0}, granularity


def test_the_multi_tensor_path_is_the_default():
    # its flat block holds the small tensors' velocities, which become views of one buffer
    def velocities(**kw):
        params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
        opt = ABSGD(params, lr=0.1, rho=0.5, **kw)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        return [opt.state[p]["momentum_buffer"].untyped_storage().data_ptr() for p in params]

    first, second = velocities()
    assert first == second
    first, second = velocities(foreach=True)
    assert first == second
    separate = velocities(foreach=False)
    assert separate[0] != separate[1]


@pytest.mark.parametrize("nesterov", [False, True])
def test_a_factor_kept_on_the_device_steps_like_a_python_float(nesterov):
    # a large tensor on an accelerator gets its factor as a 0-dim tensor; by hand: v = 0.9 * 1 + 0.5 * 2 = 1.9,
    # w = 1 - 0.1 * 1.9, or with Nesterov 1 - 0.1 * (0.5 * 2 + 0.9 * 1.9)
    from abray.optim.functional import _step_tensor

    expected = 1 - 0.1 * ((0.5 * 2 + 0.9 * 1.9) if nesterov else 1.9)
    for factor in (0.5, torch.tensor(0.5)):
        param, buf = torch.ones(3), torch.ones(3)
        _step_tensor(param, torch.full((3,), 2.0), buf, factor, lr=0.1, momentum=0.9, nesterov=nesterov)
        assert buf.tolist() == pytest.approx([1.9] * 3) and param.tolist() == pytest.approx([expected] * 3)


@pytest.mark.parametrize("foreach", PATHS)
def test_without_braking_a_weight_decay_of_one_is_torch_sgd_bit_for_bit(foreach):
    ours, theirs = [torch.tensor([1.0, -2.0], requires_grad=True)], [torch.tensor([1.0, -2.0], requires_grad=True)]
    a = ABSGD(ours, lr=0.1, momentum=0.9, weight_decay=1.0, rho=0.0, foreach=foreach)
    b = torch.optim.SGD(theirs, lr=0.1, momentum=0.9, weight_decay=1.0, foreach=foreach)
    for _ in range(3):
        for p in ours + theirs:
            p.grad = torch.tensor([0.5, 0.25])
        a.step()
        b.step()
    assert torch.equal(ours[0], theirs[0]) and ours[0].tolist() != [1.0, -2.0]


def test_the_functional_helpers_defaults_and_their_refusal():
    g, v = [torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 0.0])]
    assert cosines(g, v)[0].item() == pytest.approx(1.0, abs=1e-7)  # per tensor, eps 1e-8
    assert brake(g, v, rho=0.5)[0].tolist() == pytest.approx([0.5, 0.0], abs=1e-7)
    assert [c.tolist() for c in cosines(g + g, v + [None], "element")] == [[1.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match=r"granularity must be one of \('tensor', 'global', 'element'\), got 'layer'"):
        cosines(g, v, "layer")


@pytest.mark.parametrize("foreach", PATHS)
def test_counts_when_nothing_is_braked_keep_each_granularitys_keys(foreach):
    g, v = [[1.0, -2.0]], [[1.0, 1.0]]
    assert braking_counts(as_tensors(g), as_tensors(v), rho=0.0, granularity="element", foreach=foreach) == {
        "elements": 0, "reversed_elements": 0}
    stats = {}
    absgd([torch.zeros(2)], as_tensors(g), as_tensors(v), lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False,
          rho=1.5, granularity="tensor", eps=1e-8, foreach=foreach, stats=stats)
    assert stats == {"tensors": 0, "reversed": 0}  # no momentum, nothing to brake against


@pytest.mark.parametrize("foreach", PATHS)
def test_large_tensors_are_counted_per_element_and_a_fresh_one_skips_only_itself(foreach):
    n = FLAT_MAX_NUMEL_CPU + 1
    # g = v = ones: sign(g v) = 1 everywhere, so rho 1.5 reverses every element of the one with a velocity
    assert braking_counts(as_tensors(["big", "big"]), as_tensors(["big", None]), rho=1.5, granularity="element",
                          foreach=foreach) == {"elements": n, "reversed_elements": n}
    # per tensor: the fresh one first, then one with a velocity (c = 1, reversed at rho 1.5)
    assert braking_counts(as_tensors(["big", "big"]), as_tensors([None, "big"]), rho=1.5, granularity="tensor",
                          foreach=foreach) == {"tensors": 1, "reversed": 1}
    # on the CPU the counts are Python ints (summed on the tensors they come from, then read back)
    for granularity in GRANULARITIES:
        counts = braking_counts(as_tensors([[1.0, -2.0], "big"]), as_tensors([[1.0, 1.0], "big"]), rho=1.5,
                                granularity=granularity, foreach=foreach)
        assert all(type(v) is int for v in counts.values()), (granularity, counts)


@pytest.mark.parametrize("granularity", ["tensor", "global"])
def test_a_large_tensors_factor_of_exactly_zero_is_not_reversed(granularity):
    g = torch.ones(FLAT_MAX_NUMEL_CPU + 1)
    g[0] = 0.0  # 2^16 ones: ||g||^2 = 65536 = 256^2, so c = 1 exactly for v = g
    stats = {}
    absgd([torch.zeros_like(g)], [g], [g.clone()], lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, rho=1.0,
          granularity=granularity, eps=0.0, foreach=True, stats=stats)
    assert stats == {"tensors": 1, "reversed": 0}


def test_the_flat_blocks_size_limit_depends_on_the_device_and_a_tensor_at_the_limit_is_in_the_block():
    assert flat_max_numel(torch.device("cpu")) == FLAT_MAX_NUMEL_CPU
    assert flat_max_numel(torch.device("meta")) == FLAT_MAX_NUMEL_ACCELERATOR

    def trained(foreach):
        params = [torch.zeros(FLAT_MAX_NUMEL_CPU, requires_grad=True),
                  torch.zeros(FLAT_MAX_NUMEL_CPU + 1, requires_grad=True)]
        opt = ABSGD(params, lr=0.1, rho=0.5, foreach=foreach)
        for _ in range(2):
            for p in params:
                p.grad = torch.ones_like(p)
            opt.step()
        return params, [opt.state[p]["momentum_buffer"] for p in params]

    params, (at_limit, above) = trained(True)
    assert at_limit._base is not None and above._base is None  # a view of the block; a tensor of its own
    for p, q in zip(params, trained(False)[0]):  # and each stepped once per step
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_a_weight_decay_of_one_steps_alike_on_both_paths_for_small_and_large_tensors(granularity):
    def trained(foreach):
        params = [torch.full((3,), 0.5, requires_grad=True), torch.full((FLAT_MAX_NUMEL_CPU + 1,), 0.5,
                                                                        requires_grad=True)]
        opt = ABSGD(params, lr=0.1, rho=0.5, weight_decay=1.0, granularity=granularity, foreach=foreach)
        for step in range(3):
            for p in params:
                p.grad = torch.full_like(p, 0.2 * (-1) ** step)
            opt.step()
        return params

    for p, q in zip(trained(False), trained(True)):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_learning_rate_of_zero_is_taken_and_a_negative_one_refused_even_as_a_tensor():
    w = [torch.zeros(1, requires_grad=True)]
    assert ABSGD(w, lr=0.0).defaults["lr"] == 0.0  # a schedule's warmup may start there
    with pytest.raises(ValueError, match=r"lr must be >= 0 and finite, got tensor\(-0\.1000\)"):
        ABSGD(w, lr=torch.tensor(-0.1))


def test_a_clip_that_is_not_a_bool_and_nesterov_without_momentum_are_refused_by_name():
    w = [torch.zeros(1, requires_grad=True)]
    with pytest.raises(ValueError, match=r"^clip_factor must be True or False, got 'yes'$"):
        ABSGD(w, lr=0.1, clip_factor="yes")
    with pytest.raises(ValueError, match=r"^nesterov=True requires momentum in \(0, 1\), got momentum=0$"):
        ABSGD(w, lr=0.1, momentum=0.0, nesterov=True)


@pytest.mark.parametrize("foreach", PATHS)
def test_the_kernel_does_not_clip_unless_asked(foreach):
    # g = v = [1, 0], rho 1.5: c = 1, factor 1 - 1.5 = -0.5 (reversed); v = 0.9 * 1 - 0.5 * 1 = 0.4
    bufs = [torch.tensor([1.0, 0.0])]
    absgd([torch.zeros(2)], [torch.tensor([1.0, 0.0])], bufs, lr=0.1, momentum=0.9, weight_decay=0.0,
          nesterov=False, rho=1.5, granularity="tensor", eps=0.0, foreach=foreach)
    assert bufs[0].tolist() == pytest.approx([0.4, 0.0])
