"""The delay ring (the last D + 1 weight versions) and `DelayedUpdates`, which tells a delay-aware optimizer each
update's staleness and source weights. Expected values are written out by hand."""

import pytest
import torch

from abray.optim.staleness import source_version
from abray.training.delayed import DelayedUpdates, DelayRing, apply_gradients


def test_source_version_is_step_minus_delay_clamped_at_zero():
    assert [source_version(t, 3) for t in range(6)] == [0, 0, 0, 0, 1, 2]
    assert [source_version(t, 0) for t in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("delay", [0, 1, 4])
def test_ring_returns_the_version_d_updates_old(delay):
    w = torch.zeros(3)
    ring = DelayRing([w], delay)
    for t in range(12):
        assert ring.stale()[0][0].item() == max(0, t - delay)
        assert ring.newest == t
        w += 1  # version t + 1 has every entry equal to t + 1
        ring.push([w])
    assert ring.nbytes == (delay + 1) * w.numel() * w.element_size()


def test_ring_copies_instead_of_aliasing():
    w = torch.ones(2)
    ring = DelayRing([w], 1)
    w.mul_(5)
    assert torch.equal(ring.stale()[0], torch.ones(2))
    ring.push([w])
    w.mul_(5)  # the pushed version is a copy too
    ring.push([w])
    assert torch.equal(ring.stale()[0], torch.full((2,), 5.0))


def test_ring_keeps_every_tensor_of_a_version():
    a, b = torch.zeros(2), torch.zeros(3, dtype=torch.float64)
    ring = DelayRing([a, b], 2)
    assert ring.nbytes == 3 * (2 * 4 + 3 * 8)
    for t in range(1, 6):
        ring.push([a + t, b - t])
        stale_a, stale_b = ring.stale()
        assert torch.equal(stale_a, torch.full((2,), float(max(0, t - 2))))
        assert torch.equal(stale_b, torch.full((3,), -float(max(0, t - 2)), dtype=torch.float64))


def test_negative_delay_is_rejected():
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        DelayRing([torch.zeros(1)], -1)
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        DelayedUpdates([torch.zeros(1, requires_grad=True)], torch.optim.SGD([torch.zeros(1)], lr=1.0), -2)


class Recording(torch.optim.SGD):
    """Plain SGD (lr 1, no momentum) that records what a delay-aware optimizer is told before each step."""

    def __init__(self, params):
        super().__init__(params, lr=1.0)
        self.told: list[tuple[int, dict]] = []

    def prepare(self, staleness, source):
        self.told.append((staleness, {p: s.clone() for p, s in source.items()}))


def test_each_update_is_told_its_own_staleness_and_the_weights_its_gradient_came_from():
    # gradient 1 at lr 1: version k of the weights is -k, so each source names its version
    w = torch.zeros(2, requires_grad=True)
    opt = Recording([w])
    updates = DelayedUpdates([w], opt, delay=3)
    for t in range(7):
        assert updates.step == t and updates.staleness == [0, 1, 2, 3, 3, 3, 3][t]
        updates.apply([torch.ones(2)])
    assert [staleness for staleness, _ in opt.told] == [0, 1, 2, 3, 3, 3, 3]
    assert [source[w].tolist() for _, source in opt.told] == [[-v, -v] for v in (0, 0, 0, 0, 1, 2, 3)]
    assert w.tolist() == [-7.0, -7.0] and updates.step == 7
    assert updates.stale()[0].tolist() == [-4.0, -4.0]  # the next update's source: version 7 - 3


def test_without_delay_every_update_is_told_staleness_zero_and_the_current_weights():
    w = torch.zeros(1, requires_grad=True)
    opt = Recording([w])
    updates = DelayedUpdates([w], opt, delay=0)
    for _ in range(3):
        updates.apply([torch.full((1,), 2.0)])
    assert [(staleness, source[w].item()) for staleness, source in opt.told] == [(0, 0.0), (0, -2.0), (0, -4.0)]


def test_apply_gradients_sets_the_gradients_tells_the_optimizer_and_steps():
    w, u = torch.zeros(2, requires_grad=True), torch.ones(1, requires_grad=True)
    opt = Recording([w, u])
    source = [torch.full((2,), 7.0), torch.full((1,), 9.0)]
    apply_gradients(opt, [w, u], [torch.tensor([1.0, 2.0]), torch.tensor([3.0])], 5, source)
    staleness, told = opt.told[0]
    assert staleness == 5 and told[w].tolist() == [7.0, 7.0] and told[u].tolist() == [9.0]
    assert w.tolist() == [-1.0, -2.0] and u.tolist() == [-2.0]
    assert w.grad.tolist() == [1.0, 2.0] and u.grad.tolist() == [3.0]
    plain = torch.zeros(1, requires_grad=True)  # an optimizer without `prepare` just steps
    apply_gradients(torch.optim.SGD([plain], lr=0.5), [plain], [torch.ones(1)], 3, [torch.zeros(1)])
    assert plain.tolist() == [-0.5]


def test_without_prediction_the_ring_keeps_the_weights_themselves():
    w = torch.zeros(1, requires_grad=True)
    updates = DelayedUpdates([w], torch.optim.SGD([w], lr=1.0, momentum=0.5), delay=1)
    updates.apply([torch.ones(1)])  # v = 1, w = -1: version 1
    updates.apply([torch.ones(1)])  # v = 1.5, w = -2.5: version 2
    assert updates.stale()[0].item() == -1.0  # version 1 as it was (predicted: -1 - lr D v = -2)


def test_a_prediction_uses_the_lr_of_the_updates_to_come_when_a_scheduler_steps():
    # the scheduler halves the lr after each update; the version stored after an update is predicted with the
    # halved lr (the parameter server's order), not the lr the update itself used
    w = torch.ones(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    updates = DelayedUpdates([w], opt, delay=1, predict=True, scheduler=scheduler)
    updates.apply([torch.ones(1)])  # v = 1, w = 0, then lr 0.5: version 1 = 0 - 0.5 * 1 * 1
    assert opt.param_groups[0]["lr"] == 0.5
    updates.apply([torch.ones(1)])  # the next gradient, then version 1 is what the one after is computed on
    assert updates.stale()[0].item() == -0.5  # with the lr before the scheduler's step it would be -1
