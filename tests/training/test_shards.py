"""Sharded parameter servers (`server_shards` > 1, abray.training.shards): the weights cut into parts at tensor
boundaries, a follower's part stepped once per step and in step order in fixed mode, and whole runs that end where
the unsharded server (the simulator) ends, whatever worker dies."""

import math

import numpy as np
import pytest
import ray
import torch

from abray.training.build import build_optimizer, make_scheduler
from abray.training.config import ConfigError, parse_config
from abray.training.data import digits
from abray.training.distributed import TrainingFailed, train_distributed
from abray.training.models import build_model
from abray.training.shards import Part, ShardState, partition, shard_sizes
from support.runs import simulate


def test_parts_cover_every_tensor_once_in_order_and_split_the_weights_near_evenly():
    sizes = [10, 500, 20, 480, 5, 5]
    parts = partition(sizes, 2)
    assert parts == [Part(0, 2, 0, 510), Part(2, 6, 510, 1020)]
    three = partition(sizes, 3)  # cuts nearest to 340 and 680 of the running totals 10, 510, 530, 1010, 1015
    assert [p.first for p in three] == [0, 2, 3] and three[-1].last == len(sizes)
    assert all(a.last == b.first and a.stop == b.start for a, b in zip(three, three[1:]))
    assert len(partition(sizes, 6)) == 6  # one tensor each
    with pytest.raises(ValueError, match="server_shards must be between 1 and the model's 6 parameter tensors"):
        partition(sizes, 7)


def test_shard_sizes_are_the_models_tensor_sizes_without_building_its_weights():
    config = parse_config({"model": "resnet20", "dataset": "cifar10", "data_root": "(not read)"})
    assert shard_sizes(config, 10) == [math.prod(p.shape) for p in build_model("resnet20", 10).parameters()]


def test_the_config_refuses_a_global_cosine_a_simulated_run_and_kept_checkpoints_with_sharded_servers():
    with pytest.raises(ConfigError, match="granularity 'global'"):
        parse_config({"mode": "free", "optimizer": "ab", "granularity": "global", "server_shards": 2})
    with pytest.raises(ConfigError, match="server_shards > 1 needs mode 'distributed' or 'free'"):
        parse_config({"server_shards": 2})
    with pytest.raises(ConfigError, match="server_shards"):
        parse_config({"mode": "free", "server_shards": 0})
    with pytest.raises(ConfigError, match="keep_checkpoints needs server_shards 1"):
        parse_config({"mode": "free", "server_shards": 2, "keep_checkpoints": True})
    assert parse_config({"mode": "free", "server_shards": 2, "storage_path": "/tmp/x"}).server_shards == 2


def test_a_follower_applies_each_step_once_and_in_step_order_as_one_optimizer_would():
    config = parse_config({"mode": "distributed", "optimizer": "sgdm", "delay": 1, "workers": 2,
                           "model": "digits_mlp", "batch_size": 32, "warmup_epochs": 0})
    sizes = shard_sizes(config, 10)
    part = partition(sizes, 2)[1]
    shard = ShardState(config, 320, 10, part)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(part.stop - part.start).astype(np.float32) for _ in range(3)]
    # the same steps through one torch optimizer over the same tensors, in step order, each once
    torch.manual_seed(config.seed)
    tensors = [p.detach().clone() for p in build_model("digits_mlp", 10).parameters()][part.first:part.last]
    params = [torch.nn.Parameter(t) for t in tensors]
    reference = build_optimizer(config, params)
    schedule = make_scheduler(config, reference, 10)
    # step 1 arrives first and waits; step 0 arrives twice (its lease was given back and computed again)
    assert shard.push((1, 0), 1, 0, grads[1]) and shard.applied == 0
    assert shard.push((0, 0), 0, 0, grads[0]) and shard.applied == 2
    assert not shard.push((0, 1), 0, 0, grads[2]) and shard.applied == 2
    for g in grads[:2]:
        reference.zero_grad()
        offset = 0
        for p in params:
            p.grad = torch.from_numpy(g[offset:offset + p.numel()]).view_as(p)
            offset += p.numel()
        reference.step()
        schedule.step()
    expected = torch.cat([p.detach().reshape(-1) for p in params]).numpy()
    assert np.abs(shard.flat.numpy() - expected).max() <= 1e-6
    version, _ = shard.weights((0, 2), 1)  # fixed mode: the version asked for, once it exists
    assert version == 1 and shard.weights((0, 2), 3) is None


@pytest.fixture(scope="module")
def data():
    return digits()


def test_sharded_servers_end_where_one_server_ends_and_a_killed_worker_changes_nothing(ray_cluster, tmp_path, data):
    # fixed mode, W = 2, D = 2, 44 steps, three shards; a worker is killed once mid-run (it restarts)
    config = parse_config({"mode": "distributed", "optimizer": "ab", "workers": 2, "delay": 2, "epochs": 1,
                           "server_shards": 3, "storage_path": str(tmp_path)})
    killed = []

    def kill_a_worker_once(update):
        if update["applied"] >= 10 and not killed:
            killed.append(update["applied"])
            ray.kill(ray.get_actor(f"abray-worker-{update['run_id']}-1"), no_restart=False)

    result = train_distributed(config, data, on_update=kill_a_worker_once)
    history, weights = simulate(config, data)
    assert killed and result.worker_failures >= 1
    assert result.applied_steps == list(range(44))
    assert np.abs(result.weights - weights).max() <= 1e-6
    assert result.history[-1].test_accuracy == pytest.approx(history[-1].test_accuracy, abs=1 / 360)

    free = parse_config({**config.model_dump(), "mode": "free", "server_shards": 2, "output": None})
    run = train_distributed(free, data)
    assert sorted(run.applied_steps) == list(range(44)) and len(run.history) == 1


def test_a_lost_shard_fails_the_run_saying_so(ray_cluster, tmp_path, data):
    config = parse_config({"mode": "free", "workers": 2, "epochs": 2, "server_shards": 2,
                           "storage_path": str(tmp_path)})

    killed = []

    def kill_the_follower(update):
        if update["applied"] >= 5 and not killed:
            killed.append(update["applied"])
            ray.kill(ray.get_actor(f"abray-ps-{update['run_id']}-1"), no_restart=True)

    with pytest.raises(TrainingFailed, match="^a parameter-server shard failed, and sharded servers do not restart: "):
        train_distributed(config, data, on_update=kill_the_follower)
    assert killed
