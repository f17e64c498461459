import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from abray.optim import ABSGD
from abray.optim.staleness import source_version
from abray.training.data import DataSplit, batch_indices, collate
from abray.training.models import DigitsCNN
from abray.training.simulator import train_delayed



def plain_loop(model, optimizer, data, epochs, batch_size, seed):
    model.train()
    for epoch in range(epochs):
        for indices in batch_indices(len(data.train), batch_size, seed, epoch):
            x, y = collate(data.train, indices)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


def reference_delayed(model, make_opt, data, delay, epochs, batch_size, seed):
    """Delayed training written the obvious way: keep every version, run a copy of the model on the old one."""
    opt = make_opt(model.parameters())
    versions = [copy.deepcopy(model.state_dict())]
    worker = copy.deepcopy(model)
    step = 0
    for epoch in range(epochs):
        for indices in batch_indices(len(data.train), batch_size, seed, epoch):
            x, y = collate(data.train, indices)
            worker.load_state_dict(versions[source_version(step, delay)])
            worker.zero_grad()
            F.cross_entropy(worker(x), y).backward()
            for p, q in zip(model.parameters(), worker.parameters()):
                p.grad = q.grad.clone()
            opt.step()
            versions.append(copy.deepcopy(model.state_dict()))
            step += 1
    return model


OPTIMIZERS = {
    "ab": lambda ps: ABSGD(ps, lr=0.05, rho=1.0, rho_ramp=0),  # full braking, whatever the staleness
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("batchnorm", [False, True])
def test_delay_zero_is_a_plain_training_loop_exactly(small_digits, name, batchnorm):
    torch.manual_seed(0)
    a = DigitsCNN(batchnorm=batchnorm)
    b = copy.deepcopy(a)
    history = train_delayed(a, OPTIMIZERS[name](a.parameters()), small_digits, delay=0, epochs=2, batch_size=16, seed=3)
    plain_loop(b, OPTIMIZERS[name](b.parameters()), small_digits, epochs=2, batch_size=16, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert [m.steps for m in history] == [len(small_digits.train) // 16 * (e + 1) for e in range(2)]


@pytest.mark.parametrize("delay", [1, 5])
def test_gradients_come_from_the_weights_d_updates_old(small_digits, delay):
    torch.manual_seed(0)
    a = DigitsCNN()
    b = copy.deepcopy(a)
    train_delayed(a, OPTIMIZERS["ab"](a.parameters()), small_digits, delay=delay, epochs=1, batch_size=16, seed=1)
    reference_delayed(b, OPTIMIZERS["ab"], small_digits, delay, epochs=1, batch_size=16, seed=1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    # and it is not the undelayed trajectory
    torch.manual_seed(0)
    d = DigitsCNN()
    plain_loop(d, OPTIMIZERS["ab"](d.parameters()), small_digits, epochs=1, batch_size=16, seed=1)
    assert not all(torch.allclose(p, q) for p, q in zip(b.parameters(), d.parameters()))


def test_batchnorm_statistics_come_from_the_stale_weights(small_digits):
    # D = 3 over 2 steps: both steps compute on the initial weights, so the running statistics must be
    # those of the initial weights forwarded on the same two batches.
    data = DataSplit(train=torch.utils.data.Subset(small_digits.train, range(32)), test=small_digits.test,
                     num_classes=10, input_shape=(1, 8, 8))  # a Subset also exercises the generic collate
    torch.manual_seed(0)
    sim = DigitsCNN(batchnorm=True)
    initial = copy.deepcopy(sim)
    train_delayed(sim, ABSGD(sim.parameters(), lr=0.5), data, delay=3, epochs=1, batch_size=16, seed=0)
    initial.train()
    with torch.no_grad():
        for indices in batch_indices(32, 16, 0, 0):
            initial(collate(data.train, indices)[0])
    bn_sim = [m for m in sim.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_ref = [m for m in initial.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for s, r in zip(bn_sim, bn_ref):
        torch.testing.assert_close(s.running_mean, r.running_mean)
        torch.testing.assert_close(s.running_var, r.running_var)
        assert s.num_batches_tracked.item() == 2
    assert not all(torch.equal(p, q) for p, q in zip(sim.parameters(), initial.parameters()))


def test_reports_per_epoch_metrics(small_digits):
    torch.manual_seed(0)
    model = DigitsCNN()
    seen = []
    history = train_delayed(model, ABSGD(model.parameters(), lr=0.05), small_digits, delay=2, epochs=3,
                            batch_size=16, seed=0, on_epoch=seen.append)
    assert seen == history and [m.epoch for m in history] == [1, 2, 3]
    for m in history:
        assert np.isfinite(m.train_loss) and np.isfinite(m.test_loss) and 0 <= m.test_accuracy <= 1
        assert m.wall_time > 0 and not m.diverged and m.diverged_step is None
    assert history[-1].train_loss < history[0].train_loss and history[-1].test_accuracy > 0.15  # it learns


def test_the_reported_staleness_is_each_updates_own(small_digits):
    # 80 examples in batches of 16: 5 updates an epoch. At D = 3 the first three updates are 0, 1 and 2 stale.
    tx, ty = small_digits.train.tensors
    data = DataSplit(train=torch.utils.data.TensorDataset(tx[:80], ty[:80]), test=small_digits.test, num_classes=10,
                     input_shape=(1, 8, 8))
    torch.manual_seed(0)
    model = DigitsCNN()
    history = train_delayed(model, torch.optim.SGD(model.parameters(), lr=0.01), data, delay=3, epochs=2,
                            batch_size=16, seed=0)
    first, second = history
    assert (first.steps, second.steps) == (5, 10)
    assert first.staleness_hist == {0: 1, 1: 1, 2: 1, 3: 2} and first.staleness_max == 3
    assert first.staleness_mean == pytest.approx(9 / 5)
    assert second.staleness_hist == {3: 5} and second.staleness_max == 3 and second.staleness_mean == 3.0


def test_non_finite_loss_stops_cleanly_as_diverged(small_digits):
    torch.manual_seed(0)
    model = DigitsCNN()
    history = train_delayed(model, torch.optim.SGD(model.parameters(), lr=1e4, momentum=0.9), small_digits,
                            delay=4, epochs=5, batch_size=16, seed=0)
    last = history[-1]
    assert last.diverged and last.diverged_step is not None
    assert last.steps == last.diverged_step  # the diverged step was not applied


def test_negative_delay_is_rejected(small_digits):
    model = DigitsCNN()
    with pytest.raises(ValueError, match="delay must be an integer >= 0"):
        train_delayed(model, ABSGD(model.parameters(), lr=0.1), small_digits, delay=-1, epochs=1,
                      batch_size=16, seed=0)


def test_undelayed_ab_in_the_simulator_is_sgdm_exactly(small_digits):
    """Do no harm: with nothing stale, AB's default braking is off, whatever rho, so its run is SGDM's."""
    from abray.training.config import parse_config
    from abray.training.run import run

    common = dict(delay=0, epochs=2, batch_size=16, rho=2.0, warmup_epochs=1)
    ab = run(parse_config(dict(common, optimizer="ab")), data=small_digits)
    sgdm = run(parse_config(dict(common, optimizer="sgdm")), data=small_digits)
    assert [m.test_loss for m in ab] == [m.test_loss for m in sgdm]
    assert [m.train_loss for m in ab] == [m.train_loss for m in sgdm]
