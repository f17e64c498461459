"""The scheduler: starts queued jobs' drivers, and fails or cancels jobs whose drivers are gone.

One thread in the API process, waking every `poll_s`. Jobs are claimed through the store's state machine
(queued -> running, a conditional UPDATE), so two API processes on one database never start a job twice. A job is never left
`running` for ever: its driver's exit (seen here when it runs on this host) or a heartbeat older than
`heartbeat_timeout_s` ends it, with the reason in `error`.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Optional

from sqlalchemy import func, select

from . import processes, store
from .cluster import answers, job_cluster
from .settings import Settings


def cluster_capacity(address: str) -> dict[str, float]:
    """The total resources (CPU, GPU, memory...) of the live nodes of the Ray cluster at `address`, from its GCS,
    without joining the cluster as a driver."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    alive = GcsNodeInfo.GcsNodeState.Value("ALIVE")
    total: dict[str, float] = {}
    for info in GcsClient(address=address).get_all_node_info(timeout=10).values():
        if info.state == alive:
            for name, amount in info.resources_total.items():
                total[name] = total.get(name, 0.0) + amount
    return total


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class Scheduler:
    def __init__(self, settings: Settings, sessions):
        self.settings, self.sessions = settings, sessions
        self.children: dict[int, object] = {}  # pid -> Popen, to reap the drivers this process started
        self.ray_address: Optional[str] = None
        self.fixed_cluster = False
        self.ray_error: Optional[str] = None
        self._capacity: Optional[tuple[str, dict]] = None  # (address, resources) of a fixed cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="abray-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.ray_address and self.fixed_cluster and not answers(self.ray_address):
                    self.ray_address = None  # our local head is gone (`ray stop`, say): start another
                if self.ray_address is None:
                    self.fixed_cluster = not os.environ.get("RAY_ADDRESS")  # our local head cannot grow
                    self.ray_address = job_cluster(self.settings.storage)
                    self.ray_error = None
                    self.capacity()  # known before the first submission asks
                self.tick()
            except Exception as err:  # keep scheduling; /health shows what went wrong
                self.ray_error = f"{type(err).__name__}: {err}" if self.ray_address is None else self.ray_error
                traceback.print_exc()
            self._stop.wait(self.settings.poll_s)

    def capacity(self) -> Optional[dict]:
        """The resources of the cluster jobs run on, when it cannot grow (the service's own local head), so that
        submissions of trials it could never place are refused; None when it can grow (RAY_ADDRESS) or is not
        known yet (the drivers check again)."""
        address = self.ray_address
        if not self.fixed_cluster or not address:
            return None
        known = self._capacity
        if known is None or known[0] != address:
            try:
                known = self._capacity = (address, cluster_capacity(address))
                import ray.tune  # noqa: F401  (what checking a trial's needs imports, loaded here, not in a request)
            except Exception as err:
                print(f"could not read the Ray cluster's resources at {address}: {err}", flush=True)
                return None
        return known[1]

    def tick(self) -> None:
        for pid, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[pid]
        self._watch_running()
        self._start_queued()

    def _watch_running(self) -> None:
        now = store.utcnow()
        with self.sessions() as session:
            running = session.scalars(select(store.Job).where(store.Job.status == "running")).all()
        for job in running:
            alive = processes.driver_alive(job.driver_pid, job.driver_host)
            beat = store.aware(job.heartbeat_at or job.started_at)
            silent = beat is None or now - beat > timedelta(seconds=self.settings.heartbeat_timeout_s)
            requested = store.aware(job.cancel_requested_at)
            if requested is not None and alive and now - requested > timedelta(seconds=self.settings.cancel_grace_s):
                processes.kill_driver(job.driver_pid)  # its trials are its actors: Ray ends them with it
                alive = False
            if alive is False or silent:
                if requested is not None:
                    status, error = "cancelled", None
                elif alive is False:
                    tail = _log_tail(Path(job.storage) / "driver.log")
                    status, error = "failed", (f"job driver (pid {job.driver_pid}) exited without finishing the job"
                                               + (f"; its last output: {tail}" if tail else ""))
                else:
                    status, error = "failed", (f"no heartbeat from the job driver for more than "
                                               f"{self.settings.heartbeat_timeout_s:.0f} s (last at {beat})")
                    if alive:
                        processes.kill_driver(job.driver_pid)
                with self.sessions.begin() as session:
                    store.finish(session, job.id, status, error)

    def _start_queued(self) -> None:
        while True:
            with self.sessions() as session:
                running = session.scalar(select(func.count()).select_from(store.Job)
                                         .where(store.Job.status == "running"))
                if running >= self.settings.max_running_jobs:
                    return
                job_id = session.scalar(select(store.Job.id).where(store.Job.status == "queued")
                                        .order_by(store.Job.id).limit(1))
            if job_id is None:
                return
            with self.sessions.begin() as session:
                claimed = store.claim(session, job_id)
                storage = Path(session.get(store.Job, job_id).storage)
            if not claimed:
                continue  # another API process took it, or it was cancelled meanwhile
            child = processes.launch(job_id, self.settings.database, self.ray_address, self.fixed_cluster,
                                     storage / "driver.log")
            self.children[child.pid] = child
            with self.sessions.begin() as session:
                store.set_driver(session, job_id, child.pid, socket.gethostname())
