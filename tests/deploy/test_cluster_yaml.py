import copy
from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_validator():
    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(config))
    assert config["idle_timeout_minutes"] > 0
    assert any("@v" in cmd for cmd in config["setup_commands"])  # a pinned version
    types = config["available_node_types"]
    assert types["gpu_worker"]["min_workers"] == 0 and types["gpu_worker"]["max_workers"] > 0


def test_the_dashboard_listens_on_the_head_only():
    # Ray's job API, served with the dashboard, runs whatever code it is sent: never on a public address
    config = yaml.safe_load(CLUSTER.read_text())
    starts = [cmd for cmd in config["head_start_ray_commands"] if cmd.startswith("ray start")]
    assert starts and all("--dashboard-host=127.0.0.1" in cmd and "0.0.0.0" not in cmd for cmd in starts)


def test_the_validator_catches_a_typo():
    config = yaml.safe_load(CLUSTER.read_text())
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["max_worker"] = broken["available_node_types"]["gpu_worker"].pop(
        "max_workers")
    with pytest.raises(ValidationError, match=r"Additional properties are not allowed \('max_worker' was unexpected\)"):
        validate_config(prepare_config(broken))
