"""The job store on its own (SQLite in a temporary folder, no service): what the job driver writes while a sweep
runs, and what progress then says."""

from abray.service import store
from abray.training.epochs import EpochMetrics


def epoch(n: int, accuracy: float) -> EpochMetrics:
    return EpochMetrics(epoch=n, steps=22 * n, train_loss=1.0 / n, test_loss=1.0 / n, test_accuracy=accuracy,
                        wall_time=0.5, lr_now=0.03, staleness_hist={2: 22})


def test_an_epoch_reported_twice_is_one_row_and_counts_once(tmp_path):
    sessions = store.session_factory(store.connect(f"sqlite:///{tmp_path / 'jobs.db'}"))
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
