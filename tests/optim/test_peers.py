import math

import pytest
import torch

from abray.optim.methods import METHODS, build_optimizer
from abray.optim.peers import DCASGD, NesterovLookahead, SpikeCompensatedSGD, StalenessAwareSGD, spike_coefficients
from abray.optim.prediction import predicted_weights
from abray.theory import max_stable_eta_lambda, max_stable_eta_lambda_simulated
from abray.training.delayed import DelayedUpdates

# The two-parameter example used throughout: w_now = (1, 2), the gradient g = (2, -1) was computed on
# w_then = (0.5, 1), the velocity is v = (1, 1), m = 0.5, lr = 0.1, staleness D = 2.
W_NOW, W_THEN, G, V = (1.0, 2.0), (0.5, 1.0), (2.0, -1.0), (1.0, 1.0)


def one_step(opt_cls, **kw):
    w = torch.tensor(W_NOW, requires_grad=True)
    opt = opt_cls([w], lr=0.1, momentum=0.5, delay=2, **kw)
    opt.state[w]["momentum_buffer"] = torch.tensor(V)
    opt.prepare(staleness=2, source={w: torch.tensor(W_THEN)})
    w.grad = torch.tensor(G)
    opt.step()
    return w.detach(), opt.state[w]["momentum_buffer"]


def test_dcasgd_by_hand():
    # g + lambda g*g*(w_now - w_then) = (2 + 0.5*4*0.5, -1 + 0.5*1*1) = (3, -0.5); v = (3.5, 0)
    w, v = one_step(DCASGD, dc_lambda=0.5, adaptive=False)
    torch.testing.assert_close(v, torch.tensor([3.5, 0.0]))
    torch.testing.assert_close(w, torch.tensor([0.65, 2.0]))


def test_adaptive_dcasgd_by_hand():
    # first step from MS_0 = 0: MS = (1 - 0.95) g^2 = (0.2, 0.05), lambda = 1 / sqrt(MS + 1e-7);
    # g + lambda g^2 (w_now - w_then) = (2 + 4 * 0.5 / sqrt(0.2 + 1e-7), -1 + 1 * 1 / sqrt(0.05 + 1e-7))
    compensated = [2 + 2 / math.sqrt(0.2 + 1e-7), -1 + 1 / math.sqrt(0.05 + 1e-7)]
    w, v = one_step(DCASGD, dc_lambda=1.0, adaptive=True)
    torch.testing.assert_close(v, torch.tensor([0.5 + compensated[0], 0.5 + compensated[1]]))
    torch.testing.assert_close(w, torch.tensor([1 - 0.1 * (0.5 + compensated[0]), 2 - 0.1 * (0.5 + compensated[1])]))


def test_adaptive_dcasgds_mean_square_follows_its_recurrence_from_zero():
    w = torch.tensor(W_NOW, requires_grad=True)
    opt = DCASGD([w], lr=0.1, momentum=0.5, dc_lambda=1.0, adaptive=True, ms_decay=0.9, delay=2)
    grads = [torch.tensor(G), torch.tensor([1.0, 3.0])]
    expected = torch.zeros(2)
    for g in grads:
        opt.prepare(staleness=2, source={w: torch.tensor(W_THEN)})
        w.grad = g
        opt.step()
        expected = 0.9 * expected + 0.1 * g * g
        torch.testing.assert_close(opt.state[w]["sq_avg"], expected)


def test_staleness_aware_lr_by_hand():
    w, v = one_step(StalenessAwareSGD)
    torch.testing.assert_close(v, torch.tensor([2.5, -0.5]))
    torch.testing.assert_close(w, torch.tensor([1 - 0.25 / 3, 2 + 0.05 / 3]))


def test_spike_compensation_by_hand():
    assert spike_coefficients(0.5, 2) == (0.25, 1.5)
    # w - 0.1 (0.25 (2.5, -0.5) + 1.5 (2, -1)) = (1, 2) - 0.1 (3.625, -1.625)
    w, _ = one_step(SpikeCompensatedSGD)
    torch.testing.assert_close(w, torch.tensor([0.6375, 2.1625]))


def test_spike_compensation_keeps_a_gradients_total_contribution():
    for m, d in [(0.9, 8), (0.5, 3), (0.99, 32)]:
        a, b = spike_coefficients(m, d)
        assert a / (1 - m) + b == pytest.approx(1 / (1 - m))


def test_nesterov_lookahead_by_hand():
    # gamma = 0.5 + 0.25 + 0.125 = 0.875; full look-ahead: g + gamma v = (4.1875, -1.4375)
    w, _ = one_step(NesterovLookahead, lookahead=1.0)
    torch.testing.assert_close(w, torch.tensor([1 - 0.41875, 2 + 0.14375]))
    # half: 0.9375 v + 0.5 g = (3.34375, -0.96875)
    w, _ = one_step(NesterovLookahead, lookahead=0.5)
    torch.testing.assert_close(w, torch.tensor([1 - 0.334375, 2 + 0.096875]))


def test_linear_weight_prediction_by_hand():
    w = torch.tensor(W_NOW, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.5)
    assert torch.equal(predicted_weights(opt, [w], 2)[0], w.detach())  # no velocity yet
    opt.state[w]["momentum_buffer"] = torch.tensor(V)
    torch.testing.assert_close(predicted_weights(opt, [w], 2)[0], torch.tensor([0.8, 1.8]))


def regression_run(method, delay, steps=60, **hp):
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32)
    w = torch.zeros(3, requires_grad=True)
    opt = build_optimizer(method, [w], delay, lr=0.05, momentum=0.9, weight_decay=1e-3, **hp)
    updates = DelayedUpdates([w], opt, delay, predict=METHODS[method].predicts)
    for _ in range(steps):
        stale = updates.stale()[0].detach().requires_grad_()
        loss = ((x @ stale - y) ** 2).mean()
        updates.apply(torch.autograd.grad(loss, [stale]))
    return w.detach()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_is_sgdm_at_delay_zero(method):
    kw = {"lookahead": 0.0} if method == "nesterov_lookahead" else {}  # Nesterov at D = 0 otherwise
    if method.startswith("ab"):
        kw["rho"] = 0.0
    assert torch.equal(regression_run(method, 0, **kw), regression_run("sgdm", 0))


@pytest.mark.parametrize("method,strength", [("dcasgd", {"dc_lambda": 0.0}), ("ab", {"rho": 0.0}),
                                             ("nesterov_lookahead", {"lookahead": 0.0})])
def test_strength_zero_is_sgdm_at_any_delay(method, strength):
    assert torch.equal(regression_run(method, 4, **strength), regression_run("sgdm", 4))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "sgdm"])
def test_every_method_changes_the_delayed_trajectory(method):
    assert not torch.equal(regression_run(method, 4), regression_run("sgdm", 4))


def test_prediction_puts_predicted_weights_in_the_ring():
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    updates = DelayedUpdates([w], opt, delay=1, predict=True)
    updates.apply([torch.ones(2)])  # v = 1, w = -0.1
    expected = w.detach() - 0.1 * 1 * opt.state[w]["momentum_buffer"]
    updates.apply([torch.ones(2)])
    torch.testing.assert_close(updates.stale()[0], expected)  # version 1, as predicted


@pytest.mark.parametrize(
    "cls,kw,match",
    [
        (DCASGD, {"dc_lambda": -1.0}, "dc_lambda must be >= 0"),
        (DCASGD, {"dc_lambda": float("inf")}, "dc_lambda must be >= 0 and finite, got inf"),
        (StalenessAwareSGD, {"lr": None}, "lr must be >= 0 and finite, got None"),
        (DCASGD, {"adaptive": None}, "adaptive must be True or False, got None"),
        (DCASGD, {"ms_decay": 1.0}, r"ms_decay must be in \[0, 1\)"),
        (NesterovLookahead, {"lookahead": 1.5}, r"lookahead must be in \[0, 1\]"),
        (SpikeCompensatedSGD, {"delay": -2}, "delay must be an integer >= 0"),
        (StalenessAwareSGD, {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        (StalenessAwareSGD, {"lr": -0.1}, "lr must be >= 0"),
    ],
)
def test_invalid_hyperparameters(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([torch.zeros(1, requires_grad=True)], **{"lr": 0.1, **kw})


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="optimizer must be one of sgdm, ab, dcasgd"):
        build_optimizer("adamw", [torch.zeros(1, requires_grad=True)], 0, lr=0.1, momentum=0.9)


def test_quadratic_verdict_for_sgdm_matches_the_theory():
    analytic = max_stable_eta_lambda(0.9, 8)
    simulated = max_stable_eta_lambda_simulated("sgdm", 8, steps=2000)
    assert analytic / 1.1 < simulated <= analytic * 1.1
