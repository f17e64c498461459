"""Jobs written straight into the store, and read back, for tests of what acts on running jobs (the scheduler's
watch, `abray serve --stop`) without a service or a driver."""

from typing import Optional

from abray.service import store


def running_job(sessions, **fields) -> int:
    """A job in state running, with `fields` (driver_pid, heartbeat_at, storage, ...) set; its id."""
    with sessions.begin() as session:
        job = store.Job(**{"name": "j", "status": "running", "spec": {}, "total_trials": 1, "storage": "",
                           **fields})
        session.add(job)
        session.flush()
        return job.id


def job_state(sessions, job_id: int) -> tuple[str, Optional[str]]:
    """(status, error) of the job."""
    with sessions() as session:
        job = session.get(store.Job, job_id)
        return job.status, job.error
