import json

import pytest

from abray.training.build import lr_multiplier
from abray.training.config import ConfigError, load_config_file, parse_config


@pytest.mark.parametrize(
    "values,match",
    [
        ({"dataset": "cifar10", "model": "resnet20"}, "data_root is required for dataset 'cifar10'"),
        ({"model": "resnet20"}, "model 'resnet20' does not fit dataset 'digits'; allowed: digits_cnn, digits_cnn_bn, digits_mlp"),
        ({"nesterov": True, "momentum": 0.0}, "nesterov requires momentum in \\(0, 1\\)"),
        ({"output": "x.txt"}, "output must end in .csv or .parquet"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"learning_rate": 0.1}, "learning_rate: unknown field$"),
        ({"device": "tpu"}, "device must be 'cpu' or 'cuda"),
        ({"storage_path": "ftp://host/runs"}, "storage_path must be a local path or a URI with scheme file, s3, gs"),
        ({"step_retries": 101}, "step_retries: Input should be less than or equal to 100"),
        ({"step_retries": -1}, "step_retries: Input should be greater than or equal to 0"),
    ],
)
def test_config_validation_messages(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(values)


INF = float("inf")


@pytest.mark.parametrize(
    "values,loc,text",
    [  # every number finite and bounded: the message names the field and its allowed range
        ({"lr": INF}, ["lr"], "lr: Input should be a finite number; allowed: > 0 and <= 1e+06 (got inf)"),
        ({"rho": INF}, ["rho"], "rho: Input should be a finite number; allowed: >= 0 and <= 100"),
        ({"warmup_epochs": INF}, ["warmup_epochs"], "warmup_epochs: Input should be a finite number; allowed: >= 0 and <= 100000"),
        ({"cpus_per_worker": INF}, ["cpus_per_worker"], "cpus_per_worker: Input should be a finite number; allowed: > 0 and <= 1024"),
        ({"lr": float("nan")}, ["lr"], "lr: Input should be a finite number"),
        ({"slowdown": [1, INF], "workers": 2}, ["slowdown", 1], "slowdown[1]: Input should be a finite number"),
        ({"epochs": 1e12}, ["epochs"], "epochs: Input should be less than or equal to 100000"),
        ({"batch_size": 1e12}, ["batch_size"], "batch_size: Input should be less than or equal to 65536"),
        ({"delay": 2**70}, ["delay"], "delay: Input should be less than or equal to 10000"),
        ({"seed": 2**32}, ["seed"], "seed: Input should be less than or equal to 4294967295"),
        ({"data_root": "x" * 5000}, ["data_root"], "data_root: String should have at most 4096 characters"),
    ],
)
def test_every_number_is_finite_and_bounded(values, loc, text):
    with pytest.raises(ConfigError) as caught:
        parse_config(values)
    assert [e["loc"] for e in caught.value.errors] == [loc] and text in str(caught.value)


def test_a_huge_value_is_quoted_cut_short():
    with pytest.raises(ConfigError) as caught:
        parse_config({"device": "cuda" + "0" * 100_000})
    assert len(str(caught.value)) < 300 and "(100006 characters)" in str(caught.value)


def test_a_typo_in_a_config_file_gets_did_you_mean(tmp_path):
    (tmp_path / "run.yaml").write_text("delya: 4\nmomentun: 0.5\nwhatever: 1\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(load_config_file(tmp_path / "run.yaml"))
    message = str(caught.value)
    assert "delya: unknown field; did you mean 'delay'?" in message
    assert "momentun: unknown field; did you mean 'momentum'?" in message
    assert "whatever: unknown field\n" in message + "\n"  # nothing close: no guess


def test_config_files_yaml_json_and_garbage(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"delay": 4}))
    assert parse_config(load_config_file(tmp_path / "a.json")).delay == 4
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config_file(tmp_path / "b.yaml")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config_file(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")


def test_lr_schedule_warmup_then_cosine_or_steps():
    assert [lr_multiplier(s, 100, 4, "constant") for s in (0, 3, 50)] == [0.25, 1.0, 1.0]
    assert lr_multiplier(4, 100, 4, "cosine") == 1.0
    assert lr_multiplier(52, 100, 4, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(99, 100, 4, "cosine") < 0.01
    assert [lr_multiplier(s, 100, 0, "step") for s in (10, 50, 80)] == pytest.approx([1.0, 0.1, 0.01])
