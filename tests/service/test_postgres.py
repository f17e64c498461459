"""The store on a real PostgreSQL server (Debian's package, installed by scripts/test-deps.sh), started here
in a temporary folder on a free port, and the whole service on it."""

import glob
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from abray.service.cluster import free_port
from support.service import ApiServer
from test_api import TINY


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root; Debian's package makes the postgres user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL's server is not installed: run scripts/test-deps.sh (make test does)"
    bin_dir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="abray-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "abray", "--no-sync"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                                 "-w", "start"]), check=True, capture_output=True)
    try:
        subprocess.run(_as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "abray",
                                     "abray"]), check=True, capture_output=True)
        yield f"postgresql://abray@127.0.0.1:{port}/abray"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_a_job_runs_with_its_results_in_postgresql(postgres_url, ray_cluster, tmp_path):
    server = ApiServer(tmp_path, ray_cluster["address"], database=postgres_url).start()
    try:
        with server.client() as client:
            health = client.get("/health").json()
            assert health["database"]["dialect"] == "postgresql" and health["database"]["ok"]

            def post(i):  # concurrent retries with one key still give one job on PostgreSQL
                return client.post("/jobs", json=TINY, headers={"Idempotency-Key": "pg-once"})

            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(post, range(8)))
            assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
            job_id = responses[0].json()["id"]
            assert {r.json()["id"] for r in responses} == {job_id}
            done = server.wait_for(job_id, lambda j: j["status"] not in ("queued", "running"))
            assert done["status"] == "succeeded" and done["progress"]["done"] == 4
        frame = pd.read_parquet(f"{server.url}/jobs/{job_id}/results?format=parquet")
        assert len(frame) == 8 and frame.trial_id.nunique() == 4 and frame.test_accuracy.notna().all()
    finally:
        server.stop()

    # the rows are in PostgreSQL itself, read with psql
    port = postgres_url.rsplit(":", 1)[1].split("/")[0]
    count = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "abray", "-d", "abray", "-tAc",
                            f"SELECT count(*) FROM metrics WHERE job_id = {job_id}"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert count == "8"
