"""The job service under load, against a live `abray serve` (uvicorn, one process) on loopback.

1. Submission throughput: 50 concurrent clients (threads, one HTTP connection each) each POST
   `--per-client` sweep specs; reported: jobs accepted per second, and the check that every one landed once.
   The service runs with max_running_jobs = 0, so this measures the API and the database, not training.
2. Result-query latency: p50 and p99 of GET /jobs/{id}/results for a running job with 10,000 metric rows
   (100 trials x 100 epochs, written through the store as a job driver writes them), in JSON, CSV and
   Parquet, `--queries` sequential requests each, interleaved. Twice: with a new epoch recorded before every
   round of queries (the worst case: each body is read from the database and built), and with none between
   queries (a dashboard polling between epochs, or anyone reading a finished job: bodies come from the cache).
3. Refusing a 10^7-point grid (a 1.3 KB spec: four lists of 100, 100, 100 and 10 values): the time to its 422,
   `--refusals` times, with the API's resident memory before and after and the slowest /health answer while
   the refusals run (another client polls it every 50 ms).

The client and the server share this machine's cores, so throughput is a floor for the server alone.

    python benchmarks/api_throughput.py [--database postgresql://...] [--per-client 4] [--queries 200]
                                        [--refusals 20]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test support: LocalService
from support.service import LocalService  # noqa: E402

TOKEN = "benchmark-token-0123456789"
SPEC = {"name": "load", "epochs": 2, "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 8, 32], "seed": [0, 1]}}


def submissions(url: str, clients: int, per_client: int) -> None:
    def client_run(i: int) -> list[int]:
        ids = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
            for j in range(per_client):
                r = client.post("/jobs", json=dict(SPEC, name=f"load-{i}-{j}"),
                                headers={"Idempotency-Key": f"load-{i}-{j}"})
                r.raise_for_status()
                ids.append(r.json()["id"])
        return ids

    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        ids = [i for chunk in pool.map(client_run, range(clients)) for i in chunk]
        elapsed = time.perf_counter() - start
    listed = httpx.get(f"{url}/jobs", params={"limit": 1}).json()["total"]
    print(f"submission: {len(ids)} jobs from {clients} concurrent clients in {elapsed:.2f} s = "
          f"{len(ids) / elapsed:.0f} jobs/s; distinct ids {len(set(ids))}, jobs listed {listed}")


def fill_job(database: str, job_id: int, trials: int = 100, epochs: int = 100) -> None:
    """10,000 metric rows for one job, written with the store's own functions (as a driver would); the job
    is marked running, as a driver marks it."""
    from abray.service import store
    from abray.training.config import TrainConfig

    sessions = store.session_factory(store.connect(database))
    rng = random.Random(0)
    with sessions.begin() as session:
        job = session.get(store.Job, job_id)
        job.status, job.started_at = "running", store.utcnow()
        job.heartbeat_at = job.started_at  # no driver: the server runs with a long heartbeat timeout
        for t in range(trials):
            config = TrainConfig(optimizer=["sgdm", "ab"][t % 2], delay=[0, 4, 8, 16, 32][t // 2 % 5],
                                 seed=t // 10).model_dump()
            trial_id = f"bench_{t:05d}"
            store.record_trial(session, job_id, trial_id, config, "succeeded")
            session.flush()
            for e in range(1, epochs + 1):
                store.record_epoch(session, job_id, trial_id, {
                    "epoch": e, "steps": 44 * e, "train_loss": rng.random(), "test_loss": rng.random(),
                    "test_accuracy": rng.random(), "wall_time": 0.5 * e, "lr": 0.03, "diverged": False,
                    "diverged_step": None, "staleness_mean": 4.0, "staleness_max": 9,
                    "staleness_hist": {str(k): rng.randrange(100) for k in range(10)}})


class NewEpochs:
    """Records one more epoch of the first trial each call, as a running driver would."""

    def __init__(self, database: str, job_id: int):
        from abray.service import store

        self.store, self.job_id, self.epoch = store, job_id, 100
        self.sessions = store.session_factory(store.connect(database))

    def __call__(self) -> None:
        self.epoch += 1
        with self.sessions.begin() as session:
            self.store.record_epoch(session, self.job_id, "bench_00000", {
                "epoch": self.epoch, "steps": 44 * self.epoch, "train_loss": 0.1, "test_loss": 0.1,
                "test_accuracy": 0.9, "wall_time": 0.5 * self.epoch, "lr": 0.03, "diverged": False,
                "diverged_step": None, "staleness_mean": 4.0, "staleness_max": 9, "staleness_hist": {"4": 44}})


def latencies(url: str, job_id: int, queries: int, label: str, between=None) -> None:
    timings: dict[str, list[float]] = {"json": [], "csv": [], "parquet": []}
    sizes = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for fmt in timings:  # warm-up
            sizes[fmt] = len(client.get(f"/jobs/{job_id}/results", params={"format": fmt}).content)
        for _ in range(queries):
            if between is not None:
                between()
            for fmt in timings:
                start = time.perf_counter()
                r = client.get(f"/jobs/{job_id}/results", params={"format": fmt})
                r.raise_for_status()
                timings[fmt].append(time.perf_counter() - start)
    rows = len(httpx.get(f"{url}/jobs/{job_id}/results").json())
    print(f"results of a running job with {rows} metric rows, {label}, {queries} queries each:")
    for fmt, t in timings.items():
        ms = np.array(t) * 1000
        print(f"  {fmt:8s} p50 {np.percentile(ms, 50):6.1f} ms   p99 {np.percentile(ms, 99):6.1f} ms   "
              f"({sizes[fmt] / 1e6:.2f} MB)")


HUGE_GRID = {"name": "huge", "grid": {"delay": list(range(100)), "seed": list(range(100)),
                                      "lr": [round(0.001 * (i + 1), 3) for i in range(100)],
                                      "rho": [round(0.1 * i, 1) for i in range(10)]}}


def resident_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS), or its peak so far (VmHWM), in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def refusals(service: LocalService, count: int) -> None:
    """POST the huge grid `count` times (and for at least a second), while another client polls /health."""
    body = json.dumps(HUGE_GRID).encode()
    points = 1
    for values in HUGE_GRID["grid"].values():
        points *= len(values)
    health: list[tuple[float, float]] = []  # (start, seconds) of each /health answer
    stop = threading.Event()

    def poll_health():
        with httpx.Client(base_url=service.url, timeout=60) as client:
            while not stop.is_set():
                start = time.perf_counter()
                client.get("/health")
                health.append((start, time.perf_counter() - start))
                stop.wait(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    while not health:  # the poller's connection is open
        time.sleep(0.01)
    rss_before, peak_before = resident_mb(service.proc.pid), resident_mb(service.proc.pid, "VmHWM")
    timings, statuses = [], set()
    with httpx.Client(base_url=service.url, headers=service.auth, timeout=120) as client:
        client.get("/jobs", params={"limit": 1})  # the connection is open: time the refusals alone
        began = time.perf_counter()
        while len(timings) < count or time.perf_counter() - began < 1.0:
            start = time.perf_counter()
            r = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
            timings.append(time.perf_counter() - start)
            statuses.add(r.status_code)
        ended = time.perf_counter()
    stop.set()
    poller.join()
    rss_after, peak_after = resident_mb(service.proc.pid), resident_mb(service.proc.pid, "VmHWM")
    during = [seconds for start, seconds in health if start < ended and start + seconds > began]
    ms = np.array(timings) * 1000
    print(f"a {points:,}-point grid ({len(body) / 1000:.1f} KB) refused with {sorted(statuses)}: p50 "
          f"{np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms over {len(timings)}; API memory "
          f"{rss_before:.0f} -> {rss_after:.0f} MB (peak {peak_before:.0f} -> {peak_after:.0f} MB); slowest of {len(during)} /health answers meanwhile "
          f"{max(during, default=0) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="SQLAlchemy URL (default: an SQLite file in a temporary folder)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--refusals", type=int, default=20)
    args = parser.parse_args()

    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)  # /health wants a cluster
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        database = args.database or f"sqlite:///{storage / 'abray.db'}"
        service = LocalService(storage, ray_address=ray.get_runtime_context().gcs_address, database=database,
                               token=TOKEN, max_running_jobs=0, heartbeat_timeout_s=86400).start()
        url = service.url
        try:
            submissions(url, args.clients, args.per_client)
            job = httpx.post(f"{url}/jobs", json=dict(SPEC, name="big"), headers=service.auth).json()
            fill_job(database, job["id"])
            latencies(url, job["id"], args.queries, "a new epoch before each round (built)",
                      between=NewEpochs(database, job["id"]))
            latencies(url, job["id"], args.queries, "no new epoch between queries (cached)")
            refusals(service, args.refusals)
        finally:
            service.stop()
    ray.shutdown()


if __name__ == "__main__":
    main()
