"""The store on a real PostgreSQL server (Debian's package, installed by scripts/test-deps.sh; started by
conftest.py in a temporary folder on a free port), and the whole service on it."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pandas as pd

from abray.service import store
from support.service import ApiServer
from test_api import TINY
from test_store import assert_one_winner, race_cancel_against_claim


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
    port, name = postgres_url.rsplit(":", 1)[1].split("/")
    count = subprocess.run(["psql", "-h", "127.0.0.1", "-p", port, "-U", "abray", "-d", name, "-tAc",
                            f"SELECT count(*) FROM metrics WHERE job_id = {job_id}"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert count == "8"


def test_values_beyond_postgresqls_columns_are_refused_not_500(postgres_url, ray_cluster, tmp_path):
    # ids are int4 and the name column holds 128 characters here; JSON columns take no Infinity
    server = ApiServer(tmp_path, ray_cluster["address"], database=postgres_url, max_running_jobs=0).start()
    try:
        with server.client() as client:
            for path in ("/jobs/2147483648", "/jobs/2147483648/trials", "/jobs?offset=9223372036854775808"):
                assert client.get(path).status_code == 422, path
            assert client.post("/jobs/2147483648/cancel").status_code == 422
            assert client.get("/jobs/2147483647").status_code == 404
            long_name = client.post("/jobs", json=dict(TINY, name="n" * 10_000))
            assert long_name.status_code == 422 and long_name.json()["detail"][0]["loc"] == ["body", "name"]
            infinite = client.post("/jobs", content=json.dumps(dict(TINY, lr=float("inf"))),
                                   headers={"Content-Type": "application/json"})
            assert infinite.status_code == 422 and infinite.json()["detail"][0]["loc"] == ["body", "lr"]
            assert client.get("/jobs").json()["total"] == 0
        assert httpx.get(f"{server.url}/health").json()["database"]["ok"]
    finally:
        server.stop()


def test_cancel_racing_the_schedulers_claim_has_one_winner_on_postgresql(postgres_url):
    store.connect(postgres_url, create=True).dispose()
    assert_one_winner(race_cancel_against_claim(postgres_url))
