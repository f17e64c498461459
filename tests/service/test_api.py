"""The job service against a real uvicorn server, a real SQLite file and the session's Ray cluster."""

import os
import re
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pandas as pd
import pytest

from abray.results import CONFIG_COLUMNS, METRIC_COLUMNS
from abray.service import processes
from abray.service.background import STOPPED
from abray.service.store import SCHEMA_VERSION
from support.service import ApiServer, finish_jobs

TINY = {"name": "tiny", "epochs": 2, "batch_size": 64, "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 8]}}
# long enough to be caught mid-run: 4 trials of 15 epochs, 2 at a time
LONG = {"name": "long", "epochs": 15, "batch_size": 32, "grid": {"optimizer": ["sgdm", "ab"], "seed": [0, 1]}}


def submit(client, spec, **headers):
    response = client.post("/jobs", json=spec, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


def metric_rows(server, job_id) -> int:
    return len(httpx.get(f"{server.url}/jobs/{job_id}/results", timeout=30).json())


def test_full_job_from_submission_to_results(api_server):
    spec = dict(TINY, grid={"delay": [0, 8], "rho": [0.5, 1.5]})  # AB at two brake strengths
    with api_server.client() as client:
        job = submit(client, spec)
        assert job["status"] == "queued" and job["progress"]["total"] == 4 and job["progress"]["pending"] == 4
        done = api_server.wait_for(job["id"], lambda j: j["status"] not in ("queued", "running"))
        assert done["status"] == "succeeded", done
        assert done["progress"] == {"total": 4, "done": 4, "running": 0, "failed": 0, "diverged": 0,
                                    "cancelled": 0, "pending": 0, "epochs": 8}
        assert done["started_at"] <= done["finished_at"] and done["error"] is None

        trials = client.get(f"/jobs/{job['id']}/trials").json()
        assert len(trials) == 4 and all(t["status"] == "succeeded" and t["epochs_reported"] == 2 for t in trials)
        assert {(t["config"]["rho"], t["config"]["delay"]) for t in trials} == {
            (r, d) for r in (0.5, 1.5) for d in (0, 8)}

    base = f"{api_server.url}/jobs/{job['id']}/results"
    csv = pd.read_csv(f"{base}?format=csv")  # pandas reads the URLs directly
    parquet = pd.read_parquet(f"{base}?format=parquet")
    records = pd.read_json(f"{base}?format=json")
    columns = ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
    for frame in (csv, parquet, records):
        assert list(frame.columns) == columns and len(frame) == 8
        assert sorted(frame.epoch.unique()) == [1, 2] and (frame.job_id == job["id"]).all()
    assert parquet.test_accuracy.tolist() == pytest.approx(csv.test_accuracy.tolist())
    assert (parquet.test_accuracy > 0.1).all()  # two epochs on digits learn something

    # the summary keeps the two rho apart (seed is the only thing pooled), in percent like `abray results`
    summary = httpx.get(f"{api_server.url}/jobs/{job['id']}/summary").json()
    assert summary["group_by"] == ["optimizer", "delay", "rho"] and len(summary["rows"]) == 4
    last = parquet[parquet.epoch == 2]
    for row in summary["rows"]:
        match = last[(last.delay == row["delay"]) & (last.rho == row["rho"])]
        assert len(match) == 1 and row["count"] == 1 and row["accuracy_std"] is None
        assert row["accuracy_mean"] == pytest.approx(100 * float(match.test_accuracy.iloc[0]))


def test_bad_input_is_refused_and_leaves_no_row(api_server):
    with api_server.client() as client:
        before = client.get("/jobs").json()["total"]
        cases = [
            ({"grid": {"delay": [-1]}}, ["body", "grid", "delay", 0], "delay=-1: Input should be greater than or equal to 0"),
            ({"grid": {"colour": [1]}}, ["body", "grid", "colour"], "allowed: delay, optimizer"),
            ({"optimizer": "adamw"}, ["body", "optimizer"], "'sgdm', 'ab'"),
            ({"momentum": 1.5}, ["body", "momentum"], "less than 1"),
            ({"grid": {"delay": list(range(100)), "seed": list(range(60))}}, ["body", "grid"],
             "sweep has 6000 trials, more than this service accepts (5000); shrink the grid"),
            ({"storage": "/etc"}, ["body", "storage"], "set by the service"),
            ({"output": "/tmp/x.csv"}, ["body", "output"], "set by the service"),
        ]
        for spec, loc, text in cases:
            response = client.post("/jobs", json=spec)
            assert response.status_code == 422, (spec, response.text)
            detail = response.json()["detail"]
            assert any(d["loc"][:len(loc)] == loc and text in d["msg"] for d in detail), (spec, detail)
        assert client.post("/jobs", content=b"[1, 2]", headers={"Content-Type": "application/json"}).status_code == 422
        assert client.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
        assert client.get("/jobs", params={"status": "exploded"}).status_code == 422
        assert client.get("/jobs/999999").status_code == 404
        assert client.get("/jobs/999999/results").status_code == 404
        assert client.post("/jobs/999999/cancel").status_code == 404
        assert client.get("/jobs/1/results", params={"format": "xlsx"}).status_code == 422
        assert client.get("/jobs").json()["total"] == before  # nothing half-written

    # writes need the token; reads are open by default
    assert httpx.post(f"{api_server.url}/jobs", json=TINY).status_code == 401
    wrong = httpx.post(f"{api_server.url}/jobs", json=TINY, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert httpx.post(f"{api_server.url}/jobs/1/cancel").status_code == 401
    assert httpx.get(f"{api_server.url}/jobs").status_code == 200


def test_idempotency_key_never_creates_two_jobs(api_server):
    with api_server.client() as client:
        first = client.post("/jobs", json=dict(TINY, name="idem"), headers={"Idempotency-Key": "k-1"})
        again = client.post("/jobs", json=dict(TINY, name="idem"), headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 201 and again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true" and again.json()["id"] == first.json()["id"]
        warmup = "warmup_epochs (5) >= epochs (2): the learning rate never leaves warmup"
        assert any(w.startswith(warmup) for w in first.json()["warnings"]) and again.json()["warnings"]
        other = client.post("/jobs", json=dict(TINY, name="other"), headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 409 and "another spec" in other.json()["detail"]
        finish_jobs(api_server)


def test_health_reports_database_and_ray(api_server):
    health = httpx.get(f"{api_server.url}/health").json()
    assert health["status"] == "ok" and health["database"]["ok"] and health["database"]["dialect"] == "sqlite"
    assert health["database"]["schema_version"] == SCHEMA_VERSION and health["ray"]["ok"]
    assert health["ray"]["address"] == api_server.ray_address and set(health["jobs"]) >= {"queued", "running"}
    assert "/jobs" in httpx.get(f"{api_server.url}/openapi.json").json()["paths"]


def test_concurrent_submissions_all_land_exactly_once(ray_cluster, tmp_path):
    # max_running_jobs=0: the jobs stay queued, so this tests the API and database, not the cluster
    server = ApiServer(tmp_path, ray_cluster["address"], max_running_jobs=0).start()
    try:
        def post(i):
            with server.client() as client:  # one connection per client, 50 at once
                key = {"Idempotency-Key": f"batch-{i % 40}"} if i < 80 else {}
                return client.post("/jobs", json=dict(TINY, name=f"c{i % 40 if i < 80 else i}"), headers=key)

        # 80 requests carrying 40 keys (each sent twice, concurrently) and 10 without a key: 50 jobs
        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(post, range(90)))
        ids = [r.json()["id"] for r in responses]
        assert all(r.status_code in (200, 201) for r in responses)
        assert sum(r.status_code == 201 for r in responses) == 50 and len(set(ids)) == 50
        with server.client() as client:
            listed = client.get("/jobs", params={"limit": 500}).json()
            assert listed["total"] == 50 and sorted(j["id"] for j in listed["items"]) == sorted(set(ids))
            assert [j["id"] for j in listed["items"]] == sorted(set(ids), reverse=True)  # newest first
            page = client.get("/jobs", params={"limit": 20, "offset": 40}).json()
            assert len(page["items"]) == 10 and page["total"] == 50
            assert client.get("/jobs", params={"status": "queued"}).json()["total"] == 50
            assert client.get("/jobs", params={"status": "running"}).json()["total"] == 0
            # no job ever starts here, so a cancel always finds one queued: cancelled at once (200), never run;
            # a second cancel is a conflict
            cancelled = client.post(f"/jobs/{ids[0]}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled" and cancelled.json()["started_at"] is None
            again = client.post(f"/jobs/{ids[0]}/cancel")
            assert again.status_code == 409 and "already finished (cancelled)" in again.json()["detail"]
    finally:
        server.stop()


def test_cancel_stops_the_trials(api_server, ray_cluster):
    import ray

    with api_server.client() as client:
        job = submit(client, LONG)
        api_server.wait_for(job["id"], lambda j: j["progress"]["running"] > 0 and metric_rows(api_server, j["id"]) > 0)
        response = client.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 202 and response.json()["cancel_requested_at"]
        done = api_server.wait_for(job["id"], lambda j: j["status"] != "running", timeout=60)
        assert done["status"] == "cancelled" and done["progress"]["running"] == 0
        assert done["progress"]["done"] < 4  # it did not run to the end
        rows = metric_rows(api_server, job["id"])
    deadline = time.time() + 30  # the trials' CPUs come back to the cluster: their actors are gone
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]
    assert metric_rows(api_server, job["id"]) == rows  # and reported nothing after the job was cancelled


def test_a_running_job_survives_an_api_restart(ray_cluster, tmp_path):
    server = ApiServer(tmp_path, ray_cluster["address"]).start()
    try:
        with server.client() as client:
            job = submit(client, dict(LONG, epochs=8))
        server.wait_for(job["id"], lambda j: metric_rows(server, j["id"]) > 0)
        server.stop(signal.SIGKILL)  # the API dies without any shutdown

        def rows_in_db():
            with sqlite3.connect(tmp_path / "abray.db") as db:
                return db.execute("SELECT count(*) FROM metrics WHERE job_id = ?", (job["id"],)).fetchone()[0]

        down = rows_in_db()
        deadline = time.time() + 60
        while rows_in_db() == down and time.time() < deadline:
            time.sleep(0.5)
        assert rows_in_db() > down  # the job went on while no API ran
        server.start()  # the same port, storage and database: a restart
        done = server.wait_for(job["id"], lambda j: j["status"] != "running", timeout=180)
        assert done["status"] == "succeeded", done
        frame = pd.read_parquet(f"{server.url}/jobs/{job['id']}/results?format=parquet")
        assert len(frame) == 4 * 8  # every epoch of every trial, none lost across the restart
        assert all(sorted(g.epoch) == list(range(1, 9)) for _, g in frame.groupby("trial_id"))
    finally:
        finish_jobs(server)
        server.stop()


def test_a_trial_that_crashes_fails_its_job_with_its_own_error(api_server):
    # The session's Ray advertises a GPU: a trial on a CUDA device that no machine here has is placed, and crashes
    # in torch. (A step that fails at every try is tested in tests/training/test_faults.py: a value that makes
    # workers crash, such as slowdown 1e15, can no longer reach them through the API, which bounds every number.)
    spec = {"name": "failing", "epochs": 1, "batch_size": 64, "device": "cuda:99"}
    with api_server.client() as client:
        job = submit(client, spec)
        done = api_server.wait_for(job["id"], lambda j: j["status"] not in ("queued", "running"))
        trials = client.get(f"/jobs/{job['id']}/trials").json()
    assert done["status"] == "failed" and done["progress"]["failed"] == 1
    assert done["error"].startswith("all 1 trials failed; first error: ") and trials[0]["status"] == "failed"
    assert trials[0]["error"] and trials[0]["error"] in done["error"]  # the trial's own text, in the job's


def test_a_job_whose_driver_died_is_marked_failed(api_server):
    import os

    with api_server.client() as client:
        job = submit(client, LONG)
        api_server.wait_for(job["id"], lambda j: metric_rows(api_server, j["id"]) > 0)
    db = sqlite3.connect(api_server.storage / "abray.db")
    pid = db.execute("SELECT driver_pid FROM jobs WHERE id = ?", (job["id"],)).fetchone()[0]
    db.close()
    os.killpg(pid, signal.SIGKILL)
    done = api_server.wait_for(job["id"], lambda j: j["status"] != "running", timeout=30)
    assert done["status"] == "failed" and f"job driver (pid {pid}) exited without finishing" in done["error"]


def test_generated_token_is_printed_once_and_reads_can_need_it(ray_cluster, tmp_path):
    server = ApiServer(tmp_path, ray_cluster["address"], token=None, max_running_jobs=0).start()
    try:
        lines = [line for line in server.log.read_text().splitlines() if "abray API token" in line]
        assert len(lines) == 1
        server.token = lines[0].rsplit(": ", 1)[1]
        with server.client() as client:
            assert client.post("/jobs", json=TINY).status_code == 201
        server.stop()
        server.settings["reads_need_token"] = 1
        server.start()
        assert sum("abray API token" in line for line in server.log.read_text().splitlines()) == 1  # not again
        assert httpx.get(f"{server.url}/jobs").status_code == 401
        assert httpx.get(f"{server.url}/jobs/1/results").status_code == 401
        # /health: its status for anyone; the database's path and the Ray address only with the token
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "database": None, "ray": None,
                                                            "jobs": None, "links": {}}
        detailed = httpx.get(f"{server.url}/health", headers=server.auth).json()
        assert str(tmp_path) in detailed["database"]["url"] and detailed["ray"]["address"] == server.ray_address
        with server.client() as client:  # the same token still works after the restart
            assert client.get("/jobs").json()["total"] == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_serve_refuses_bad_settings_before_starting(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "abray.cli", "serve", "--max-running-jobs", "-1", "--storage",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ABRAY_MAX_RUNNING_JOBS: Input should be greater than or equal to 0" in done.stderr
    assert not (tmp_path / "abray.db").exists()


@pytest.mark.slow
def test_without_ray_address_jobs_run_on_the_services_own_head_which_outlives_a_restart_and_stops_alone(tmp_path):
    """The service's own head: reused after an API restart; `abray serve --stop` ends the service and that head,
    and leaves the machine as `ray stop` would have for it: no process of the head, and Ray's record of the
    current cluster no longer names it, so `ray.init(num_cpus=...)` starts a new instance again (it failed with
    "When connecting to an existing cluster, num_cpus and num_gpus must not be provided" before)."""
    import json as json_
    import shutil
    import subprocess
    import sys
    import tempfile

    import ray  # noqa: F401  (Ray vendors psutil, and puts it on the path)
    import psutil

    from abray.service.cluster import answers

    # Ray's temp folder of its own (short: Ray's socket paths must fit in 107 bytes), so that the record of the
    # current cluster is this head's alone, whatever other Ray instances this machine runs
    ray_tmp = Path(tempfile.mkdtemp(prefix="abr", dir="/tmp"))
    env = {"RAY_TMPDIR": str(ray_tmp)}
    server = ApiServer(tmp_path, ray_address=None, env=env).start()
    try:
        record = json_.loads((tmp_path / "ray_head.json").read_text())
        address, session = record["address"], record["session"]
        assert httpx.get(f"{server.url}/health").json()["ray"] == {"address": address, "ok": True}
        with server.client() as client:
            # the service's own head cannot grow: a trial bigger than it is refused at submission, with the numbers
            big = client.post("/jobs", json=dict(TINY, mode="free", workers=64, cpus_per_worker=16))
            assert big.status_code == 422, big.text
            message = big.json()["detail"][0]["msg"]
            assert re.fullmatch(r"a free trial needs 1025 CPUs \(1 for the trial \+ 64 workers x 16\), but the Ray "
                                r"cluster has \d+ and cannot grow; lower workers or cpus_per_worker", message), message
            assert client.get("/jobs").json()["total"] == 0
            job = submit(client, dict(TINY, grid={"optimizer": ["ab"]}))
        assert server.wait_for(job["id"], lambda j: j["status"] not in ("queued", "running"))["status"] == "succeeded"
        server.stop()
        server.start()
        health = httpx.get(f"{server.url}/health").json()
        assert health["ray"]["address"] == address  # the same head, reused
        assert health["links"]["ray_dashboard"] == record["dashboard_url"]  # its dashboard runs, and is linked
        assert server.log.read_text().count("starting a local Ray head") == 1
        current_cluster = ray_tmp / "ray" / "ray_current_cluster"
        assert current_cluster.read_text().strip() == address  # what `ray start` wrote
        head = [p for p in psutil.process_iter() if _session(p) == session]
        assert any(p.name() == "raylet" for p in head) and any(p.name() == "gcs_server" for p in head)
        with server.client() as client:  # a job still running when the service stops
            long_job = submit(client, LONG)
        server.wait_for(long_job["id"], lambda j: j["status"] == "running")
        driver_pid = _driver_pid(tmp_path / "abray.db", long_job["id"])
        assert processes.driver_alive(driver_pid, socket.gethostname())
    finally:
        stop = subprocess.run([sys.executable, "-m", "abray.cli", "serve", "--stop", "--storage", str(tmp_path)],
                              capture_output=True, text=True, timeout=120, env=dict(os.environ, **env))
        server.proc.wait(timeout=30)
    assert stop.returncode == 0, stop.stderr
    assert f"stopping the local Ray head at {address}" in stop.stdout and "stopping abray serve" in stop.stdout
    # its driver ended with the head, and the job says why it stopped
    assert "ended 1 running job on the head; 1 marked cancelled" in stop.stdout, stop.stdout
    assert not processes.driver_alive(driver_pid, socket.gethostname())
    with sqlite3.connect(tmp_path / "abray.db") as db:
        status, error = db.execute("SELECT status, error FROM jobs WHERE id = ?", (long_job["id"],)).fetchone()
    assert (status, error) == ("cancelled", STOPPED)
    assert not answers(address) and not [p for p in psutil.process_iter() if _session(p) == session and _running(p)]
    assert not current_cluster.exists() and not (tmp_path / "ray_head.json").exists()
    init = subprocess.run([sys.executable, "-c", "import ray; ray.init(num_cpus=1, include_dashboard=False); "
                           "print(ray.cluster_resources()['CPU']); ray.shutdown()"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, **env))
    assert init.returncode == 0 and init.stdout.split()[-1] == "1.0", init.stderr[-2000:]
    shutil.rmtree(ray_tmp, ignore_errors=True)


def _driver_pid(database: Path, job_id: int, timeout: float = 30.0) -> int:
    """The job's driver process, as the scheduler records it right after starting it."""
    deadline = time.time() + timeout
    while True:
        with sqlite3.connect(database) as db:
            pid = db.execute("SELECT driver_pid FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        if pid is not None or time.time() > deadline:
            assert pid is not None, f"job {job_id} has no driver after {timeout:.0f} s"
            return pid
        time.sleep(0.2)


def _running(proc) -> bool:
    """Not a zombie: one has exited and waits only for its parent (init, here) to reap it."""
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _session(proc):
    try:
        return os.getsid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None
