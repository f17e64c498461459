import pytest
import torch

from abray.optim.staleness import source_version
from abray.training.delayed import DelayRing


def test_source_version_is_step_minus_delay_clamped_at_zero():
    assert [source_version(t, 3) for t in range(6)] == [0, 0, 0, 0, 1, 2]
    assert [source_version(t, 0) for t in range(3)] == [0, 1, 2]


@pytest.mark.parametrize("delay", [0, 1, 4])
def test_ring_returns_the_version_d_updates_old(delay):
    w = torch.zeros(3)
    ring = DelayRing([w], delay)
    for t in range(12):
        assert ring.stale()[0][0].item() == source_version(t, delay)
        w += 1  # version t + 1 has every entry equal to t + 1
        ring.push([w])
    assert ring.nbytes == (delay + 1) * w.numel() * w.element_size()


def test_ring_copies_instead_of_aliasing():
    w = torch.ones(2)
    ring = DelayRing([w], 1)
    w.mul_(5)
    assert torch.equal(ring.stale()[0], torch.ones(2))


def test_negative_delay_is_rejected():
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        DelayRing([torch.zeros(1)], -1)
