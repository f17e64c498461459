"""The job service under abuse and faults, against a live `abray serve` (uvicorn, SQLite, the session's Ray): each
request a careless notebook or a hostile page could send gets a bounded, declared answer, never a 500, and
faults of its database are reported, never papered over.

The services here start no job (max_running_jobs = 0): what is tested is the API and its database.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time

import httpx
import pytest

from abray.service import store
from support.service import ApiServer
from test_store import at_once

VALID = {"name": "valid", "epochs": 2, "grid": {"optimizer": ["sgdm", "ab"], "delay": [0, 8]}}


@pytest.fixture(scope="module")
def quiet_server(ray_cluster, tmp_path_factory):
    server = ApiServer(tmp_path_factory.mktemp("abuse"), ray_cluster["address"], max_running_jobs=0).start()
    yield server
    server.stop()


def resident_mb(pid: int) -> float:
    status = open(f"/proc/{pid}/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def job_count(server) -> int:
    return httpx.get(f"{server.url}/jobs", params={"limit": 1}, timeout=30).json()["total"]


def exchange(port: int, head: str, chunks=(), answer_within: float = 5.0) -> tuple[int, dict, bytes, int]:
    """Send a request's head, then body chunks until the server answers; return its status, headers, body and how
    many body bytes were sent by then. A server that reads the whole body before answering never answers here."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=answer_within) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0.02)[0]:
                break  # the answer is there: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        data = b""
        while b"\r\n\r\n" not in data and (got := sock.recv(65536)):
            data += got
        head_text, _, body = data.partition(b"\r\n\r\n")
        lines = head_text.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
        while len(body) < int(headers.get("content-length", 0)) and (got := sock.recv(65536)):
            body += got
    return int(lines[0].split()[1]), headers, body, sent


def post_head(server, length: int | None, token: bool = True) -> str:
    lines = ["POST /jobs HTTP/1.1", f"Host: 127.0.0.1:{server.port}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {server.token}")
    return "\r\n".join(lines) + "\r\n\r\n"


def test_ids_beyond_the_databases_integers_are_refused_and_the_connection_lives_on(quiet_server):
    connection = http.client.HTTPConnection("127.0.0.1", quiet_server.port, timeout=30)
    big = 2**63  # one past SQLite's largest integer; PostgreSQL's ids end at 2**31 - 1
    requests = [("GET", f"/jobs?offset={big}"), ("GET", f"/jobs/{big}"), ("GET", f"/jobs/{big}/trials"),
                ("GET", f"/jobs/{big}/results"), ("GET", f"/jobs/{big}/summary"), ("POST", f"/jobs/{big}/cancel"),
                ("GET", "/jobs/2147483648"), ("GET", "/jobs/-1"), ("GET", "/jobs/2147483647"), ("GET", "/jobs")]
    sockets = set()
    for method, path in requests:
        connection.request(method, path, headers=quiet_server.auth)
        response = connection.getresponse()
        body = json.loads(response.read())
        expected = {"/jobs/2147483647": 404, "/jobs": 200}.get(path, 422)
        assert response.status == expected, (path, response.status, body)
        assert not response.will_close, path  # the keep-alive connection stays open
        sockets.add(id(connection.sock))
    assert len(sockets) == 1  # every request on the one connection
    connection.close()


def test_a_ten_million_point_grid_is_refused_in_milliseconds(quiet_server):
    spec = {"name": "huge", "grid": {"delay": list(range(100)), "seed": list(range(100)),
                                     "lr": [round(0.001 * (i + 1), 3) for i in range(100)],
                                     "rho": [round(0.1 * i, 1) for i in range(10)]}}
    memory = resident_mb(quiet_server.proc.pid)
    with quiet_server.client() as client:
        client.get("/jobs")  # the connection is open: time the refusal alone
        start = time.perf_counter()
        response = client.post("/jobs", json=spec)
        elapsed = time.perf_counter() - start
    # before: 1-2 s and +850 MB in the API (every point built), /health stalled meanwhile. The memory tells, on any
    # machine; the time bound is generous, for a machine shared by other runs
    assert response.status_code == 422 and elapsed < 10, elapsed
    assert resident_mb(quiet_server.proc.pid) - memory < 50
    assert response.json()["detail"] == [{"loc": ["body", "grid"], "type": "value_error",
                                          "msg": "sweep has 10000000 trials, more than this service accepts (5000); "
                                                 "shrink the grid"}]


def test_a_body_over_the_limit_is_refused_before_it_is_read(quiet_server):
    before = job_count(quiet_server)
    # a 50 MB body, as a declared length: answered 413 after its first byte, so not read (it is never sent)
    status, _, body, _ = exchange(quiet_server.port, post_head(quiet_server, 50 * 2**20), [b"{"])
    assert status == 413
    assert "the request body is 52428800 bytes; this service takes at most 1048576" in body.decode()
    # without a token: 401, before any of it is read
    status, headers, _, _ = exchange(quiet_server.port, post_head(quiet_server, 50 * 2**20, token=False), [b"{"])
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    # no declared length (chunked): counted as it comes, refused once past the limit, long before its end
    quarter = 2**18
    chunk = b"%x\r\n%s\r\n" % (quarter, b" " * quarter)
    status, _, body, sent = exchange(quiet_server.port, post_head(quiet_server, None), [chunk] * 200)
    assert status == 413 and sent < 100 * quarter, sent
    # the limit itself: a spec padded to just under 1 MB is read and parsed
    padded = json.dumps(VALID) + " " * (2**20 - len(json.dumps(VALID)) - 1)
    with quiet_server.client() as client:
        assert client.post("/jobs", content=padded, headers={"Content-Type": "application/json"}).status_code == 201
    assert job_count(quiet_server) == before + 1


@pytest.mark.parametrize("spec,loc,text", [
    ({"lr": float("inf")}, ["lr"], "Input should be a finite number; allowed: > 0 and <= 1e+06"),
    ({"rho": float("inf")}, ["rho"], "finite number; allowed: >= 0 and <= 100"),
    ({"warmup_epochs": float("inf")}, ["warmup_epochs"], "finite number; allowed: >= 0 and <= 100000"),
    ({"mode": "free", "workers": 1, "slowdown": [float("inf")]}, ["slowdown", 0], "finite number"),
    ({"cpus_per_worker": float("inf")}, ["cpus_per_worker"], "finite number; allowed: > 0 and <= 1024"),
    ({"epochs": 1e12}, ["epochs"], "less than or equal to 100000"),
    ({"batch_size": 1e12}, ["batch_size"], "less than or equal to 65536"),
    ({"delay": 2**70}, ["delay"], "less than or equal to 10000"),
    ({"epochs": 5000}, ["epochs"], "5000, more than this service accepts (1000; `abray serve --max-epochs`)"),
    ({"grid": {"delay": [0, 4096]}}, ["grid", "delay", 1], "more than this service accepts (1024"),
    ({"mode": "free", "workers": 100}, ["workers"], "more than this service accepts (64"),
    ({"name": "n" * 10_000}, ["name"], "String should have at most 128 characters"),
    ({"dataset": "cifar10", "model": "resnet20", "data_root": "/any/dir"}, ["data_root"],
     "this service reads data from none"),
    ({"data_root": "/tmp", "download": True}, ["download"], "this service does not download data sets"),
    ({"delya": 3}, ["delya"], "unknown field; did you mean 'delay'?"),
])
def test_numbers_names_and_data_beyond_bounds_are_422_naming_the_field(quiet_server, spec, loc, text):
    before = job_count(quiet_server)
    with quiet_server.client() as client:
        # Python's json writes inf as Infinity, as a notebook would (httpx's json= refuses it)
        response = client.post("/jobs", content=json.dumps(spec), headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert any(d["loc"] == ["body", *loc] and text in d["msg"] for d in response.json()["detail"]), response.text
    assert job_count(quiet_server) == before
    assert len(response.content) < 5000  # a huge input is never echoed back


def test_bodies_that_are_not_json_objects_are_422(quiet_server):
    with quiet_server.client() as client:
        for body in (b"[1, 2]", b"{not json", b"\xff\xfe", b"[" * 100_000, b'{"delay": 1' + b"0" * 5000 + b"}", b""):
            response = client.post("/jobs", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 422, (body[:20], response.text)


def test_a_created_job_is_located_and_its_spec_is_the_documented_contract(quiet_server):
    with quiet_server.client() as client:
        response = client.post("/jobs", json=VALID)
        assert response.status_code == 201 and response.headers["location"] == f"/jobs/{response.json()['id']}"
        assert client.get(response.headers["location"]).json()["name"] == "valid"
        document = client.get("/openapi.json").json()
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    spec = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    from abray.service.admission import SERVICE_FIELDS
    from abray.sweeps.spec import SweepOptions
    from abray.training.config import TrainConfig

    expected = (set(TrainConfig.model_fields) | set(SweepOptions.model_fields)) - set(SERVICE_FIELDS)
    assert set(spec["properties"]) == expected and spec["additionalProperties"] is False
    assert spec["properties"]["optimizer"]["enum"][:2] == ["sgdm", "ab"] and spec["properties"]["optimizer"]["default"]
    assert spec["properties"]["momentum"] == {"default": 0.9, "exclusiveMaximum": 1, "minimum": 0, "title": "Momentum",
                                              "type": "number"}
    grid = document["components"]["schemas"]["Grid"]["properties"]
    assert grid["delay"]["items"] == {"maximum": 10000, "minimum": 0, "type": "integer"}
    assert grid["delay"]["maxItems"] == 1000 and "default" not in grid["delay"]
    # every declared status: writes need the token; reads are open here, so they declare neither 401 nor security
    operations = document["paths"]
    assert set(operations["/jobs"]["post"]["responses"]) == {"200", "201", "401", "409", "413", "422", "503"}
    assert operations["/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in operations["/jobs"]["get"] and "401" not in operations["/jobs"]["get"]["responses"]


def test_a_foreign_host_name_is_refused_before_anything_runs(quiet_server):
    for host in ("evil.example", "evil.example:80", f"127.0.0.1.evil.example:{quiet_server.port}"):
        response = httpx.get(f"{quiet_server.url}/jobs", headers={"Host": host})
        assert response.status_code == 400 and "does not answer to the host" in response.json()["detail"], host
        assert "items" not in response.text
    for host in (f"localhost:{quiet_server.port}", f"127.0.0.1:{quiet_server.port}", "[::1]"):
        assert httpx.get(f"{quiet_server.url}/jobs", headers={"Host": host}).status_code == 200, host


def test_cancel_racing_the_schedulers_claim_through_the_api(quiet_server):
    sessions = store.session_factory(store.connect(f"sqlite:///{quiet_server.storage / 'abray.db'}"))
    with quiet_server.client() as client:
        ids = [client.post("/jobs", json=dict(VALID, name=f"race{i}")).json()["id"] for i in range(15)]
        for job_id in ids:
            def claim():
                with sessions.begin() as session:
                    return store.claim(session, job_id)

            claimed, response = at_once(claim, lambda: client.post(f"/jobs/{job_id}/cancel"))
            # the claim won (the job runs, its cancellation requested: 202), or the cancel did (never runs: 200)
            expected = (202, "running") if claimed else (200, "cancelled")
            assert (response.status_code, response.json()["status"]) == expected, response.text
    sessions.kw["bind"].dispose()


def test_a_deleted_or_read_only_database_is_reported_and_writes_are_refused(ray_cluster, tmp_path):
    server = ApiServer(tmp_path, ray_cluster["address"], max_running_jobs=0).start()
    path = tmp_path / "abray.db"
    try:
        with server.client() as client:
            assert client.post("/jobs", json=VALID).status_code == 201
            path.chmod(0o444)
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["database"]["error"] == (
                f"the database file {path} is read-only (mode 0444)")
            refused = client.post("/jobs", json=VALID)
            assert refused.status_code == 503 and "is read-only (mode 0444); nothing was stored" in refused.text
            assert client.post("/jobs/1/cancel").status_code == 503
            path.chmod(0o644)
            assert client.get("/health").status_code == 200  # writable again: healthy again

            path.unlink()
            health = client.get("/health")
            assert health.status_code == 503 and "was deleted while the service ran" in health.json()["database"]["error"]
            refused = client.post("/jobs", json=VALID)
            assert refused.status_code == 503 and "was deleted while the service ran" in refused.json()["detail"]
            time.sleep(1.0)  # the scheduler ticks every 0.3 s: it must not make a new file either
            assert not path.exists()
        # a job driver started on it refuses to run rather than creating an empty database
        with pytest.raises(store.MissingDatabase):
            store.connect(f"sqlite:///{path}")
        assert not path.exists()
    finally:
        server.stop()
