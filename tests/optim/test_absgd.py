import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from abray.optim import ABSGD, DEFAULT_RHO, brake, braking_strength, cosines
from abray.optim.functional import FLAT_MAX_NUMEL_CPU


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train(model, opt, steps, seed=1, scheduler=None):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=gen)
        y = torch.randn(16, 3, generator=gen)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def same_weights(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (False, 1e-2), (True, 0.0), (True, 1e-2)])
def test_rho_zero_is_torch_sgd_bit_for_bit(foreach, nesterov, weight_decay):
    a, b = make_model(), make_model()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov, foreach=foreach)
    train(a, ABSGD(a.parameters(), rho=0.0, **kw), 120)
    train(b, torch.optim.SGD(b.parameters(), **kw), 120)
    assert same_weights(a, b)


@pytest.mark.parametrize("foreach", [False, True])
def test_braking_changes_the_trajectory(foreach):
    a, b = make_model(), make_model()
    train(a, ABSGD(a.parameters(), lr=0.05, rho=1.0, foreach=foreach), 20)
    train(b, torch.optim.SGD(b.parameters(), lr=0.05, momentum=0.9), 20)
    assert not same_weights(a, b)


@pytest.mark.parametrize("granularity", ["tensor", "global", "element"])
# rho 2 stops many gradients with the default clipping: 74 (tensor) and 32 (global) in these 60 steps
@pytest.mark.parametrize("rho,nesterov,weight_decay", [(1.5, False, 0.0), (1.5, True, 1e-2), (2.0, False, 1e-2)])
def test_foreach_and_single_tensor_paths_agree(granularity, rho, nesterov, weight_decay):
    a, b = make_model(), make_model()
    kw = dict(lr=0.05, rho=rho, granularity=granularity, nesterov=nesterov, weight_decay=weight_decay)
    train(a, ABSGD(a.parameters(), foreach=False, **kw), 60)
    train(b, ABSGD(b.parameters(), foreach=True, **kw), 60)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_one_step_by_hand():
    # w = (1, 2), v = (1, 0), g = (2, 0) after weight decay: c = 1, factor 1 - rho.
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = ABSGD([w], lr=0.1, momentum=0.5, rho=0.25, weight_decay=0.0)
    opt.state[w]["momentum_buffer"] = torch.tensor([1.0, 0.0])
    w.grad = torch.tensor([2.0, 0.0])
    opt.step()
    # g' = 0.75 * (2, 0) = (1.5, 0); v = 0.5 * (1, 0) + g' = (2, 0); w = (1, 2) - 0.1 * (2, 0)
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, 2.0]))


def test_opposing_gradient_is_amplified_and_nesterov_uses_braked_gradient():
    w = torch.tensor([0.0], requires_grad=True)
    opt = ABSGD([w], lr=1.0, momentum=0.5, rho=1.0, nesterov=True)
    opt.state[w]["momentum_buffer"] = torch.tensor([2.0])
    w.grad = torch.tensor([-1.0])  # c = -1: factor 2, g' = -2
    opt.step()
    # v = 0.5 * 2 - 2 = -1; nesterov step g' + m v = -2 - 0.5 = -2.5
    torch.testing.assert_close(w.detach(), torch.tensor([2.5]))


def test_global_and_element_granularity_by_hand():
    g = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])]
    v = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, -1.0])]
    # global: <g, v> = 1 - 3 = -2, ||g|| = sqrt(10), ||v|| = sqrt(2)
    c = cosines(g, v, "global", eps=0.0)
    expected = -2 / (10 ** 0.5 * 2 ** 0.5)
    assert all(abs(float(ci) - expected) < 1e-6 for ci in c)
    el = brake(g, v, rho=0.5, granularity="element")
    torch.testing.assert_close(el[0], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(el[1], torch.tensor([0.0, 4.5]))


def test_state_dict_round_trip_resumes_exactly():
    full, part = make_model(), make_model()
    kw = dict(lr=0.05, rho=DEFAULT_RHO, weight_decay=1e-3, nesterov=True)
    opt_full = ABSGD(full.parameters(), **kw)
    train(full, opt_full, 30, seed=1)
    train(full, opt_full, 30, seed=2)

    opt_part = ABSGD(part.parameters(), **kw)
    train(part, opt_part, 30, seed=1)
    saved_model, saved_opt = copy.deepcopy(part.state_dict()), copy.deepcopy(opt_part.state_dict())

    resumed = make_model(seed=99)
    resumed.load_state_dict(saved_model)
    opt_resumed = ABSGD(resumed.parameters(), lr=1.0)  # hyperparameters come back from the state dict
    opt_resumed.load_state_dict(saved_opt)
    assert opt_resumed.param_groups[0]["rho"] == DEFAULT_RHO
    train(resumed, opt_resumed, 30, seed=2)
    assert same_weights(full, resumed)


def test_works_under_lr_schedulers_including_momentum_cycling():
    # OneCycleLR changes both lr and momentum every step; rho = 0 must still be torch's SGD exactly.
    a, b = make_model(), make_model()
    oa = ABSGD(a.parameters(), lr=0.1, rho=0.0)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    sa = torch.optim.lr_scheduler.OneCycleLR(oa, max_lr=0.2, total_steps=50)
    sb = torch.optim.lr_scheduler.OneCycleLR(ob, max_lr=0.2, total_steps=50)
    train(a, oa, 50, scheduler=sa)
    train(b, ob, 50, scheduler=sb)
    assert same_weights(a, b)
    assert oa.param_groups[0]["lr"] == pytest.approx(ob.param_groups[0]["lr"])


def test_lr_schedule_is_applied_with_braking():
    model = make_model()
    opt = ABSGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step >= 5 else 1.0)
    train(model, opt, 5, scheduler=sched)
    frozen = copy.deepcopy(model)
    train(model, opt, 5, scheduler=sched)  # lr is 0 now: weights must not move
    assert same_weights(model, frozen)


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    model = make_model()
    opt = ABSGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    before = copy.deepcopy(model)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and loss.item() > 0
    assert not same_weights(model, before)


def test_parameter_groups_have_their_own_hyperparameters():
    # Two independent models in one optimizer: group 0 unbraked, group 1 braked per element.
    a, b = torch.nn.ModuleList([make_model(0), make_model(1)]), torch.nn.ModuleList([make_model(0), make_model(1)])
    opt = ABSGD([{"params": a[0].parameters(), "rho": 0.0},
                 {"params": a[1].parameters(), "rho": 3.0, "granularity": "element", "lr": 0.02}], lr=0.05)
    ref = torch.optim.SGD([{"params": b[0].parameters()}, {"params": b[1].parameters(), "lr": 0.02}],
                          lr=0.05, momentum=0.9)
    for model, optimizer in ((a, opt), (b, ref)):
        gen = torch.Generator().manual_seed(1)
        for _ in range(40):
            x, y = torch.randn(16, 6, generator=gen), torch.randn(16, 3, generator=gen)
            optimizer.zero_grad()
            (torch.nn.functional.mse_loss(model[0](x), y) + torch.nn.functional.mse_loss(model[1](x), y)).backward()
            optimizer.step()
    assert same_weights(a[0], b[0])
    assert not same_weights(a[1], b[1])
    assert opt.param_groups[1]["granularity"] == "element" and opt.param_groups[1]["lr"] == 0.02


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(lr=-0.1), r"lr must be >= 0"),
        (dict(rho=-1.0), r"rho must be >= 0"),
        (dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
        (dict(granularity="layer"), r"granularity must be one of 'tensor', 'global', 'element'"),
        (dict(nesterov=True, momentum=0.0), r"nesterov=True requires momentum in \(0, 1\)"),
        (dict(weight_decay=-1e-4), r"weight_decay must be >= 0"),
        (dict(eps=0.0), r"eps must be > 0"),
        (dict(lr=float("inf")), r"lr must be >= 0 and finite, got inf"),
        (dict(lr=None), r"lr must be >= 0 and finite, got None"),
        (dict(lr="0.1"), r"lr must be >= 0 and finite, got '0.1'"),
        (dict(rho=float("inf")), r"rho must be >= 0 and finite, got inf"),
        (dict(rho=float("nan")), r"rho must be >= 0 and finite, got nan"),
        (dict(rho_ramp=float("inf")), r"rho_ramp must be >= 0 and finite, got inf"),
        (dict(momentum=float("nan")), r"momentum must be in \[0, 1\), got nan"),
        (dict(lr=10**400), r"lr must be >= 0 and finite"),
        (dict(lr=True), r"lr must be >= 0 and finite, got True"),
        (dict(lr=torch.tensor([0.1])), r"lr must be >= 0 and finite"),  # torch's SGD takes a 0-d tensor only
        (dict(weight_decay=torch.tensor(0.1)), r"weight_decay must be >= 0 and finite"),
        (dict(nesterov="yes"), r"nesterov must be True or False, got 'yes'"),
    ],
)
def test_invalid_hyperparameters_name_the_parameter_and_range(kwargs, match):
    params = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match=match):
        ABSGD(params, **{"lr": 0.1, **kwargs})


def test_invalid_hyperparameters_in_a_param_group_are_rejected():
    with pytest.raises(ValueError, match="rho must be >= 0"):
        ABSGD([{"params": [torch.zeros(2, requires_grad=True)], "rho": -2.0}], lr=0.1)


def test_a_refused_param_group_is_not_kept():
    opt = ABSGD([torch.zeros(2, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0 and finite, got inf"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": float("inf")})
    assert len(opt.param_groups) == 1


def test_numpy_scalars_and_a_0d_tensor_lr_are_numbers_like_any_other():
    w = torch.zeros(2, requires_grad=True)
    opt = ABSGD([w], lr=np.float32(0.1), momentum=np.float64(0.9), rho=np.int64(1), rho_ramp=np.float16(2.0))
    w.grad = torch.ones(2)
    opt.step()
    assert torch.allclose(w.detach(), torch.full((2,), -0.1))
    assert ABSGD([w], lr=torch.tensor(0.1)).param_groups[0]["lr"].item() == pytest.approx(0.1)


def test_params_without_grad_are_skipped_and_grads_not_modified():
    w, unused = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = ABSGD([w, unused], lr=0.1, weight_decay=0.1, nesterov=True)
    for _ in range(3):
        w.grad = torch.full((3,), 0.5)
        opt.step()
        assert torch.equal(w.grad, torch.full((3,), 0.5))
    assert torch.equal(unused, torch.ones(3)) and unused not in opt.state


# ---- property-based invariants -------------------------------------------------------------------

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
finite = st.floats(-10, 10, allow_nan=False, width=32)


def tensors_of(shape, data):
    n = 1
    for s in shape:
        n *= s
    values = data.draw(st.lists(finite, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    shape=shapes,
    lr=st.floats(1e-4, 1.0),
    momentum=st.floats(0.0, 0.99),
    weight_decay=st.sampled_from([0.0, 1e-4, 0.1]),
    nesterov=st.booleans(),
    foreach=st.booleans(),
)
def test_property_rho_zero_equals_sgd(data, shape, lr, momentum, weight_decay, nesterov, foreach):
    nesterov = nesterov and momentum > 0
    w0 = tensors_of(shape, data)
    grads = [tensors_of(shape, data) for _ in range(4)]
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    kw = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, foreach=foreach)
    oa, ob = ABSGD([a], rho=0.0, **kw), torch.optim.SGD([b], **kw)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert torch.equal(a, b)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=shapes, k=st.integers(1, 3), rho=st.floats(0.0, 4.0),
       granularity=st.sampled_from(["tensor", "global", "element"]), foreach=st.booleans())
def test_property_braking_factor_is_one_minus_rho_c_with_c_bounded(data, shape, k, rho, granularity, foreach):
    grads = [tensors_of(shape, data) for _ in range(k)]
    vels = [tensors_of(shape, data) for _ in range(k)]
    c = cosines(grads, vels, granularity, eps=1e-8, foreach=foreach)
    braked = brake(grads, vels, rho=rho, granularity=granularity, eps=1e-8, foreach=foreach)
    for g, v, ci, out in zip(grads, vels, c, braked):
        assert bool((ci.abs() <= 1.0 + 1e-6).all())
        torch.testing.assert_close(out, g * (1 - rho * ci), rtol=1e-5, atol=1e-5)
        if granularity == "element":
            assert set(ci.unique().tolist()) <= {-1.0, 0.0, 1.0}
    if granularity == "global":
        assert all(torch.equal(ci, c[0]) for ci in c)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=shapes, rho=st.floats(0.0, 4.0),
       granularity=st.sampled_from(["tensor", "global", "element"]), foreach=st.booleans(),
       as_none=st.booleans())
def test_property_zero_velocity_leaves_gradient_unscaled(data, shape, rho, granularity, foreach, as_none):
    grads = [tensors_of(shape, data) for _ in range(2)]
    vels = [None if as_none else torch.zeros(shape) for _ in grads]
    braked = brake(grads, vels, rho=rho, granularity=granularity, foreach=foreach)
    assert all(torch.equal(out, g) for out, g in zip(braked, grads))


def test_braking_strength_grows_with_staleness_up_to_rho():
    assert [braking_strength(1.5, s, 4.0) for s in (0, 1, 2, 4, 32)] == [0.0, 0.375, 0.75, 1.5, 1.5]
    assert braking_strength(1.5, None, 4.0) == 1.5  # unknown staleness: full strength
    assert braking_strength(1.5, 0, 0.0) == 1.5  # no ramp: full strength always


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov,weight_decay", [(False, 0.0), (True, 1e-2)])
def test_undelayed_ab_is_torch_sgd_bit_for_bit(foreach, nesterov, weight_decay):
    a, b, c = make_model(), make_model(), make_model()
    kw = dict(lr=0.05, momentum=0.9, weight_decay=weight_decay, nesterov=nesterov, foreach=foreach)
    train(a, ABSGD(a.parameters(), rho=2.0, delay=0, **kw), 120)
    opt = ABSGD(c.parameters(), rho=2.0, delay=7, **kw)
    opt.prepare(staleness=0)  # prepare overrides the delay given at construction
    train(c, opt, 120)
    train(b, torch.optim.SGD(b.parameters(), **kw), 120)
    assert same_weights(a, b) and same_weights(c, b)


@pytest.mark.parametrize("staleness,expected_rho", [(1, 0.375), (3, 1.125), (4, 1.5), (40, 1.5)])
def test_stale_gradients_are_braked_by_the_ramped_strength(staleness, expected_rho):
    a, b = make_model(), make_model()
    train(a, ABSGD(a.parameters(), lr=0.05, rho=1.5, rho_ramp=4.0, delay=staleness), 40)
    train(b, ABSGD(b.parameters(), lr=0.05, rho=expected_rho, rho_ramp=0.0), 40)
    assert same_weights(a, b)


def test_without_delay_or_prepare_ab_brakes_at_full_strength():
    a, b = make_model(), make_model()
    train(a, ABSGD(a.parameters(), lr=0.05, rho=1.5), 40)  # staleness unknown
    train(b, ABSGD(b.parameters(), lr=0.05, rho=1.5, rho_ramp=0.0, delay=0), 40)
    assert same_weights(a, b)


def test_a_state_dict_from_before_the_ramp_and_clipping_keeps_the_papers_ab():
    model = make_model()
    opt = ABSGD(model.parameters(), lr=0.05, rho=1.5)
    train(model, opt, 5)
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        del group["rho_ramp"], group["clip_factor"]
    again = ABSGD(make_model().parameters(), lr=0.05)
    again.load_state_dict(saved)
    assert again.param_groups[0]["rho_ramp"] == 0.0 and again.param_groups[0]["rho"] == 1.5
    assert again.param_groups[0]["clip_factor"] is False


def test_bad_staleness_and_ramp_are_named():
    with pytest.raises(ValueError, match="rho_ramp must be >= 0"):
        ABSGD(make_model().parameters(), lr=0.1, rho_ramp=-1)
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        ABSGD(make_model().parameters(), lr=0.1, delay=-2)
    with pytest.raises(ValueError, match="delay must be an integer >= 0, got 1.5"):
        ABSGD(make_model().parameters(), lr=0.1).prepare(staleness=1.5)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_a_negative_factor_is_clipped_to_zero_and_the_velocity_coasts(foreach, nesterov):
    # Two tensors, velocity (1, 0) each. a: g = (2, 0), c = 1, 1 - 1.5 c < 0: stopped. b: g = (1, 1), c = 1/sqrt(2),
    # factor 1 - 1.5/sqrt(2) = -0.06: stopped too with clipping; c: g = (1, 3), c = 1/sqrt(10): braked, not stopped.
    def run(clip_factor):
        ws = [torch.zeros(2, requires_grad=True) for _ in range(3)]
        opt = ABSGD(ws, lr=0.1, momentum=0.5, rho=1.5, nesterov=nesterov, foreach=foreach, clip_factor=clip_factor)
        for w, g in zip(ws, ([2.0, 0.0], [1.0, 1.0], [1.0, 3.0])):
            opt.state[w]["momentum_buffer"] = torch.tensor([1.0, 0.0])
            w.grad = torch.tensor(g)
        opt.step()
        return [opt.state[w]["momentum_buffer"] for w in ws], [w.detach() for w in ws]

    bufs, ws = run(clip_factor=True)
    torch.testing.assert_close(bufs[0], torch.tensor([0.5, 0.0]))  # m v + 0
    torch.testing.assert_close(bufs[1], torch.tensor([0.5, 0.0]))
    f = 1 - 1.5 / 10 ** 0.5
    torch.testing.assert_close(bufs[2], torch.tensor([0.5 + f, 3 * f]))
    step = [0.5 * b for b in bufs[:2]] if nesterov else bufs[:2]  # nesterov: lr (g' + m v) with g' = 0
    torch.testing.assert_close(ws[0], -0.1 * step[0])
    torch.testing.assert_close(ws[1], -0.1 * step[1])
    unclipped, _ = run(clip_factor=False)
    torch.testing.assert_close(unclipped[0], torch.tensor([0.5 - 1.0, 0.0]))  # factor -0.5 reverses g


def test_clipping_with_weight_decay_stops_the_decayed_gradient_and_global_cosine_stops_all():
    w = torch.tensor([1.0, 0.0], requires_grad=True)
    u = torch.tensor([0.0, 1.0], requires_grad=True)
    opt = ABSGD([w, u], lr=0.1, momentum=0.9, rho=2.0, weight_decay=0.5, granularity="global")
    opt.state[w]["momentum_buffer"] = torch.tensor([1.0, 0.0])
    opt.state[u]["momentum_buffer"] = torch.tensor([0.0, 1.0])
    w.grad, u.grad = torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.5])  # decayed: (1, 0) and (0, 1): c = 1
    opt.step()
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], torch.tensor([0.9, 0.0]))
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.09, 0.0]))
    torch.testing.assert_close(u.detach(), torch.tensor([0.0, 1.0 - 0.09]))


def test_element_granularity_is_not_clipped():
    a, b = make_model(), make_model()
    train(a, ABSGD(a.parameters(), lr=0.05, rho=1.5, granularity="element"), 30)
    train(b, ABSGD(b.parameters(), lr=0.05, rho=1.5, granularity="element", clip_factor=False), 30)
    assert same_weights(a, b)


@pytest.mark.parametrize("numel", [2, FLAT_MAX_NUMEL_CPU + 1])  # in the flat block, and stepped on its own
@pytest.mark.parametrize("granularity", ["tensor", "global"])
@pytest.mark.parametrize("foreach", [False, True])
def test_every_path_of_the_kernel_stops_an_aligned_gradient_when_clipping(numel, granularity, foreach):
    # g = 2 v: c = 1 and 1 - 1.5 c = -0.5, clipped to 0: v <- 0.5 v, w <- w - 0.1 * 0.5 v
    for clip, expected_v in ((True, 0.5), (False, 0.5 - 1.0)):
        w = torch.zeros(numel, requires_grad=True)
        opt = ABSGD([w], lr=0.1, momentum=0.5, rho=1.5, granularity=granularity, foreach=foreach, clip_factor=clip)
        opt.state[w]["momentum_buffer"] = torch.ones(numel)
        w.grad = torch.full((numel,), 2.0)
        opt.step()
        torch.testing.assert_close(opt.state[w]["momentum_buffer"], torch.full((numel,), expected_v))
        torch.testing.assert_close(w.detach(), torch.full((numel,), -0.1 * expected_v))


@pytest.mark.parametrize("clip_factor", [True, False])
def test_braking_counts_tensors_and_negative_factors_before_clipping(clip_factor):
    # velocity (1, 0) each; cosines 1, 1/sqrt(2), 1/sqrt(10): with rho 1.5 the first two factors are negative
    ws = [torch.zeros(2, requires_grad=True) for _ in range(3)]
    fresh = torch.zeros(2, requires_grad=True)  # no velocity yet: not braked
    opt = ABSGD(ws + [fresh], lr=0.1, rho=1.5, clip_factor=clip_factor, track_braking=True)
    for step in range(2):
        for w, g in zip(ws, ([2.0, 0.0], [1.0, 1.0], [1.0, 3.0])):
            opt.state[w]["momentum_buffer"] = torch.tensor([1.0, 0.0])
            w.grad = torch.tensor(g)
        fresh.grad = torch.ones(2)
        opt.state[fresh].pop("momentum_buffer", None)
        opt.step()
    assert opt.reset_braking_stats() == {"tensors": 6, "reversed": 4}
    assert opt.braking_stats == {}
    opt.prepare(staleness=0)  # nothing stale: nothing braked
    opt.step()
    assert opt.reset_braking_stats() == {"tensors": 0, "reversed": 0}


def test_element_braking_counts_coordinates_with_aligned_signs():
    w = torch.zeros(4, requires_grad=True)
    opt = ABSGD([w], lr=0.1, rho=1.5, granularity="element", track_braking=True)
    opt.state[w]["momentum_buffer"] = torch.tensor([1.0, 1.0, -1.0, 0.0])
    w.grad = torch.tensor([2.0, -1.0, -3.0, 5.0])  # g v: +, -, +, 0
    opt.step()
    assert opt.reset_braking_stats() == {"elements": 4, "reversed_elements": 2}
    opt = ABSGD([w], lr=0.1, rho=0.9, granularity="element", track_braking=True)  # rho < 1: never negative
    opt.state[w]["momentum_buffer"] = torch.ones(4)
    w.grad = torch.ones(4)
    opt.step()
    assert opt.reset_braking_stats() == {"elements": 4, "reversed_elements": 0}
