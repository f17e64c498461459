"""A distributed run on Ray's multi-node test cluster that loses the node of its parameter server mid-run.

Run by tests/training/test_faults.py in a process of its own (a second Ray beside the test session's):

    PYTHONPATH=tests python tests/training/multinode_run.py STORAGE_ROOT RESULT_JSON

The cluster: a head that only hosts this driver (0 CPUs) and two nodes of 2 CPUs, each its own raylet and each with
room for the server (a resource the head lacks). After 15 updates the node hosting the server is removed, with
the server and whatever workers it hosts; they restart on the other. The checkpoints go to STORAGE_ROOT, a path every node of this machine
reads, as s3:// or gs:// would be on a real cluster. RESULT_JSON gets what the test checks.
"""

import json
import sys

import numpy as np
import ray
import torch
from ray.cluster_utils import Cluster

from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.distributed import train_distributed
from support.runs import simulate

REMOVE_AFTER = 15


def main(storage: str, out: str) -> None:
    torch.set_num_threads(1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [cluster.add_node(num_cpus=2, resources={"server_slot": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        config = parse_config({"mode": "distributed", "workers": 2, "delay": 2, "epochs": 2, "batch_size": 64,
                               "checkpoint_every": 5, "storage_path": storage})
        data = digits()
        found = {"reported_epochs": []}

        def server_node(run_id: str) -> str:
            return ray.get(ray.get_actor(f"abray-ps-{run_id}").ping.remote())["node"]

        def on_update(update: dict) -> None:
            if update["applied"] >= REMOVE_AFTER and "removed_node" not in found:
                found["server_node_before"] = node = server_node(update["run_id"])
                found["removed_node"] = node
                found["removed_at_instance"] = update["instance"]
                cluster.remove_node(next(n for n in nodes if n.node_id == node))
            elif "removed_node" in found and "server_node_after" not in found and \
                    update["instance"] != found["removed_at_instance"]:
                found["server_node_after"] = server_node(update["run_id"])

        result = train_distributed(
            config, data, on_update=on_update, on_epoch=lambda m: found["reported_epochs"].append(m.epoch),
            server_options={"resources": {"server_slot": 1}})  # on a worker node, not the driver's
        found.update(applied_steps=result.applied_steps, server_restarts=result.server_restarts,
                     total_steps=len(data.train) // config.batch_size * config.epochs,
                     weights_match_simulator=bool(
                         np.abs(result.weights - simulate(config, data)[1]).max() <= 1e-6))
        with open(out, "w") as f:
            json.dump(found, f)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
