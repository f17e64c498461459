import numpy as np
import pytest

from abray.theory import growth_rate, max_stable_eta_lambda, simulate_quadratic, spectral_radius


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99])
def test_without_delay_sgdm_is_stable_exactly_below_2_1_plus_m(momentum):
    edge = 2 * (1 + momentum)
    assert max_stable_eta_lambda(momentum, 0) == pytest.approx(edge, rel=1e-8)
    for a in np.linspace(1e-3, edge * (1 - 1e-6), 50):
        assert spectral_radius(a, momentum, 0) < 1
    assert spectral_radius(edge * (1 + 1e-6), momentum, 0) > 1


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_one_step_of_delay_leaves_1_minus_m(momentum):
    assert max_stable_eta_lambda(momentum, 1) == pytest.approx(1 - momentum, rel=1e-6)


def test_stable_range_shrinks_as_delay_grows():
    edges = [max_stable_eta_lambda(0.9, d) for d in (0, 1, 2, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(edges, edges[1:]))
    # the design brief's figures for m = 0.9
    assert edges[0] == pytest.approx(3.8, rel=1e-6)
    assert edges[3] == pytest.approx(0.026, rel=0.05)
    assert edges[6] == pytest.approx(0.0039, rel=0.1)


@pytest.mark.parametrize("delay", [0, 2, 4, 8])
@pytest.mark.parametrize("factor", [0.5, 1.2])
def test_simulator_with_rho_zero_grows_or_decays_at_the_spectral_radius(delay, factor):
    a = factor * max_stable_eta_lambda(0.9, delay)
    radius = spectral_radius(a, 0.9, delay)
    # long enough for the slower modes to die out, short enough not to overflow float64
    steps = 4000 if radius < 1.01 else int(150 / np.log(radius))
    losses = simulate_quadratic([a / 0.1], lr=0.1, delay=delay, steps=steps, momentum=0.9, rho=0.0)
    assert growth_rate(losses, steps // 2)[0] == pytest.approx(radius, abs=1e-3)
    assert (radius < 1) == (losses[-1, 0] < losses[0, 0])


def test_simulator_matches_the_recurrence_exactly():
    m, a, d = 0.9, 0.01, 3
    w = [1.0]
    for t in range(200):
        prev = w[t - 1] if t > 0 else w[0]
        w.append((1 + m) * w[t] - m * prev - a * w[max(0, t - d)])
    losses = simulate_quadratic([a], lr=1.0, delay=d, steps=200, momentum=m, rho=0.0)
    np.testing.assert_allclose(losses[:, 0], 0.5 * a * np.square(w), rtol=1e-9)


def test_braking_holds_curvatures_that_diverge_without_it():
    curvatures = np.geomspace(1e-3, 1.0, 8)  # eta*lambda up to 0.1, seven times the D = 8 limit
    sgdm = simulate_quadratic(curvatures, lr=0.1, delay=8, steps=300, rho=0.0)
    ab = simulate_quadratic(curvatures, lr=0.1, delay=8, steps=300, rho=2.0)
    assert not np.all(np.isfinite(sgdm[-1]) & (sgdm[-1] < sgdm[0]))
    assert np.all(ab[-1] < ab[0])


def braked_reference(curvatures, w0, *, lr, momentum, rho, delay, steps, eps=1e-8):
    """Delayed AB-SGDM on independent quadratics, written out in numpy one problem at a time: each problem's cosine
    is taken over its own coordinates. Returns the losses, shape (steps + 1, P)."""
    losses = np.empty((steps + 1, len(curvatures)))
    for p, (lam, w) in enumerate(zip(curvatures, w0)):
        versions, v = [np.array(w, dtype=np.float64)], None
        for t in range(steps):
            g = lam * versions[max(0, t - delay)]
            if v is None:
                v = g.copy()  # the first step: no velocity, no braking
            else:
                c = g @ v / (np.linalg.norm(g) * np.linalg.norm(v) + eps)
                v = momentum * v + (1 - rho * c) * g
            versions.append(versions[-1] - lr * v)
        losses[:, p] = [0.5 * np.sum(lam * w * w) for w in versions]
    return losses


@pytest.mark.parametrize("granularity", ["global", "tensor"])
def test_each_problem_brakes_with_its_own_cosine(granularity):
    rng = np.random.default_rng(0)
    lam = rng.uniform(0.1, 10.0, size=(3, 4))
    w0 = rng.standard_normal((3, 4))
    # AB as the reference loop has it: a constant rho (no ramp with the staleness), the factor not clipped at 0
    losses = simulate_quadratic(lam, lr=0.02, delay=2, steps=60, momentum=0.9, w0=w0, rho=1.0,
                                granularity=granularity, rho_ramp=0.0, clip_factor=False)
    expected = braked_reference(lam, w0, lr=0.02, momentum=0.9, rho=1.0, delay=2, steps=60)
    np.testing.assert_allclose(losses, expected, rtol=1e-9, atol=1e-300)
    # and the braking acts here: without it the losses differ
    assert not np.allclose(losses[-1], simulate_quadratic(lam, lr=0.02, delay=2, steps=60, momentum=0.9, w0=w0,
                                                          rho=0.0)[-1])


def test_simulator_shapes_and_many_coordinates_per_problem():
    lam = np.array([[0.1, 1.0, 10.0], [1.0, 1.0, 1.0]])
    losses = simulate_quadratic(lam, lr=0.01, delay=2, steps=10, seed=0, granularity="global")
    assert losses.shape == (11, 2)
    with pytest.raises(ValueError, match="curvatures must have shape"):
        simulate_quadratic(np.ones((2, 2, 2)), lr=0.1, delay=0, steps=1)
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        simulate_quadratic([1.0], lr=0.1, delay=-1, steps=1)
    with pytest.raises(ValueError, match="rho must be >= 0"):
        simulate_quadratic([1.0], lr=0.1, delay=1, steps=1, rho=-1)
