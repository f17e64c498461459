"""The scheduler's watch over running jobs (abray.service.scheduler), one tick at a time on a real SQLite file: a
driver silent past the heartbeat timeout fails its job, and a cancelled job whose driver outlives the grace period
has its driver killed. No job is queued here, so a tick starts nothing (and needs no Ray)."""

import signal
import socket
import subprocess
from datetime import timedelta

import pytest

from abray.service import store
from abray.service.scheduler import Scheduler
from abray.service.settings import Settings
from support import jobs


@pytest.fixture
def scheduler(tmp_path):
    settings = Settings(storage=tmp_path, heartbeat_timeout_s=60, cancel_grace_s=30)
    engine = store.connect(settings.database, create=True)
    yield Scheduler(settings, store.session_factory(engine))
    engine.dispose()


def running_job(scheduler, silent_s: float, pid=None, host="another-host", cancel_requested_s=None) -> int:
    """A running job whose driver (pid on host) last beat `silent_s` ago, its cancel requested that long ago."""
    now = store.utcnow()
    return jobs.running_job(scheduler.sessions, started_at=now, heartbeat_at=now - timedelta(seconds=silent_s),
                            driver_pid=pid, driver_host=host,
                            cancel_requested_at=None if cancel_requested_s is None else
                            now - timedelta(seconds=cancel_requested_s))


def state(scheduler, job_id) -> tuple:
    return jobs.job_state(scheduler.sessions, job_id)


def test_a_driver_silent_past_the_heartbeat_timeout_fails_its_job_and_a_beating_one_runs_on(scheduler):
    # drivers on another host: only their heartbeats tell whether they live
    silent, beating = running_job(scheduler, silent_s=61), running_job(scheduler, silent_s=50)
    silent_cancelled = running_job(scheduler, silent_s=61, cancel_requested_s=5)
    scheduler.tick()
    status, error = state(scheduler, silent)
    assert status == "failed" and error.startswith("no heartbeat from the job driver for more than 60 s (last at ")
    assert state(scheduler, beating) == ("running", None)
    assert state(scheduler, silent_cancelled) == ("cancelled", None)  # asked to stop, and it did: not a failure


@pytest.mark.slow  # drivers stood in for by `sleep` processes
def test_a_cancelled_driver_past_its_grace_is_killed_and_a_silent_live_one_too(scheduler):
    here = socket.gethostname()
    drivers = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(3)]
    try:
        late, in_grace, silent = drivers
        late_job = running_job(scheduler, silent_s=1, pid=late.pid, host=here, cancel_requested_s=31)
        grace_job = running_job(scheduler, silent_s=1, pid=in_grace.pid, host=here, cancel_requested_s=5)
        silent_job = running_job(scheduler, silent_s=61, pid=silent.pid, host=here)
        scheduler.tick()
        assert late.wait(timeout=10) == -signal.SIGKILL and silent.wait(timeout=10) == -signal.SIGKILL
        assert state(scheduler, late_job) == ("cancelled", None)
        status, error = state(scheduler, silent_job)
        assert status == "failed" and error.startswith("no heartbeat from the job driver for more than 60 s")
        assert in_grace.poll() is None and state(scheduler, grace_job) == ("running", None)  # still has time
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
