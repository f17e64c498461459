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
