"""The service's client, against the live service: `abray.client` in Python, and the `abray` commands on it
(submit, jobs, job, cancel, fetch), each run as the user runs them, in a new process."""

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pandas as pd
import pytest

from abray.client import Client, ServiceError
from abray.results import CONFIG_COLUMNS, METRIC_COLUMNS
from abray.service.cluster import free_port

SPEC = {"name": "client", "epochs": 2, "batch_size": 64, "grid": {"delay": [0, 4], "rho": [0.5, 1.5]}}


@pytest.fixture(scope="module")
def finished_job(api_server) -> dict:
    """SPEC submitted through the client and waited for: (the job's id, what the API itself serves)."""
    with Client(api_server.url, api_server.token) as client:
        job = client.submit(SPEC).wait(progress=False, poll_s=0.3, timeout_s=180)
    assert job.status == "succeeded", job.info
    parquet = pd.read_parquet(f"{api_server.url}/jobs/{job.id}/results?format=parquet")
    summary = httpx.get(f"{api_server.url}/jobs/{job.id}/summary").json()
    return {"id": job.id, "parquet": parquet, "summary": summary}


def test_a_submitted_sweep_comes_back_as_dataframes(api_server, finished_job):
    with Client(api_server.url, api_server.token) as client:
        job = client.job(finished_job["id"])
        results = job.results()
        assert list(results.columns) == ["job_id", "trial_id"] + CONFIG_COLUMNS + METRIC_COLUMNS
        pd.testing.assert_frame_equal(results, finished_job["parquet"])
        summary = job.summary()
        assert list(summary.columns) == ["optimizer", "delay", "rho", "accuracy_mean", "accuracy_std", "count",
                                         "diverged"]
        assert len(summary) == 4
        expected = {(r["delay"], r["rho"]): r["accuracy_mean"] for r in finished_job["summary"]["rows"]}
        assert {(r.delay, r.rho): r.accuracy_mean for r in summary.itertuples()} == pytest.approx(expected)
        trials = job.trials()
        assert len(trials) == 4 and set(trials.status) == {"succeeded"} and set(trials.rho) == {0.5, 1.5}
        assert finished_job["id"] in [j.id for j in client.jobs()]


def test_refusals_say_what_is_wrong_and_what_to_do(api_server):
    with Client(api_server.url, api_server.token) as client:
        with pytest.raises(ServiceError) as bad:
            client.submit({"grid": {"delay": [0]}, "momentum": 1.5, "optimizer": "adamw"})
        assert bad.value.status == 422
        assert "momentum: Input should be less than 1" in str(bad.value) and "optimizer:" in str(bad.value)
        with pytest.raises(ServiceError, match="job 999999 not found"):
            client.job(999999)
    with Client(api_server.url, token="wrong-token-0123456789") as stranger:
        with pytest.raises(ServiceError, match=r"needs its API token \(wrong bearer token\): pass --token or set ABRAY_TOKEN") as refused:
            stranger.submit(SPEC)
        assert refused.value.status == 401
    with Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff_s=0.05) as nobody:
        with pytest.raises(ServiceError, match="cannot reach the abray service .* is `abray serve` running"):
            nobody.jobs()


class FlakyProxy(ThreadingHTTPServer):
    """Forwards to the service, but answers the first GET of a job with a 503, and drops the connection after
    forwarding the first POST /jobs, as a network that loses an answer would: the service has made the job,
    the client never hears of it."""

    def __init__(self, upstream: str):
        self.upstream, self.seen = upstream, []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    def _forward(self, method: str):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        first = (method, self.path.split("?")[0]) not in [(m, p.split("?")[0]) for m, p, _ in self.server.seen]
        self.server.seen.append((method, self.path, self.headers.get("Idempotency-Key")))
        if first and method == "GET" and self.path.startswith("/jobs/"):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type",
                                                                           "idempotency-key")}
        answer = httpx.request(method, self.server.upstream + self.path, content=body, headers=headers, timeout=30)
        if first and method == "POST" and self.path == "/jobs":
            self.close_connection = True  # the job exists now; its answer is lost
            return
        self.send_response(answer.status_code)
        for k, v in answer.headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def do_GET(self):
        self._forward("GET")

    def do_POST(self):
        self._forward("POST")

    def log_message(self, *args):
        pass


def test_retries_never_make_a_second_job_and_ride_out_a_503(api_server):
    proxy = FlakyProxy(api_server.url)
    try:
        with Client(api_server.url, api_server.token) as direct:
            before = {j.id for j in direct.jobs(limit=500)}
        with Client(proxy.url, api_server.token, backoff_s=0.05) as client:
            job = client.submit(dict(SPEC, name="flaky"))
            again = client.job(job.id)  # the first GET is a 503; the retry gets it
        posts = [s for s in proxy.seen if s[0] == "POST"]
        assert len(posts) == 2 and posts[0][2] == posts[1][2] is not None  # one key, sent twice
        with Client(api_server.url, api_server.token) as direct:
            made = {j.id for j in direct.jobs(limit=500)} - before
            direct.job(job.id).cancel()
        assert made == {job.id} and again.id == job.id
        assert [s[0] for s in proxy.seen].count("GET") == 2
    finally:
        proxy.shutdown()


def abray(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "abray.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})), cwd=cwd)


def test_the_abray_commands_submit_follow_cancel_and_fetch(api_server, finished_job, tmp_path):
    env = {"ABRAY_URL": api_server.url, "ABRAY_TOKEN": api_server.token}
    (tmp_path / "sweep.yaml").write_text("name: cli\nepochs: 1\nbatch_size: 64\ngrid:\n  delay: [0, 2]\n")
    done = abray("submit", "sweep.yaml", "--wait", "--poll", "0.3", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    job_id = int(done.stdout.split()[1])
    assert f"job {job_id} (cli): succeeded, 2/2 done" in done.stdout
    assert "accuracy (%)" in done.stdout and "Traceback" not in done.stderr

    listed = abray("jobs", "--url", api_server.url, cwd=tmp_path)  # flags instead of the environment
    assert listed.returncode == 0 and listed.stdout.split()[0] == str(job_id)  # newest first
    one = abray("job", str(finished_job["id"]), env=env)
    assert one.returncode == 0 and "succeeded, 4/4 done" in one.stdout and "rho" in one.stdout

    out = tmp_path / "r.parquet"
    fetched = abray("fetch", str(finished_job["id"]), "-o", str(out), env=env)
    assert fetched.returncode == 0, fetched.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(out), finished_job["parquet"])

    late = abray("cancel", str(finished_job["id"]), env=env)
    assert late.returncode == 1 and "already finished (succeeded)" in late.stderr and "Traceback" not in late.stderr
    refused = abray("submit", "sweep.yaml", env={"ABRAY_URL": api_server.url, "ABRAY_TOKEN": ""}, cwd=tmp_path)
    assert refused.returncode == 1 and "ABRAY_TOKEN" in refused.stderr and "Traceback" not in refused.stderr
    bad = abray("submit", "nope.yaml", env=env, cwd=tmp_path)
    assert bad.returncode == 2 and "cannot read config file nope.yaml" in bad.stderr
