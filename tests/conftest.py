import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class ApiServer:
    """`abray serve` in its own process on a loopback port: real uvicorn, a real database, the session's Ray."""

    def __init__(self, storage: Path, ray_address: str, database: str | None = None, token: str | None = TOKEN,
                 **settings):
        self.storage, self.ray_address, self.database, self.token = storage, ray_address, database, token
        self.settings = {"poll_s": 0.3, **settings}
        self.port, self.proc, self.log = free_port(), None, storage / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> "ApiServer":
        import httpx

        self.storage.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ABRAY_STORAGE=str(self.storage),
                   **{f"ABRAY_{k.upper()}": str(v) for k, v in self.settings.items()})
        env.pop("RAY_ADDRESS", None)
        if self.ray_address:  # otherwise the service starts its own local head
            env["RAY_ADDRESS"] = self.ray_address
        env.pop("ABRAY_TOKEN", None)
        if self.token:
            env["ABRAY_TOKEN"] = self.token
        if self.database:
            env["ABRAY_DATABASE_URL"] = self.database
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "abray.cli", "serve", "--port", str(self.port),
                                          "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"abray serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"abray serve did not become healthy:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def client(self, **kw):
        import httpx

        return httpx.Client(base_url=self.url, headers=self.auth, timeout=30, **kw)

    def wait_for(self, job_id: int, predicate, timeout: float = 120.0) -> dict:
        """Poll GET /jobs/{id} until predicate(job) holds; return the job."""
        import httpx

        deadline = time.time() + timeout
        while True:
            job = httpx.get(f"{self.url}/jobs/{job_id}", headers=self.auth, timeout=30).json()
            if predicate(job):
                return job
            if time.time() > deadline:
                raise AssertionError(f"job {job_id} never reached the expected state; last: {job}")
            time.sleep(0.3)


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
