import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from abray.training.config import ConfigError, parse_config
from abray.training.data import digits
from abray.training.distributed import ResourceError, train_distributed
from support.runs import simulate

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def data():
    return digits()


def cfg(tmp_path, **kw):
    values = dict(optimizer="ab", delay=4, workers=3, mode="distributed", epochs=2, batch_size=32,
                  storage_path=str(tmp_path / "ps"), checkpoint_every=10)
    return parse_config({**values, **kw})


def test_fixed_delay_reproduces_the_simulator_and_runs_sharing_a_storage_path_keep_to_their_own(tmp_path, data):
    config = cfg(tmp_path, keep_checkpoints=True)  # W = 3, D = 4, 88 steps
    result = train_distributed(config, data)
    history, weights = simulate(config, data)
    assert result.applied_steps == list(range(88))
    assert np.abs(result.weights - weights).max() <= 1e-6
    assert result.history[-1].test_accuracy == pytest.approx(history[-1].test_accuracy, abs=1 / 360)
    assert result.staleness == [min(t, 4) for t in range(88)]  # every update exactly D old, once filled
    assert result.history[-1].staleness_hist == {4: 44}

    # another run in the same storage_path, with that checkpoint kept there: it runs its own config from scratch
    other = cfg(tmp_path, workers=2, epochs=1, batch_size=64, optimizer="sgdm", seed=7, lr=0.01)
    second = train_distributed(other, data)
    assert np.abs(second.weights - simulate(other, data)[1]).max() <= 1e-6
    # each checkpointed in a folder of its own under storage_path; the second's went at its end (the default)
    first_folder, second_folder = Path(result.checkpoint), Path(second.checkpoint)
    assert first_folder.parent == second_folder.parent == tmp_path / "ps" and first_folder != second_folder
    assert list((tmp_path / "ps").iterdir()) == [first_folder]
    saved = torch.load(first_folder / "checkpoint.pt", weights_only=False)
    assert saved["run_id"] == first_folder.name and saved["applied"] == 88


def test_free_mode_records_staleness_and_a_straggler_does_less(tmp_path, data):
    config = cfg(tmp_path, mode="free", workers=3, slowdown=[1.0, 1.0, 4.0], batch_size=64)
    per_worker = {0: 0, 1: 0, 2: 0}
    result = train_distributed(config, data, on_update=lambda u: per_worker.__setitem__(u["worker"],
                                                                                        per_worker[u["worker"]] + 1))
    total = 2 * (len(data.train) // 64)
    assert sorted(result.applied_steps) == list(range(total))  # every step once
    assert len(result.staleness) == total and max(result.staleness) >= 1
    last = result.history[-1]
    assert last.staleness_max == max(result.staleness[total // 2:])
    assert sum(last.staleness_hist.values()) == total // 2
    assert per_worker[2] < per_worker[0] and per_worker[2] < per_worker[1]


def test_metrics_reach_prometheus(ray_cluster, tmp_path, data):
    # Gauges live as long as the actor that sets them, so scrape Ray's export while the run is going.
    wanted = {"ray_abray_updates_total", "ray_abray_updates_per_second", "ray_abray_staleness_bucket",
              "ray_abray_queue_depth", "ray_abray_train_loss", "ray_abray_worker_busy_fraction"}
    found = set()

    def scrape(update):
        if update["applied"] < 10 or found:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not wanted <= found:
            url = f"http://127.0.0.1:{ray_cluster['metrics_port']}/metrics"
            text = urllib.request.urlopen(url).read().decode()
            found.update(line.split("{")[0] for line in text.splitlines() if line.startswith("ray_abray"))
            time.sleep(0.5)

    train_distributed(cfg(tmp_path, workers=2, epochs=1, batch_size=64, mode="free"), data, on_update=scrape)
    assert wanted <= found, wanted - found


def test_bad_input_fails_before_anything_starts(tmp_path, data):
    with pytest.raises(ConfigError, match="workers: Input should be greater than or equal to 1"):
        cfg(tmp_path, workers=0)
    with pytest.raises(ConfigError, match="delay: Input should be greater than or equal to 0"):
        cfg(tmp_path, delay=-1)
    with pytest.raises(ConfigError, match="slowdown must list one factor per worker"):
        cfg(tmp_path, slowdown=[1.0])
    before = len(ray.util.list_named_actors())
    start = time.monotonic()
    with pytest.raises(ResourceError, match="3 GPUs requested, but the Ray cluster has 1"):
        train_distributed(cfg(tmp_path, gpus_per_worker=1.0), data)
    with pytest.raises(ResourceError, match="CPUs requested, but the Ray cluster has 4"):
        train_distributed(cfg(tmp_path, workers=5), data)
    # refused up front, not after waiting for resources that never come; and no actor was left behind
    assert time.monotonic() - start < 60 and len(ray.util.list_named_actors()) == before


def test_cli_distributed_run_writes_metrics_with_staleness(ray_cluster, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ray_cluster["address"]}
    out = tmp_path / "m.csv"
    res = subprocess.run([sys.executable, "-m", "abray.cli", "train", "--mode", "free", "--workers", "2",
                          "--epochs", "1", "--batch-size", "64", "--output", str(out),
                          "--storage-path", str(tmp_path / "ps")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # actors restart from their config alone: nothing of theirs lives in the object store (ray-project/ray#53727)
    assert "constructor arguments in the object store" not in res.stderr
    assert not list((tmp_path / "ps").iterdir())  # the run's checkpoint folder is gone
    frame = pd.read_csv(out)
    assert frame["mode"].tolist() == ["free"] and frame["workers"].tolist() == [2]
    assert frame.staleness_max.iloc[0] >= 0 and sum(json.loads(frame.staleness_hist.iloc[0]).values()) == 22
    assert "step/s" in res.stderr
