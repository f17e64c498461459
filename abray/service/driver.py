"""The job driver: one OS process per submitted job, running the job's sweep on Ray Tune.

    python -m abray.service.driver JOB_ID   (ABRAY_DATABASE_URL, RAY_ADDRESS and ABRAY_FIXED_CLUSTER come from
                                            the environment)

The scheduler starts it in its own session (abray.service.processes), so it outlives an API restart. While Tune runs it
writes every trial's status and every reported epoch to the store (so progress and results can be read
mid-run), beats a heartbeat, and stops the sweep when the job's cancellation is requested. If it dies,
Ray ends the trials it owns, and the API's scheduler marks the job failed.
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Optional

from ray.tune import Callback, Stopper

from ..sweeps.spec import parse_spec
from ..sweeps.tune import run_sweep
from . import store

HEARTBEAT_S = 2.0


def _trial_error(trial) -> str:
    """The last line of the trial's error (for a run that failed, its own reason). Tune writes the error to the
    trial's local folder before calling back and syncs it to storage later, so read the local copy first."""
    text = None
    for read in (lambda: Path(trial.error_file).read_text(), trial.get_error):
        try:
            text = read()
        except Exception:  # not written (yet), or no local folder
            text = None
        if text:
            break
    text = str(text) if text else "trial failed"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


class _Run:
    """This driver's job: the store and the cancellation flag. Module state, because Tune pickles its
    callbacks and stopper with the experiment, and sessions and events cannot be pickled."""

    job_id: int = -1
    sessions = None
    cancelled = threading.Event()


class JobRecorder(Callback):
    """Writes trials and their per-epoch metrics to the store as Tune reports them."""

    def on_trial_start(self, iteration, trials, trial, **info):
        _record_trial(trial, "running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with _Run.sessions.begin() as session:
            store.record_trial(session, _Run.job_id, trial.trial_id, trial.config, "running")
            store.record_epoch(session, _Run.job_id, trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _record_trial(trial, "cancelled" if _Run.cancelled.is_set() else "succeeded")

    def on_trial_error(self, iteration, trials, trial, **info):
        _record_trial(trial, "failed", _trial_error(trial))


def _record_trial(trial, status: str, error: Optional[str] = None) -> None:
    with _Run.sessions.begin() as session:
        store.record_trial(session, _Run.job_id, trial.trial_id, trial.config, status, error)


class CancelStopper(Stopper):
    """Tune asks `stop_all` every loop step (about 0.1 s); True stops every trial."""

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return _Run.cancelled.is_set()


def _heartbeat(sessions, job_id: int, cancelled: threading.Event, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            with sessions.begin() as session:
                if store.heartbeat(session, job_id):
                    cancelled.set()
        except Exception as err:  # a busy database must not kill the run; the next beat tries again
            print(f"heartbeat failed: {err}", file=sys.stderr, flush=True)


def run_job(job_id: int, database_url: str) -> int:
    engine = store.connect(database_url)
    sessions = store.session_factory(engine)
    with sessions.begin() as session:
        job = session.get(store.Job, job_id)
        if job is None:
            print(f"no job {job_id} in {database_url}", file=sys.stderr)
            return 2
        spec_values, storage, name = dict(job.spec), job.storage, job.name
        job.heartbeat_at = store.utcnow()
    _Run.job_id, _Run.sessions = job_id, sessions
    cancelled, stop = _Run.cancelled, threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(sessions, job_id, cancelled, stop), daemon=True)
    beat.start()
    status, error = "succeeded", None
    try:
        spec = parse_spec({**spec_values, "name": f"job-{job_id}", "storage": storage})
        run_sweep(spec, write=lambda line: print(line, flush=True), callbacks=[JobRecorder()], stop=CancelStopper(),
                  fixed_cluster=os.environ.get("ABRAY_FIXED_CLUSTER") == "1")
        with sessions() as session:
            progress = store.progress(session, session.get(store.Job, job_id))
        if cancelled.is_set():
            status = "cancelled"
        elif progress["failed"] and not progress["done"]:
            status = "failed"
            with sessions() as session:
                first = session.query(store.Trial).filter_by(job_id=job_id, status="failed").first()
            error = f"all {progress['failed']} trials failed; first error: {first.error if first else '?'}"
    except Exception as err:
        traceback.print_exc()
        status, error = "failed", f"{type(err).__name__}: {err}"
    finally:
        stop.set()
    with sessions.begin() as session:
        store.finish(session, job_id, status, error)
    print(f"job {job_id} ({name}): {status}" + (f": {error}" if error else ""), flush=True)
    return 0 if status != "failed" else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m abray.service.driver JOB_ID", file=sys.stderr)
        return 2
    url = os.environ.get("ABRAY_DATABASE_URL")
    if not url:
        print("ABRAY_DATABASE_URL is not set", file=sys.stderr)
        return 2
    return run_job(int(argv[0]), url)


if __name__ == "__main__":
    # run the imported module, not __main__: Tune pickles JobRecorder and CancelStopper with the experiment,
    # and classes of __main__ would be pickled by value, _Run's database sessions included
    from abray.service.driver import main as module_main

    sys.exit(module_main())
