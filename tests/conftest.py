"""Fixtures shared by every layer's tests: one local Ray instance for the session, and the job service.

Tests are grouped by layer (tests/optim, training, theory, sweeps, service, dashboards, cli, deploy). Any test that
uses Ray, the service or a browser is marked `slow` here, so `pytest -m "not slow"` is the fast loop of unit tests.
"""

import pytest

from abray.service.cluster import free_port
from support.service import ApiServer, finish_jobs

SLOW_FIXTURES = {"ray_cluster", "api_server", "browser", "postgres_url"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session, with its Prometheus export on a free port.
    address="local": always a new instance, never a `ray start` head that happens to run on this machine.
    It advertises one GPU that torch cannot use (there is none): a GPU trial is placed, reserving it, and then fails,
    as on a node whose CUDA is broken (tests/sweeps)."""
    import ray

    port = free_port()
    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _metrics_export_port=port,
             _system_config={"metrics_report_interval_ms": 1000})
    yield {"metrics_port": port, "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()


@pytest.fixture(scope="module")
def api_server(ray_cluster, tmp_path_factory):
    """One service (SQLite) shared by a test module; tests leave no job queued or running behind."""
    server = ApiServer(tmp_path_factory.mktemp("service"), ray_cluster["address"]).start()
    yield server
    finish_jobs(server)
    server.stop()
