"""A Python client of the job service (`abray serve`): submit sweeps, follow them, read their results into pandas.

    from abray.client import Client

    client = Client()                      # ABRAY_URL (default http://127.0.0.1:8000) and ABRAY_TOKEN
    job = client.submit("sweep.yaml")      # a spec file or a dict, as for `abray sweep`
    job.wait()                             # a progress bar on stderr until the job has finished
    job.results()                          # the tidy schema as a DataFrame: a row per trial and epoch
    job.summary()                          # final test accuracy (%) per setting: mean and std over seeds

It speaks HTTP only (httpx) and imports nothing of the service. Reads, and submissions, are retried when the
service cannot be reached or is briefly unavailable: a submission carries an Idempotency-Key, made once per
`submit` and sent again by each retry, so a retry never creates a second job. What the service refuses comes
back as a `ServiceError` whose message says what to do (each bad field of a spec; the token on a 401).
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Union

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = ("succeeded", "failed", "cancelled")
RETRY_STATUSES = (502, 503, 504)
FORMATS = (".csv", ".parquet", ".json")


class ServiceError(Exception):
    """A request the service refused, or could not be sent; the message is for people. `status` is the HTTP
    status (None when no answer came), `detail` the service's own account."""

    def __init__(self, message: str, status: Optional[int] = None, detail: Any = None):
        super().__init__(message)
        self.status, self.detail = status, detail


def _refusal(response: httpx.Response, url: str) -> ServiceError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    status = response.status_code
    if status == 401:
        message = (f"the service at {url} needs its API token ({detail}): pass --token or set ABRAY_TOKEN to it "
                   "(the ABRAY_TOKEN it was started with, or the token it printed once at its first start)")
    elif status == 422 and isinstance(detail, list):
        lines = [f"  {'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'spec'}: {d.get('msg')}" for d in detail]
        message = "the service refused the request:\n" + "\n".join(lines)
    else:
        message = detail if isinstance(detail, str) else f"{status} {response.reason_phrase}: {detail}"
    return ServiceError(message, status, detail)


class Client:
    """The service at `url` (default: ABRAY_URL, else http://127.0.0.1:8000), with `token` for writes (default:
    ABRAY_TOKEN). `retries`: how many times an idempotent request is tried again, `backoff_s` apart, doubling."""

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, timeout: float = 60.0,
                 retries: int = 3, backoff_s: float = 0.5):
        self.url = (url or os.environ.get("ABRAY_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("ABRAY_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries, self.backoff_s = retries, backoff_s
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, idempotent: bool, **kwargs) -> httpx.Response:
        """One request, retried when that is safe: always when it could not be sent (no connection), and
        when `idempotent` also after a timeout or a 502/503/504. Any other error status is a ServiceError."""
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as err:
                if last or not (idempotent or isinstance(err, httpx.ConnectError)):
                    raise ServiceError(f"cannot reach the abray service at {self.url} ({err}); is `abray serve` "
                                       "running? Point to it with --url or ABRAY_URL") from None
            else:
                if response.status_code < 400:
                    return response
                if last or not idempotent or response.status_code not in RETRY_STATUSES:
                    raise _refusal(response, self.url)
            time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def submit(self, spec: Union[dict, str, Path]) -> "Job":
        """Submit a sweep: a spec as a dict, or the path of a YAML or JSON file (the same spec as `abray sweep`,
        without `storage`: the service chooses where each job writes)."""
        if not isinstance(spec, dict):
            from .training.config import load_config_file

            spec = load_config_file(spec)
        key = f"abray-client-{uuid.uuid4()}"  # one per submission: its retries carry the same key
        response = self.request("POST", "/jobs", idempotent=True, json=spec, headers={"Idempotency-Key": key})
        return Job(self, response.json())

    def jobs(self, status: Optional[str] = None, limit: int = 50) -> list["Job"]:
        """The newest jobs first, `status` (queued, running, succeeded, failed, cancelled) if given."""
        params = {"limit": limit, **({"status": status} if status else {})}
        return [Job(self, item) for item in self.request("GET", "/jobs", idempotent=True, params=params).json()["items"]]

    def job(self, job_id: int) -> "Job":
        return Job(self, self.request("GET", f"/jobs/{int(job_id)}", idempotent=True).json())


class Job:
    """One job as the service last described it (`info`, the JSON of GET /jobs/{id}); `refresh` reads it again."""

    def __init__(self, client: Client, info: dict):
        self.client, self.info = client, info

    id = property(lambda self: self.info["id"])
    name = property(lambda self: self.info["name"])
    status = property(lambda self: self.info["status"])
    progress = property(lambda self: self.info["progress"])
    error = property(lambda self: self.info.get("error"))
    finished = property(lambda self: self.status in FINISHED)

    def __repr__(self) -> str:
        p = self.progress
        return f"<Job {self.id} {self.name!r}: {self.status}, {p['done']}/{p['total']} trials done>"

    @property
    def dashboard_url(self) -> str:
        return f"{self.client.url}/dashboard#job={self.id}"

    def refresh(self) -> "Job":
        self.info = self.client.request("GET", f"/jobs/{self.id}", idempotent=True).json()
        return self

    def wait(self, progress: bool = True, poll_s: float = 2.0, timeout_s: Optional[float] = None) -> "Job":
        """Poll until the job has finished (succeeded, failed or cancelled), with a progress bar on stderr;
        return it. A TimeoutError after `timeout_s`; the job itself goes on either way."""
        from tqdm import tqdm

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = tqdm(total=self.progress["total"], unit="trial", desc=f"job {self.id} {self.name}", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        try:
            while True:
                p = self.progress
                bar.total = p["total"]
                bar.n = p["done"] + p["failed"] + p["cancelled"]
                bar.set_postfix_str(f"{self.status}, {p['running']} running, {p['failed']} failed, "
                                    f"{p['diverged']} diverged")
                if self.finished:
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} has not finished after {timeout_s:g} s (it is {self.status})")
                time.sleep(poll_s)
                self.refresh()
        finally:
            bar.close()

    def results(self):
        """The tidy results so far (a row per trial and epoch: ids, every config column, every metric)."""
        import pandas as pd

        body = self._get(f"/jobs/{self.id}/results", params={"format": "parquet"}).content
        return pd.read_parquet(io.BytesIO(body))

    def summary(self):
        """Final test accuracy in percent per setting (the summary's group_by columns: optimizer, delay and
        every other swept field), mean and std over seeds, trial and divergence counts."""
        import pandas as pd

        body = self._get(f"/jobs/{self.id}/summary").json()
        frame = pd.DataFrame(body["rows"])
        if frame.empty:
            return pd.DataFrame(columns=body["group_by"])
        return frame[body["group_by"] + [c for c in frame.columns if c not in body["group_by"]]]

    def trials(self):
        """One row per trial: its id, status, epochs reported, last accuracy, divergence, error, and its config."""
        import pandas as pd

        rows = self._get(f"/jobs/{self.id}/trials").json()
        return pd.DataFrame([{**{k: v for k, v in r.items() if k != "config"}, **r["config"]} for r in rows])

    def cancel(self) -> "Job":
        """Ask the service to cancel the job (a queued one at once; a running one within seconds)."""
        self.info = self.client.request("POST", f"/jobs/{self.id}/cancel", idempotent=False).json()
        return self

    def download(self, path: Union[str, Path]) -> Path:
        """Write the results to `path` in the format its suffix names (.csv, .parquet or .json), as the service
        serves them."""
        path = Path(path)
        if path.suffix not in FORMATS:
            raise ServiceError(f"{str(path)!r}: the results file must end in {', '.join(FORMATS)}")
        body = self._get(f"/jobs/{self.id}/results", params={"format": path.suffix[1:]}).content
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return path

    def _get(self, path: str, **kwargs) -> httpx.Response:
        return self.client.request("GET", path, idempotent=True, **kwargs)
