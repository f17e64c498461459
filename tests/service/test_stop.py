"""`abray serve --stop`'s handling of the jobs on the head it ends (abray.service.background.cancel_head_jobs,
through abray.service.processes.drivers_on):
the drivers are found as processes, by their command line and the RAY_ADDRESS they were started with, so a job
on another cluster, or of another storage or database, is never touched. Stand-ins for drivers here are
sleeping processes with a driver's command line and environment, each in a session of its own as the service
starts drivers."""

import subprocess
import sys
import time

import pytest

from abray.service import background, processes, store
from support.jobs import job_state, running_job

pytestmark = pytest.mark.slow  # subprocesses

HEAD, OTHER = "192.0.2.7:6379", "192.0.2.8:6379"


def stand_in_driver(job_id: int, ray_address: str, database: str) -> subprocess.Popen:
    """A process whose command line is a driver's (`... -m abray.service.driver JOB_ID`), sleeping."""
    env = {"RAY_ADDRESS": ray_address, "ABRAY_DATABASE_URL": database, "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "-m", processes.DRIVER_MODULE,
                             str(job_id)], env=env, start_new_session=True)


def found(jobs: set[int]) -> None:
    """Wait until the stand-ins of `jobs` are found (a command line is readable once its process has started)."""
    deadline = time.time() + 10
    while {job for _, job, _ in processes.drivers_on(HEAD) + processes.drivers_on(OTHER)} != jobs \
            and time.time() < deadline:
        time.sleep(0.05)


def test_only_the_jobs_on_the_stopped_head_are_ended_and_marked_cancelled(tmp_path):
    url = f"sqlite:///{tmp_path / 'abray.db'}"
    engine = store.connect(url, create=True)
    sessions = store.session_factory(engine)
    on_head = running_job(sessions, storage=str(tmp_path / "a"))
    elsewhere = running_job(sessions, storage=str(tmp_path / "b"))
    drivers = [stand_in_driver(on_head, HEAD, url), stand_in_driver(elsewhere, OTHER, url)]
    try:
        found({on_head, elsewhere})
        assert [(pid, job) for pid, job, _ in processes.drivers_on(HEAD)] == [(drivers[0].pid, on_head)]

        said = []
        assert background.cancel_head_jobs(HEAD, said.append) == 1
        assert said == ["ended 1 running job on the head; 1 marked cancelled"]
        assert drivers[0].wait(timeout=10) == -9  # SIGKILL, with its session
        assert drivers[1].poll() is None  # the job on the other cluster runs on
        assert job_state(sessions, on_head) == ("cancelled", background.STOPPED)
        assert job_state(sessions, elsewhere) == ("running", None)
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
        engine.dispose()


def test_a_database_that_cannot_be_reached_is_said_in_a_line_and_the_drivers_still_end(tmp_path):
    url = f"sqlite:///{tmp_path / 'gone.db'}"  # never created: `store.connect` refuses it
    driver = stand_in_driver(3, HEAD, url)
    try:
        found({3})
        said = []
        assert background.cancel_head_jobs(HEAD, said.append) == 0
        assert driver.wait(timeout=10) == -9
        assert said[0].startswith("job 3 not marked cancelled: database ") and "marks it failed" in said[0], said
        assert said[1] == "ended 1 running job on the head; 0 marked cancelled"
    finally:
        driver.kill()
        driver.wait()
