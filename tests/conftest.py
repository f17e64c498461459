import pytest

from abray.cluster import free_port
from api.local import LocalService


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session, with its Prometheus export on a free port.
    address="local": always a new instance, never a `ray start` head that happens to run on this machine."""
    import ray

    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    yield {"metrics_port": port, "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()


TOKEN = "test-token-0123456789abcdef"


class ApiServer(LocalService):
    """The service for tests: the tests' token, and a scheduler that wakes every 0.3 s."""

    def __init__(self, storage, ray_address, database=None, token=TOKEN, **settings):
        super().__init__(storage, ray_address=ray_address, database=database, token=token,
                         **{"poll_s": 0.3, **settings})


def finish_jobs(server: ApiServer) -> None:
    """Cancel whatever a test left queued or running, so the next test's jobs start at once."""
    with server.client() as client:
        for status in ("queued", "running"):
            for job in client.get("/jobs", params={"status": status, "limit": 500}).json()["items"]:
                client.post(f"/jobs/{job['id']}/cancel")
        for job in client.get("/jobs", params={"status": "running", "limit": 500}).json()["items"]:
            server.wait_for(job["id"], lambda j: j["status"] != "running", timeout=60)


@pytest.fixture(scope="module")
def api_server(ray_cluster, tmp_path_factory):
    """One service (SQLite) shared by a test module; tests leave no job queued or running behind."""
    server = ApiServer(tmp_path_factory.mktemp("service"), ray_cluster["address"]).start()
    yield server
    finish_jobs(server)
    server.stop()
