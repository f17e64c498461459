"""Every route of the job service, fuzzed from its own OpenAPI document by schemathesis, against a live `abray serve`
(uvicorn, a real database, the session's Ray): on SQLite, and on PostgreSQL.

`st run` (schemathesis' CLI, in its own process) runs its coverage phase (each field's boundaries and just past
them, wrong types, missing and unexpected values, unexpected methods), a bounded fuzzing phase and stateful
sequences (submit, then read, cancel and fetch the job it made), and checks every answer: no 5xx, a declared
status code, content type and schema, writes refused without the token, and (fuzz_hooks.py) a job count that
changes by exactly one for a 201 and not at all for anything else. The services start no job
(max_running_jobs = 0), so fuzzed submissions only queue.

The budget is fixed so the suite is reproducible: ABRAY_FUZZ_EXAMPLES (default 30, per route and phase) and
ABRAY_FUZZ_SEED (default 13) change it, for a longer or another hunt.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from support.service import ApiServer

EXAMPLES = int(os.environ.get("ABRAY_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("ABRAY_FUZZ_SEED", "13"))
CHECKS = ["not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
          "ignored_auth", "writes_change_the_job_count_as_answered"]
ROUTES = {"POST /jobs", "GET /jobs", "GET /jobs/{job_id}", "POST /jobs/{job_id}/cancel", "GET /jobs/{job_id}/trials",
          "GET /jobs/{job_id}/results", "GET /jobs/{job_id}/summary", "GET /health"}


def start_fuzz(server: ApiServer, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Start `st run` against the server, its output in workdir/st.log (a file: a pipe left unread while the other
    run is waited for would stall it); `finish_fuzz` waits for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    env = dict(os.environ, SCHEMATHESIS_HOOKS="fuzz_hooks", FUZZ_BASE_URL=server.url, FUZZ_TOKEN=server.token,
               PYTHONPATH=os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
               HYPOTHESIS_STORAGE_DIRECTORY=str(workdir / "hypothesis"))
    command = [str(Path(sys.executable).with_name("st")), "run", f"{server.url}/openapi.json",
               "--checks", ",".join(CHECKS), "--phases", "coverage,fuzzing,stateful",
               "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
               "--workers", "1", "--request-timeout", "30", "-H", f"Authorization: Bearer {server.token}",
               "--report", "json", "--report-json-path", str(workdir / "schemathesis.json"), "--no-color"]
    with open(workdir / "st.log", "wb") as log:
        return subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT), workdir


def finish_fuzz(run: tuple[subprocess.Popen, Path]) -> tuple[int, str, dict]:
    """Wait for `st run`: (its exit code, the end of its output, its JSON report or {} when it wrote none)."""
    process, workdir = run
    try:
        process.wait(timeout=300)
    finally:
        process.kill()
        process.wait()
    report = workdir / "schemathesis.json"
    return (process.returncode, (workdir / "st.log").read_text(errors="replace")[-12000:],
            json.loads(report.read_text()) if report.exists() else {})


def check_budget_was_spent(result: dict, server: ApiServer) -> None:
    assert result["complete"] and result["test_cases"]["with_failures"] == 0
    assert set(result["valid_rates"]) == ROUTES  # every route, none skipped
    assert result["operations"]["tested"] == len(ROUTES)
    assert result["test_cases"]["generated"] >= 20 * EXAMPLES
    accepted = sum(phase["accepted"] for phase in result["valid_rates"]["POST /jobs"].values())
    with server.client() as client:  # valid submissions got through (and queued): the fuzzer reached the store
        assert accepted > 0 and client.get("/jobs", params={"limit": 1}).json()["total"] > 0
        assert client.get("/health").status_code == 200  # and the service is still well


def the_count_check_can_fail(server: ApiServer, monkeypatch) -> None:
    """fuzz_hooks' check, run here on a job stored behind a refusal (a row written straight into the database)."""
    import fuzz_hooks

    monkeypatch.setenv("FUZZ_BASE_URL", server.url)
    monkeypatch.setenv("FUZZ_TOKEN", server.token)
    case = SimpleNamespace(method="POST", operation=SimpleNamespace(path="/jobs"))
    fuzz_hooks.before_call(None, case, {})
    before = fuzz_hooks.job_count()
    with sqlite3.connect(server.storage / "abray.db") as db:
        db.execute("INSERT INTO jobs (name, status, spec, total_trials, storage, created_at) "
                   "VALUES ('sneaky', 'queued', '{}', 1, '', '2026-01-01')")
    with pytest.raises(AssertionError, match=f"answered 422 and the job count went from {before} to {before + 1}"):
        fuzz_hooks.writes_change_the_job_count_as_answered(None, SimpleNamespace(status_code=422), case)


def test_fuzzing_every_route_finds_nothing_on_sqlite_or_on_postgresql(ray_cluster, postgres_url, tmp_path,
                                                                       monkeypatch):
    """The two databases' services are fuzzed at the same time: 35 s here, against 62 s one after the other (each
    fuzzer waits on its service about as much as it computes)."""
    # on SQLite reads need the token: read routes then declare it, and `ignored_auth` checks they refuse without it
    sqlite = ApiServer(tmp_path / "sqlite", ray_cluster["address"], max_running_jobs=0, reads_need_token=1).start()
    postgres, runs = None, {}
    try:
        postgres = ApiServer(tmp_path / "postgres", ray_cluster["address"], database=postgres_url,
                             max_running_jobs=0).start()
        runs["SQLite"] = start_fuzz(sqlite, tmp_path / "fuzz-sqlite")
        runs["PostgreSQL"] = start_fuzz(postgres, tmp_path / "fuzz-postgres")
        finished = {database: finish_fuzz(run) for database, run in runs.items()}
        # both runs' problems at once: a curl line to reproduce each
        problems = [f"on {database}:\n{output}" for database, (code, output, _) in finished.items() if code != 0]
        assert not problems, f"schemathesis found problems (seed {SEED}):\n" + "\n".join(problems)
        check_budget_was_spent(finished["SQLite"][2], sqlite)
        check_budget_was_spent(finished["PostgreSQL"][2], postgres)
        assert httpx.get(f"{postgres.url}/health").json()["database"]["dialect"] == "postgresql"
        the_count_check_can_fail(sqlite, monkeypatch)
    finally:
        for process, _ in runs.values():
            process.kill()
            process.wait()
        sqlite.stop()
        if postgres is not None:
            postgres.stop()
