"""The peers' small parts by hand: their defaults, what they do before `prepare` is ever called, DC-ASGD's
compensation per parameter, the spike coefficients at momentum 1, and weight decay in the shared momentum step."""

import math

import pytest
import torch

from abray.optim.peers import (DCASGD, DelayAwareSGD, NesterovLookahead, SpikeCompensatedSGD, StalenessAwareSGD,
                               dc_compensate, momentum_step, spike_coefficients)


def scalar(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


def test_spike_coefficients_by_hand_including_momentum_one():
    assert spike_coefficients(1.0, 3) == (1.0, 3.0)  # (1 - m^D) / (1 - m) -> D as m -> 1
    a, b = spike_coefficients(0.5, 2)
    assert a == 0.25 and b == pytest.approx(1.5)  # 1 + m


def test_dc_asgd_compensates_exactly_the_parameters_whose_source_it_was_given():
    p, src = [scalar(1.0), scalar(3.0)], [None, scalar(2.0)]
    g = [scalar(0.5), scalar(0.5)]
    out = dc_compensate(g, p, src, [None, None], dc_lambda=2.0, adaptive=False, ms_decay=0.95, eps=1e-7)
    assert out[0].item() == 0.5  # no source: as it is
    assert out[1].item() == 0.5 + 2.0 * 0.5 * 0.5 * (3.0 - 2.0)


def test_adaptive_dc_asgd_stays_finite_where_a_gradient_is_zero():
    sq = [None]
    out = dc_compensate([torch.tensor([0.0, 1.0], dtype=torch.float64)], [torch.ones(2, dtype=torch.float64)],
                        [torch.zeros(2, dtype=torch.float64)], sq, dc_lambda=2.0, adaptive=True, ms_decay=0.5,
                        eps=1e-7)
    # MS = 0.5 g^2 = [0, 0.5]; lambda = 2 / sqrt(MS + eps)
    assert sq[0].tolist() == [0.0, 0.5]
    assert out[0].tolist() == pytest.approx([0.0, 1.0 + 2.0 / math.sqrt(0.5 + 1e-7)], rel=1e-12)


def test_weight_decay_of_one_still_decays():
    p, bufs = [scalar(1.0)], [None]
    momentum_step(p, [scalar(1.0)], bufs, lr=0.1, momentum=0.9, weight_decay=1.0, velocity_scale=1.0,
                  gradient_scale=0.0)
    assert bufs[0].item() == 2.0 and p[0].item() == pytest.approx(1.0 - 0.1 * 2.0)  # g + wd * w = 2


def test_defaults_and_the_delay_each_peer_starts_with():
    w = [torch.zeros(1, requires_grad=True)]
    assert DelayAwareSGD(w, dict(lr=0.1, momentum=0.9, weight_decay=0.0)).staleness == 0
    dc = DCASGD(w, lr=0.1)
    assert {k: dc.defaults[k] for k in ("momentum", "weight_decay", "dc_lambda", "adaptive", "ms_decay", "eps")} == {
        "momentum": 0.9, "weight_decay": 0.0, "dc_lambda": 2.0, "adaptive": True, "ms_decay": 0.95, "eps": 1e-7}
    assert dc.staleness == 0 and DCASGD(w, lr=0.1, delay=3).staleness == 3
    for cls in (StalenessAwareSGD, SpikeCompensatedSGD, NesterovLookahead):
        opt = cls(w, lr=0.1)
        assert (opt.defaults["momentum"], opt.defaults["weight_decay"], opt.staleness) == (0.9, 0.0, 0), cls
        assert cls(w, lr=0.1, delay=2).staleness == 2, cls
    assert NesterovLookahead(w, lr=0.1).defaults["lookahead"] == 1.0


def test_dc_asgd_takes_a_decay_of_zero_and_refuses_a_zero_eps():
    w = [torch.zeros(1, requires_grad=True)]
    assert DCASGD(w, lr=0.1, ms_decay=0.0).defaults["ms_decay"] == 0.0
    with pytest.raises(ValueError, match=r"^eps must be > 0 and finite, got 0\.0$"):
        DCASGD(w, lr=0.1, eps=0.0)


def one_step(opt_cls, prepare=None, **kw) -> float:
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([w], lr=0.4, momentum=0.5, **kw)
    if prepare is not None:
        opt.prepare(*prepare)
    w.grad = torch.full((1,), 2.0, dtype=torch.float64)
    opt.step()
    return w.item()


def test_before_any_prepare_a_peer_uses_its_delay_and_no_source():
    assert one_step(StalenessAwareSGD, delay=3) == pytest.approx(1.0 - 0.4 / 4 * 2.0)  # lr / (D + 1)
    assert one_step(DCASGD, delay=3) == pytest.approx(1.0 - 0.4 * 2.0)  # nothing to compensate: SGDM
    assert one_step(DCASGD, prepare=(2, None), delay=3) == pytest.approx(1.0 - 0.4 * 2.0)  # told, but no source
    assert one_step(StalenessAwareSGD, prepare=(1, None), delay=3) == pytest.approx(1.0 - 0.4 / 2 * 2.0)


def test_predicted_weights_by_hand():
    from abray.optim.prediction import predicted_weights

    w, fresh = torch.tensor([1.0, -1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1}, {"params": [fresh], "lr": 0.5}], momentum=0.9)
    opt.state[w]["momentum_buffer"] = torch.tensor([2.0, 4.0], dtype=torch.float64)
    ahead, same = predicted_weights(opt, [w, fresh], 3)  # fresh has no velocity yet: predicted as it is
    assert ahead.tolist() == pytest.approx([1.0 - 0.1 * 3 * 2.0, -1.0 - 0.1 * 3 * 4.0]) and same.tolist() == [0.0]
    assert predicted_weights(opt, [w], 0)[0].tolist() == [1.0, -1.0]
