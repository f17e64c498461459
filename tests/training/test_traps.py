from abray.training.config import parse_config
from abray.training.epochs import EpochMetrics
from abray.training.traps import config_warnings, history_warnings


def epoch(reversed_fraction):
    return EpochMetrics(epoch=1, steps=10, train_loss=1.0, test_loss=1.0, test_accuracy=0.5, wall_time=1.0,
                        lr_now=0.03, reversed_fraction=reversed_fraction)


def test_warmup_that_never_ends_is_a_warning():
    [warning] = config_warnings(parse_config({"epochs": 5, "warmup_epochs": 5}))
    assert "warmup_epochs (5) >= epochs (5)" in warning and "--warmup-epochs 1" in warning
    assert config_warnings(parse_config({"epochs": 15, "warmup_epochs": 5})) == []


def test_full_braking_without_delay_is_a_warning():
    [warning] = config_warnings(parse_config({"optimizer": "ab", "rho_ramp": 0, "delay": 0}))
    assert "rho_ramp 0" in warning
    assert config_warnings(parse_config({"optimizer": "ab", "rho_ramp": 0, "delay": 8})) == []
    assert config_warnings(parse_config({"optimizer": "ab", "delay": 0})) == []


def test_a_factor_negative_most_of_the_time_is_a_warning():
    config = parse_config({"optimizer": "ab", "delay": 8, "rho": 2.0})
    [warning] = history_warnings(config, [epoch(0.7), epoch(0.5), epoch(None)])
    assert "negative for 60% of braked tensors" in warning and "rho (now 2)" in warning
    assert history_warnings(config, [epoch(0.4), epoch(0.5)]) == []
    assert history_warnings(config, [epoch(None)]) == []  # nothing braked (SGDM, or no staleness)


def test_each_epoch_reports_the_fraction_of_braked_tensors_whose_factor_was_negative(small_digits):
    from abray.training.run import run

    common = dict(epochs=2, batch_size=32, warmup_epochs=0, lr=0.05)
    strong = run(parse_config(dict(common, optimizer="ab", delay=8, rho=4.0)), data=small_digits)
    fractions = [m.reversed_fraction for m in strong]
    assert all(0.0 < f <= 1.0 for f in fractions)  # rho 4: every cosine above 1/4 is a negative factor
    assert [m.reversed_fraction for m in run(parse_config(dict(common, optimizer="ab", delay=0)),
                                             data=small_digits)] == [None, None]  # nothing stale, nothing braked
    weak = run(parse_config(dict(common, optimizer="ab", delay=8, rho=0.9)), data=small_digits)
    assert [m.reversed_fraction for m in weak] == [0.0, 0.0]  # rho < 1: never negative
    assert all(m.reversed_fraction is None for m in run(parse_config(dict(common, optimizer="sgdm", delay=8)),
                                                        data=small_digits))
