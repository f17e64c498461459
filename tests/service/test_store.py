"""The job store on a real SQLite file (no service): who may create a database, what makes it unwritable, the job
state machine under a race (the same race on PostgreSQL is in test_postgres.py), and what the job driver writes
while a sweep runs, and what progress then says."""

import os
import sqlite3
import threading

import pytest

from abray.service import store
from abray.training.epochs import EpochMetrics


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def test_only_create_makes_a_database(tmp_path):
    url = sqlite_url(tmp_path / "abray.db")
    with pytest.raises(store.MissingDatabase, match="does not exist; `abray serve` creates it at its first start"):
        store.connect(url)  # what a job driver does
    assert not (tmp_path / "abray.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()
    with pytest.raises(store.SchemaError, match="has no abray tables; `abray serve` creates them"):
        store.connect(sqlite_url(tmp_path / "empty.db"))
    store.connect(url, create=True).dispose()  # the service's first start
    store.connect(url).dispose()


def test_a_deleted_file_is_never_recreated_by_the_pool(tmp_path):
    path = tmp_path / "abray.db"
    engine = store.connect(sqlite_url(path), create=True)
    identity = store.file_identity(engine)
    assert store.unwritable(engine, identity) is None
    engine.dispose()  # the pool's connections close: the next one is opened anew
    path.unlink()
    with pytest.raises(Exception, match="unable to open database file"):
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    assert not path.exists()
    assert "was deleted while the service ran" in store.unwritable(engine, identity)


def test_a_replaced_or_read_only_file_is_unwritable(tmp_path):
    path = tmp_path / "abray.db"
    engine = store.connect(sqlite_url(path), create=True)
    identity = store.file_identity(engine)
    path.chmod(0o444)
    assert store.unwritable(engine, identity) == f"the database file {path} is read-only (mode 0444)"
    path.chmod(0o644)
    assert store.unwritable(engine, identity) is None
    os.replace(path, tmp_path / "moved.db")
    store.connect(sqlite_url(path), create=True).dispose()  # another file at the same path
    assert "was replaced while the service ran" in store.unwritable(engine, identity)
    engine.dispose()


def test_a_database_of_another_schema_version_is_refused(tmp_path):
    url = sqlite_url(tmp_path / "old.db")
    store.connect(url, create=True).dispose()
    with sqlite3.connect(tmp_path / "old.db") as db:
        db.execute("UPDATE abray_meta SET value = '0' WHERE key = 'schema_version'")
    with pytest.raises(store.SchemaError, match=f"has schema version 0; this abray needs version {store.SCHEMA_VERSION}"):
        store.connect(url)


def at_once(*actions):
    """Run the callables in threads released at the same moment; their results, in order (or the first error)."""
    barrier, results, errors = threading.Barrier(len(actions)), [None] * len(actions), []

    def run(i, action):
        barrier.wait()
        try:
            results[i] = action()
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, action)) for i, action in enumerate(actions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def race_cancel_against_claim(url: str, jobs: int = 30) -> list[tuple]:
    """Queue `jobs` jobs; for each, the scheduler's claim and a user's cancel at the same moment, each through its
    own engine (as the scheduler and the API may be two processes). Returns (claimed, cancel outcome, status,
    cancel_requested_at) per job."""
    engines = [store.connect(url) for _ in range(2)]
    claims, cancels = (store.session_factory(e) for e in engines)
    with claims.begin() as session:
        ids = []
        for i in range(jobs):
            job = store.Job(name=f"race{i}", status="queued", spec={}, total_trials=1, storage="")
            session.add(job)
            session.flush()
            ids.append(job.id)
    found = []
    for job_id in ids:
        def claim():
            with claims.begin() as session:
                return store.claim(session, job_id)

        def cancel():
            with cancels.begin() as session:
                return store.request_cancel(session, job_id)

        claimed, outcome = at_once(claim, cancel)
        with claims() as session:
            job = session.get(store.Job, job_id)
            found.append((claimed, outcome, job.status, job.cancel_requested_at))
    for engine in engines:
        engine.dispose()
    return found


def assert_one_winner(found):
    for claimed, outcome, status, requested in found:
        # the claim won: the job runs and its cancellation is requested; or the cancel won: the job never runs
        assert (claimed, outcome, status) in ((True, "requested", "running"), (False, "cancelled", "cancelled"))
        assert requested is not None


def test_cancel_racing_the_schedulers_claim_has_one_winner_on_sqlite(tmp_path):
    url = sqlite_url(tmp_path / "abray.db")
    store.connect(url, create=True).dispose()
    assert_one_winner(race_cancel_against_claim(url))


def epoch(n: int, accuracy: float) -> EpochMetrics:
    return EpochMetrics(epoch=n, steps=22 * n, train_loss=1.0 / n, test_loss=1.0 / n, test_accuracy=accuracy,
                        wall_time=0.5, lr_now=0.03, staleness_hist={2: 22})


def test_an_epoch_reported_twice_is_one_row_and_counts_once(tmp_path):
    sessions = store.session_factory(store.connect(sqlite_url(tmp_path / "jobs.db"), create=True))
    with sessions.begin() as session:
        job = store.Job(name="j", status="running", spec={}, total_trials=1, storage=str(tmp_path))
        session.add(job)
        session.flush()
        job_id = job.id
        store.record_trial(session, job_id, "t1", {"optimizer": "ab"}, "running")
    # a trial restarted by a resumed sweep reports its epochs again; the later report wins
    for n, accuracy in [(1, 0.5), (2, 0.6), (1, 0.55), (2, 0.65), (3, 0.7)]:
        with sessions.begin() as session:
            store.record_epoch(session, job_id, "t1", epoch(n, accuracy))
    with sessions() as session:
        frame = store.results_frame(session, job_id)
        progress = store.progress(session, session.get(store.Job, job_id))
        assert progress["epochs"] == len(frame) == 3 == store.epochs_reported(session, job_id)
        assert frame.set_index("epoch").test_accuracy.to_dict() == {1: 0.55, 2: 0.65, 3: 0.7}
        assert session.get(store.Trial, (job_id, "t1")).test_accuracy == 0.7
