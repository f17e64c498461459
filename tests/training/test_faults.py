"""Distributed training under faults (docs/fault-tolerance.md): actors killed at random points, a step that fails
every time, and a node lost on Ray's multi-node test cluster."""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from torch.utils.data import TensorDataset

from abray.training.config import parse_config
from abray.training.data import DataSplit, digits
from abray.training.distributed import TrainingFailed, train_distributed
from support.runs import simulate

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def data():
    return digits()


class Chaos:
    """Kills actors of the run as updates are applied: at each point (updates applied so far, as the driver hears
    them) one target, restartable, except that the last kill takes a worker for good. A server kill waits for an
    instance not killed yet (Ray's kill is asynchronous: two kills close together could otherwise both land on
    one instance, and the run would see one restart where the plan meant two)."""

    def __init__(self, seed: int, updates: int, workers: int):
        rng = random.Random(seed)
        targets = ["server", "server", f"worker-{rng.randrange(workers)}"]
        rng.shuffle(targets)
        points = sorted(rng.sample(range(3, updates - 10), len(targets) + 1))
        self.plan = list(zip(points, targets + [f"worker-{rng.randrange(workers)}"]))
        self.done: list[tuple] = []
        self.killed_servers: set[str] = set()  # instances

    def __call__(self, update: dict) -> None:
        if len(self.done) == len(self.plan) or update["applied"] < self.plan[len(self.done)][0]:
            return
        _, target = self.plan[len(self.done)]
        last = len(self.done) == len(self.plan) - 1
        name = f"abray-ps-{update['run_id']}" if target == "server" else \
            f"abray-worker-{update['run_id']}-{target.split('-')[1]}"
        actor = ray.get_actor(name)
        if target == "server":
            try:
                instance = ray.get(actor.ping.remote(), timeout=30)["instance"]
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return  # still going down or coming back: at a later update
            if instance in self.killed_servers:
                return
            self.killed_servers.add(instance)
        ray.kill(actor, no_restart=last)
        self.done.append((update["applied"], target))


@pytest.mark.parametrize("mode", ["distributed", "free"])
def test_actors_killed_at_random_points_lose_no_step_and_repeat_none(tmp_path, data, mode):
    config = parse_config({"mode": mode, "optimizer": "ab", "workers": 2, "delay": 3, "epochs": 3, "batch_size": 64,
                           "checkpoint_every": 7, "storage_path": str(tmp_path)})  # 66 steps
    chaos = Chaos(seed={"distributed": 14, "free": 41}[mode], updates=66, workers=2)
    reported = []
    start = time.monotonic()
    result = train_distributed(config, data, on_update=chaos, on_epoch=reported.append)
    print(f"{mode}: {time.monotonic() - start:.1f} s, kills {chaos.done}")
    assert len(chaos.done) == len(chaos.plan), chaos.done
    assert sorted(result.applied_steps) == list(range(66))  # every step applied exactly once
    assert [m.epoch for m in reported] == [1, 2, 3] and reported == result.history  # each epoch reported once
    assert result.server_restarts == 2 and result.worker_failures >= 1
    if mode == "distributed":  # the undisturbed trajectory, update for update
        assert result.applied_steps == list(range(66))
        assert np.abs(result.weights - simulate(config, data)[1]).max() <= 1e-6
    assert not list(tmp_path.iterdir())  # the run's checkpoint folder is removed at the end


def test_a_step_that_fails_every_time_fails_the_run_with_the_workers_error(tmp_path, data):
    # corrupt training images (4x4 instead of 8x8): the worker's forward pass fails the same way at every try
    corrupt = DataSplit(train=TensorDataset(data.train.tensors[0][:, :, :4, :4], data.train.tensors[1]),
                        test=data.test, num_classes=data.num_classes, input_shape=data.input_shape)
    config = parse_config({"mode": "distributed", "workers": 1, "epochs": 1, "storage_path": str(tmp_path)})
    start = time.monotonic()
    with pytest.raises(TrainingFailed, match=r"^step 0 failed 4 times \(step_retries = 3\); last error: "
                                             r"RuntimeError: .+ \(on worker 0\)$"):
        train_distributed(config, corrupt)
    assert time.monotonic() - start < 60
    assert not list(tmp_path.iterdir())


def test_a_worker_waiting_for_work_when_the_server_dies_gets_it_from_the_restarted_server(tmp_path, data):
    # W = 2, D = 0: each step needs the weights of the one before, so one worker always waits inside the server
    config = parse_config({"mode": "distributed", "optimizer": "ab", "workers": 2, "delay": 0, "epochs": 1,
                           "batch_size": 64, "checkpoint_every": 5, "storage_path": str(tmp_path)})  # 22 steps
    segments: set[str] = set()

    def kill_the_server_once(update):
        segments.update(p.name for p in Path("/dev/shm").glob(f"abray-{update['run_id']}-*"))
        if update["applied"] >= 8 and not segments & {"killed"}:
            segments.add("killed")
            ray.kill(ray.get_actor(f"abray-ps-{update['run_id']}"), no_restart=False)

    result = train_distributed(config, data, on_update=kill_the_server_once)
    assert result.server_restarts == 1
    assert result.applied_steps == list(range(22))  # every step once, in order
    assert np.abs(result.weights - simulate(config, data)[1]).max() <= 1e-6
    run_id = Path(result.checkpoint).name
    # weights and gradients went through shared memory (the server's versions, the workers' gradients), all of it
    # gone at the end, the killed instance's too
    assert any("-v-" in s for s in segments) and any("-w" in s for s in segments)
    assert not list(Path("/dev/shm").glob(f"abray-{run_id}-*"))


MULTINODE = Path(__file__).with_name("multinode_run.py")


@pytest.mark.slow
def test_a_run_survives_losing_the_node_of_its_server_on_a_multinode_cluster(tmp_path):
    """Ray's multi-node test cluster (ray.cluster_utils.Cluster, a raylet per node on this machine), in a process of
    its own beside the session's Ray: the node hosting the server is removed mid-run."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])  # support/
    ray_tmp = tempfile.mkdtemp(prefix="abray-mn-", dir="/tmp")  # short: Ray's socket paths are limited
    env["RAY_TMPDIR"] = ray_tmp  # its session files and ray_current_cluster stay out of /tmp/ray
    out = tmp_path / "result.json"
    start = time.monotonic()
    try:
        res = subprocess.run([sys.executable, str(MULTINODE), str(tmp_path / "checkpoints"), str(out)], env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(f"multi-node run: {time.monotonic() - start:.1f} s")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["removed_node"] == found["server_node_before"] != found["server_node_after"]
    assert found["server_restarts"] >= 1
    assert sorted(found["applied_steps"]) == list(range(found["total_steps"]))  # every step once
    assert found["reported_epochs"] == [1, 2]  # no epoch twice
    assert found["weights_match_simulator"]  # fixed delay: the undisturbed trajectory
