"""The job state machine of the store (abray.service.store), call by call on a real SQLite file: which status may
become which, what each move stamps, what a cancel does in each status, and what the driver's writes add up to in
`progress`, counted here by hand."""

from datetime import timedelta

import pytest
from sqlalchemy import update

from abray.service import store


@pytest.fixture
def sessions(tmp_path):
    engine = store.connect(f"sqlite:///{tmp_path / 'jobs.db'}", create=True)
    yield store.session_factory(engine)
    engine.dispose()


def new_job(sessions, status="queued", total_trials=4) -> int:
    with sessions.begin() as session:
        job = store.Job(name="j", status=status, spec={}, total_trials=total_trials, storage="")
        session.add(job)
        session.flush()
        return job.id


def job(sessions, job_id) -> store.Job:
    with sessions() as session:
        return session.get(store.Job, job_id)


def act(sessions, action, *args):
    with sessions.begin() as session:
        return action(session, *args)


def test_only_the_tables_moves_are_allowed():
    assert store.TRANSITIONS == {"queued": ("running", "cancelled"), "running": ("succeeded", "failed", "cancelled")}
    for source, target in [("queued", "succeeded"), ("running", "queued"), ("succeeded", "failed"),
                           ("cancelled", "running"), ("failed", "running")]:
        with pytest.raises(ValueError, match=f"a job cannot go from {source} to {target}"):
            store._move(None, 1, source, target)


def test_a_claim_starts_a_queued_job_once_and_stamps_its_start_and_heartbeat(sessions):
    job_id, other = new_job(sessions), new_job(sessions)
    before = store.utcnow()
    assert act(sessions, store.claim, job_id) is True
    started = job(sessions, job_id)
    assert started.status == "running" and started.started_at == started.heartbeat_at
    assert before <= store.aware(started.started_at) <= store.utcnow()
    assert act(sessions, store.claim, job_id) is False  # a second scheduler loses
    assert job(sessions, other).status == "queued" and job(sessions, other).started_at is None


def test_the_driver_is_recorded_on_its_own_job_only(sessions):
    job_id, other = new_job(sessions, "running"), new_job(sessions, "running")
    act(sessions, store.set_driver, job_id, 4321, "node-a")
    assert (job(sessions, job_id).driver_pid, job(sessions, job_id).driver_host) == (4321, "node-a")
    assert (job(sessions, other).driver_pid, job(sessions, other).driver_host) == (None, None)


def test_a_heartbeat_stamps_only_its_own_running_job_and_answers_whether_to_cancel(sessions):
    running, queued, other = new_job(sessions, "running"), new_job(sessions), new_job(sessions, "running")
    before = store.utcnow()
    assert act(sessions, store.heartbeat, running) is False
    assert before <= store.aware(job(sessions, running).heartbeat_at) <= store.utcnow()
    assert job(sessions, other).heartbeat_at is None
    assert act(sessions, store.heartbeat, queued) is False and job(sessions, queued).heartbeat_at is None
    assert act(sessions, store.request_cancel, running) == "requested"
    assert act(sessions, store.heartbeat, running) is True


def test_a_cancel_ends_a_queued_job_at_once_asks_a_running_one_and_leaves_a_finished_one(sessions):
    queued, running, done = new_job(sessions), new_job(sessions, "running"), new_job(sessions, "running")
    act(sessions, store.finish, done, "succeeded")
    assert act(sessions, store.request_cancel, queued) == "cancelled"
    cancelled = job(sessions, queued)
    assert cancelled.status == "cancelled" and cancelled.finished_at == cancelled.cancel_requested_at is not None

    assert act(sessions, store.request_cancel, running) == "requested"
    first = job(sessions, running).cancel_requested_at
    assert job(sessions, running).status == "running" and first is not None
    assert job(sessions, running).finished_at is None
    assert act(sessions, store.request_cancel, running) == "requested"
    assert job(sessions, running).cancel_requested_at == first  # asked again: the first request's time stays

    finished_at = job(sessions, done).finished_at
    assert act(sessions, store.request_cancel, done) == "finished"
    assert job(sessions, done).status == "succeeded" and job(sessions, done).cancel_requested_at is None
    assert job(sessions, done).finished_at == finished_at
    assert act(sessions, store.request_cancel, queued) == "finished"  # a cancelled job is finished too


@pytest.mark.parametrize("status,trials_become", [("succeeded", "failed"), ("failed", "failed"),
                                                   ("cancelled", "cancelled")])
def test_finishing_a_running_job_happens_once_and_closes_its_running_trials(sessions, status, trials_become):
    job_id, other = new_job(sessions, "running"), new_job(sessions, "running")
    for trial_id, trial_status in [("a", "running"), ("b", "succeeded"), ("c", "running")]:
        act(sessions, store.record_trial, job_id, trial_id, {"lr": 0.1}, trial_status)
    act(sessions, store.record_trial, other, "a", {"lr": 0.1}, "running")
    before = store.utcnow()
    assert act(sessions, store.finish, job_id, status, "why") is True
    found = job(sessions, job_id)
    assert found.status == status and found.error == "why"
    assert before <= store.aware(found.finished_at) <= store.utcnow()
    with sessions() as session:
        trials = {t.trial_id: t.status for t in session.query(store.Trial).filter_by(job_id=job_id)}
        assert trials == {"a": trials_become, "b": "succeeded", "c": trials_become}
        assert session.get(store.Trial, (other, "a")).status == "running"  # another job's trial is untouched
    assert act(sessions, store.finish, job_id, "failed", "again") is False
    assert job(sessions, job_id).status == status and job(sessions, job_id).error == "why"


def test_only_a_running_job_can_be_finished(sessions):
    queued = new_job(sessions)
    assert act(sessions, store.finish, queued, "succeeded") is False and job(sessions, queued).status == "queued"
    with pytest.raises(ValueError, match="a job cannot go from running to queued"):
        act(sessions, store.finish, new_job(sessions, "running"), "queued")


def test_a_trial_keeps_its_first_config_and_its_last_error(sessions):
    job_id = new_job(sessions, "running")
    act(sessions, store.record_trial, job_id, "t", {"lr": 0.1}, "running")
    act(sessions, store.record_trial, job_id, "t", {"lr": 9.9}, "failed", "boom")
    act(sessions, store.record_trial, job_id, "t", {"lr": 9.9}, "running")  # retried: the error stays
    with sessions() as session:
        trial = session.get(store.Trial, (job_id, "t"))
        assert (trial.config, trial.status, trial.error) == ({"lr": 0.1}, "running", "boom")


def report(epoch: int, accuracy: float, diverged: bool = False) -> dict:
    return {"epoch": epoch, "steps": 10 * epoch, "test_accuracy": accuracy, "diverged": diverged,
            "diverged_step": 10 * epoch if diverged else None, "staleness_max": 0, "staleness_hist": {0: 10}}


def test_progress_counts_each_trial_by_its_status_and_only_finished_divergences(sessions):
    job_id, other = new_job(sessions, "running", total_trials=10), new_job(sessions, "running", total_trials=2)
    trials = {"ok": ("succeeded", [0.5, 0.9], False), "wild": ("succeeded", [0.1], True),
              "wilder": ("succeeded", [0.1, 0.1], True),
              "now": ("running", [0.2, 0.3, 0.4], False), "bad": ("failed", [], False),
              "wild-running": ("running", [0.1], True), "stop": ("cancelled", [0.2], False)}
    for trial_id, (status, accuracies, diverged) in trials.items():
        act(sessions, store.record_trial, job_id, trial_id, {}, "running")
        for n, accuracy in enumerate(accuracies, 1):
            act(sessions, store.record_epoch, job_id, trial_id, report(n, accuracy, diverged and n == len(accuracies)))
        act(sessions, store.record_trial, job_id, trial_id, {}, status)
    act(sessions, store.record_trial, other, "ok", {}, "succeeded")  # the same trial id in another job
    act(sessions, store.record_epoch, other, "ok", report(1, 0.7))

    epochs = sum(len(a) for _, a, _ in trials.values())
    expected = {"total": 10, "done": 3, "running": 2, "failed": 1, "cancelled": 1, "diverged": 2,
                "pending": 10 - 3 - 2 - 1 - 1, "epochs": epochs}
    with sessions() as session:
        jobs = [session.get(store.Job, job_id), session.get(store.Job, other)]
        assert store.progress(session, jobs[0]) == expected
        assert store.progress_of(session, jobs) == {job_id: expected, other: {
            "total": 2, "done": 1, "running": 0, "failed": 0, "cancelled": 0, "diverged": 0, "pending": 1,
            "epochs": 1}}
        assert store.progress_of(session, []) == {}
        assert store.epochs_reported(session, job_id) == epochs and store.epochs_reported(session, other) == 1
        assert store.epochs_reported(session, new_job(sessions)) == 0
        wild = session.get(store.Trial, (job_id, "wild"))
        assert wild.diverged is True and wild.test_accuracy == 0.1 and wild.epochs_reported == 1
        assert session.get(store.Trial, (job_id, "now")).test_accuracy == 0.4  # the latest epoch's
        assert session.get(store.Trial, (job_id, "ok")).epochs_reported == 2
        assert session.get(store.Trial, (job_id, "ok")).test_accuracy == 0.9


def test_every_write_to_a_trial_stamps_it(sessions):
    job_id = new_job(sessions, "running")
    act(sessions, store.record_trial, job_id, "t", {}, "running")

    def stamped_by(action, *args):
        with sessions.begin() as session:
            session.execute(update(store.Trial).values(updated_at=store.utcnow() - timedelta(hours=1)))
        before = store.utcnow()
        act(sessions, action, *args)
        with sessions() as session:
            return before <= store.aware(session.get(store.Trial, (job_id, "t")).updated_at) <= store.utcnow()

    assert stamped_by(store.record_trial, job_id, "t", {}, "running")
    assert stamped_by(store.record_epoch, job_id, "t", report(1, 0.5))
    assert stamped_by(store.close_trials, job_id, "failed")


def test_more_trials_than_announced_leave_none_pending(sessions):
    job_id = new_job(sessions, "running", total_trials=1)
    for trial_id in "ab":
        act(sessions, store.record_trial, job_id, trial_id, {}, "succeeded")
    with sessions() as session:
        assert store.progress(session, session.get(store.Job, job_id))["pending"] == 0


def test_close_trials_gives_only_running_trials_the_status(sessions):
    job_id = new_job(sessions, "running")
    for trial_id, status in [("a", "running"), ("b", "failed"), ("c", "pending")]:
        act(sessions, store.record_trial, job_id, trial_id, {}, status)
    act(sessions, store.close_trials, job_id, "cancelled")
    with sessions() as session:
        assert {t.trial_id: t.status for t in session.query(store.Trial).filter_by(job_id=job_id)} == {
            "a": "cancelled", "b": "failed", "c": "pending"}
