import subprocess
import sys

import pandas as pd
import pytest

from abray.results import CONFIG_COLUMNS, METRIC_COLUMNS

pytestmark = pytest.mark.slow  # each runs `abray` in a new process


def abray(*args, cwd):
    return subprocess.run([sys.executable, "-m", "abray.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_train_from_flags_writes_tidy_csv_with_progress(tmp_path):
    out = tmp_path / "m.csv"
    res = abray("train", "--optimizer", "ab", "--delay", "3", "--epochs", "2", "--rho", "1.0", "--lr", "0.03",
                "--output", str(out), "--no-advise", cwd=tmp_path)  # the advice has tests of its own
    assert res.returncode == 0, res.stderr
    assert "step/s" in res.stderr and "epoch   2" in res.stdout  # progress bar, per-epoch lines
    frame = pd.read_csv(out)
    assert list(frame.columns) == CONFIG_COLUMNS + METRIC_COLUMNS
    assert frame.epoch.tolist() == [1, 2] and (frame.delay == 3).all() and (frame.rho == 1.0).all()
    assert frame.steps.tolist() == [44, 88]
    assert "test accuracy" in res.stdout


def test_train_from_yaml_with_flag_override_writes_parquet(tmp_path):
    (tmp_path / "run.yaml").write_text("optimizer: sgdm\ndelay: 2\nepochs: 1\nseed: 5\nbatch_size: 64\n")
    out = tmp_path / "m.parquet"
    res = abray("train", "--config", "run.yaml", "--seed", "7", "--output", str(out), "--no-advise", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    frame = pd.read_parquet(out)
    assert frame.optimizer.tolist() == ["sgdm"] and frame.seed.tolist() == [7] and frame.batch_size.tolist() == [64]


def test_default_output_goes_under_runs_and_a_warmup_longer_than_the_run_is_a_warning(tmp_path):
    res = abray("train", "--epochs", "1", "--batch-size", "256", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "runs").glob("digits-ab-D0-seed0-*.csv"))) == 1
    assert "warning: warmup_epochs (5) >= epochs (1)" in res.stderr


def test_advise_prints_the_stable_lrs_and_refuses_bad_options(tmp_path):
    res = abray("advise", "--dataset", "teacher", "--model", "teacher_mlp", "--delay", "32", "--lr", "0.5",
                "--optimizer", "sgdm", "--batches", "2", "--iterations", "20", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[1].startswith("top Hessian eigenvalue: ")
    top = float(lines[1].split(": ")[1])
    sgdm_lr = float(lines[3].split()[1])
    assert sgdm_lr == pytest.approx(0.00406 / top, rel=0.01)  # SGDM's edge at D = 32, momentum 0.9
    assert "warning: at delay 32" in res.stderr  # lr 0.5 is far above the advice
    assert "a bound from the curvature at initialisation, not an lr to train at" in res.stdout
    bad = abray("advise", "--batches", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "batches: must be in [1, 1000]" in bad.stderr and "Traceback" not in bad.stderr
    helped = abray("advise", "--help", cwd=tmp_path)  # a description, and only the flags that change the advice
    assert helped.returncode == 0 and "A bound, not an lr to train at" in " ".join(helped.stdout.split())
    assert "--rho-ramp" in helped.stdout and "--epochs" not in helped.stdout and "--server-shards" not in helped.stdout


def test_bad_config_fails_before_training_naming_fields_and_allowed_values(tmp_path):
    res = abray("train", "--optimizer", "adam", "--momentum", "1.5", "--granularity", "layer", "--delay", "-1",
                "--output", str(tmp_path / "x.csv"), cwd=tmp_path)
    assert res.returncode == 2
    err = res.stderr
    assert "optimizer: Input should be 'sgdm', 'ab', 'dcasgd', 'staleness_lr', 'lwp', 'spike'" in err
    assert "momentum: Input should be less than 1" in err
    assert "granularity: Input should be 'tensor', 'global' or 'element'" in err
    assert "delay: Input should be greater than or equal to 0" in err
    assert "step" not in err and not (tmp_path / "x.csv").exists()


def test_a_distributed_run_bigger_than_the_machine_says_so_without_a_traceback(tmp_path):
    import os

    workers = 2 * os.cpu_count() + 2  # Ray's local cluster has one CPU per core
    res = abray("train", "--mode", "distributed", "--workers", str(workers), "--epochs", "1", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert (f"abray train: workers x cpus_per_worker = {workers} x 1 = {workers} CPUs requested, but the Ray "
            f"cluster has") in res.stderr and "lower workers or cpus_per_worker" in res.stderr
    assert "Traceback" not in res.stderr and not list(tmp_path.glob("runs/*.csv"))
