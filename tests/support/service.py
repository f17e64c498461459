"""`abray serve` as a child process on a loopback port: what the tests, the API benchmark and the dashboard's
screenshot script run against (the real service, its real database, a real Ray)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import httpx

from abray.service.cluster import free_port


class LocalService:
    """The service with its storage in `storage` and its log in storage/server.log. `ray_address`: a cluster to
    run jobs on; None lets the service start its own local head. `env`: more environment variables for it.
    `settings`: any abray.service.settings field."""

    def __init__(self, storage: Path, ray_address: Optional[str] = None, database: Optional[str] = None,
                 token: Optional[str] = None, env: Optional[dict] = None, **settings):
        self.storage, self.ray_address, self.database, self.token = Path(storage), ray_address, database, token
        self.settings, self.env = settings, env or {}
        self.port, self.proc, self.log = free_port(), None, self.storage / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 90) -> "LocalService":
        """Start it (again, on the same port, storage and database) and wait until /health says ok."""
        self.storage.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, ABRAY_STORAGE=str(self.storage), **self.env,
                   **{f"ABRAY_{k.upper()}": str(v) for k, v in self.settings.items()})
        for name, value in (("RAY_ADDRESS", self.ray_address), ("ABRAY_TOKEN", self.token),
                            ("ABRAY_DATABASE_URL", self.database)):
            env.pop(name, None)
            if value:
                env[name] = value
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "abray.cli", "serve", "--port", str(self.port),
                                          "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
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
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.auth, timeout=30, **kw)

    def wait_for(self, job_id: int, predicate: Callable[[dict], bool], timeout: float = 120.0,
                 every: float = 0.3) -> dict:
        """Poll GET /jobs/{id} until predicate(job) holds; return the job."""
        deadline = time.time() + timeout
        while True:
            job = httpx.get(f"{self.url}/jobs/{job_id}", headers=self.auth, timeout=30).json()
            if predicate(job):
                return job
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} never reached the expected state; last: {job}")
            time.sleep(every)


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
