import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abray.advisor import Advice, advise, advise_config, delay_warning, stable_edges, top_hessian_eigenvalue
from abray.optim import ABSGD
from abray.theory import max_stable_eta_lambda
from abray.training.config import parse_config
from abray.training.delayed import DelayedUpdates


def regression(seed=0, n=64, d=5):
    """Least squares with a linear model: the loss is an exact quadratic whose Hessian is 2 X^T X / n."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(0.5, 2.0, d, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    return model, x, y


def test_top_eigenvalue_of_least_squares_matches_the_closed_form():
    model, x, y = regression()
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    expected = max(np.linalg.eigvalsh((2 * x.T @ x / 64).numpy()))  # the mean of the two batches' Hessians
    found = top_hessian_eigenvalue(model, batches, loss_fn=F.mse_loss, iterations=500, tol=1e-10)
    assert found == pytest.approx(expected, rel=1e-6)


def test_top_eigenvalue_of_a_small_network_matches_the_full_hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    params = dict(model.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss(flat):
        ws = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, ws, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    eigenvalues = np.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat).numpy())
    found = top_hessian_eigenvalue(model, [(x, y)], iterations=2000, tol=1e-12)
    assert found == pytest.approx(eigenvalues.max(), rel=1e-5)


def test_batchnorm_running_statistics_are_left_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = top_hessian_eigenvalue(model, [(torch.randn(8, 4), torch.randint(0, 2, (8,)))], iterations=20)
    assert top > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def train_quadratic(model, x, y, make_opt, delay, steps=3000):
    params = list(model.parameters())
    updates = DelayedUpdates(params, make_opt(params), delay)
    start = F.mse_loss(model(x), y).item()
    for _ in range(steps):
        w = updates.stale()[0]
        updates.apply([2 * (x @ w.T - y).T @ x / len(x)])  # the gradient of the mean squared error at w
    with torch.no_grad():
        end = F.mse_loss(model(x), y).item()
    return start, end


@pytest.mark.parametrize("delay", [0, 4])
def test_advised_sgdm_lr_is_the_edge_of_convergence_on_a_quadratic(delay):
    model, x, y = regression()
    advice = advise(model, [(x, y)], delay=delay, momentum=0.9, loss_fn=F.mse_loss)
    lam = max(np.linalg.eigvalsh((2 * x.T @ x / len(x)).numpy()))
    assert advice.sgdm_lr == pytest.approx(max_stable_eta_lambda(0.9, delay) / lam, rel=1e-3)
    optimum = F.mse_loss(x @ torch.linalg.lstsq(x, y).solution, y).item()
    for factor, converges in ((0.5, True), (0.95, True), (1.1, False)):
        model, x, y = regression()
        opt = lambda ps: torch.optim.SGD(ps, lr=factor * advice.sgdm_lr, momentum=0.9)  # noqa: E731
        start, end = train_quadratic(model, x, y, opt, delay, steps=6000)
        assert (end - optimum < 1e-3 * (start - optimum)) == converges, (factor, start, end)


def test_advised_ab_lr_is_the_edge_of_convergence_on_a_one_dimensional_quadratic():
    # AB without clipping: on one weight its dynamics have a clean edge (clipped braking's stable region has holes)
    model, x, y = regression(d=1)  # one weight: exactly the theory's quadratic
    advice = advise(model, [(x, y)], delay=8, momentum=0.9, rho=1.5, clip_factor=False, loss_fn=F.mse_loss)
    assert advice.ab_lr > 5 * advice.sgdm_lr  # braking widens the stable range
    optimum = F.mse_loss(x @ torch.linalg.lstsq(x, y).solution, y).item()
    for factor, converges in ((0.5, True), (0.9, True), (1.5, False), (4.0, False)):
        model, x, y = regression(d=1)
        opt = lambda ps: ABSGD(ps, lr=factor * advice.ab_lr, rho=1.5, clip_factor=False)  # noqa: E731
        start, end = train_quadratic(model, x, y, opt, 8)
        assert (end - optimum < 1e-3 * (start - optimum)) == converges, (factor, start, end)


def test_stable_edges_are_the_theorys():
    assert stable_edges(0, 0.9, 1.5, 4.0, True) == (pytest.approx(3.8, rel=1e-6),) * 2  # no staleness: SGDM
    sgdm, ab = stable_edges(0, 0.9, 1.5, 0.0, False)  # braking at D = 0 too
    assert sgdm == pytest.approx(3.8, rel=1e-6) and ab < 3.8
    sgdm32, ab32 = stable_edges(32, 0.9, 1.5, 4.0, False)
    assert sgdm32 == pytest.approx(0.0041, abs=5e-5) and 5 * sgdm32 < ab32 < 0.1
    _, clipped32 = stable_edges(32, 0.9, 1.5, 4.0, True)
    assert clipped32 > 2 * ab32  # stopping aligned gradients instead of reversing them


def test_advise_config_uses_the_runs_model_and_delay():
    config = parse_config({"dataset": "teacher", "model": "teacher_mlp", "delay": 8, "lr": 0.05})
    advice = advise_config(config, batches=2, iterations=10)
    assert advice.delay == 8 and advice.top_eigenvalue > 0
    assert advice.sgdm_lr < advice.ab_lr


def test_delay_warning_when_the_lr_is_far_above_the_advice():
    advice = Advice(top_eigenvalue=10.0, delay=32, momentum=0.9, rho=1.5, rho_ramp=4.0, clip_factor=True,
                    sgdm_edge=0.004, ab_edge=0.05)  # advised: SGDM 4e-4, AB 5e-3
    far = parse_config({"optimizer": "sgdm", "delay": 32, "lr": 0.03})
    warning = delay_warning(far, advice)
    assert "0.0004" in warning and "75x below the configured lr 0.03" in warning
    assert delay_warning(parse_config({"optimizer": "ab", "delay": 32, "lr": 0.015}), advice) is None  # 3x
    assert delay_warning(parse_config({"optimizer": "sgdm", "delay": 0, "lr": 0.03}), advice) is None
    assert delay_warning(parse_config({"optimizer": "spike", "delay": 32, "lr": 0.03}), advice) is None  # no edge
