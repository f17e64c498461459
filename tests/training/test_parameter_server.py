"""The parameter server's logic without Ray (`ParameterServerState`): leases, restarts from a checkpoint, retries,
epochs and weight prediction. Gradients are computed the way the Ray workers compute them (`flat_gradient`)."""

import numpy as np
import pytest
import torch

from abray.optim.methods import METHODS
from abray.training.checkpoints import CheckpointError, remove_folder
from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.flat import FlatLayout, flat_gradient, model_buffers
from abray.training.models import build_model
from abray.training.parameter_server import ParameterServerState
from support.runs import simulate

DATA = digits()
STEPS_PER_EPOCH = len(DATA.train) // 64  # 22


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw):
    return parse_config({"mode": "distributed", "delay": 2, "batch_size": 64, "epochs": 2, "checkpoint_every": 5,
                         **kw})


def server(cfg, storage=None, run_id="run-a"):
    return ParameterServerState(cfg, DATA.test, len(DATA.train), DATA.num_classes,
                                str(storage) if storage else None, run_id)


class Worker:
    """A worker's computation, as the Ray actor does it: (work) -> (lease, flat gradient, loss, buffers)."""

    def __init__(self, cfg):
        self.model = build_model(cfg.model, DATA.num_classes).train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.layout = FlatLayout([p.shape for p in self.model.parameters()])

    def __call__(self, work):
        loss, grad = flat_gradient(self.model, self.names, self.layout, DATA.train, work, work["weights"])
        return work["lease"], grad, loss, None


def run_to_the_end(state, worker, in_flight=()):
    """Hand out and apply until done, oldest hand-out first; `in_flight`: results computed earlier."""
    queue = list(in_flight)
    epochs = []
    while not state.done:
        while (work := state.next_work()) is not None:
            queue.append(worker(work))
        epochs += state.receive(*queue.pop(0))
    return epochs


def test_a_result_delivered_twice_is_applied_once():
    cfg = config(mode="free")
    state, worker = server(cfg), Worker(cfg)
    result = worker(state.next_work())
    assert state.holds(result[0])
    state.receive(*result)
    assert not state.holds(result[0])
    weights = state.flat.clone()
    assert state.receive(*result) == [] and state.applied == 1 and state.applied_steps == [0]
    assert torch.equal(state.flat, weights)


@pytest.mark.parametrize("mode", ["distributed", "free"])
def test_a_restarted_server_applies_every_step_once_and_drops_results_from_before(tmp_path, mode):
    cfg = config(mode=mode, delay=3, checkpoint_every=2)
    worker = Worker(cfg)
    undisturbed = server(cfg)
    run_to_the_end(undisturbed, worker)

    first = server(cfg, tmp_path)
    results = [worker(first.next_work()) for _ in range(4)]  # steps 0-3 handed out
    for r in results[1:3]:  # steps 1 and 2 arrive first: free mode applies them, fixed mode buffers them
        first.receive(*r)
    first.receive(*results[0])  # 3 updates now, in either mode
    late = worker(first.next_work())  # step 4, handed out by the instance about to die
    first.receive(*results[3])  # 4 updates: a checkpoint, with step 4 still out
    applied_before_crash = list(first.applied_steps)

    restarted = server(cfg, tmp_path)
    assert restarted.restore() and restarted.applied == 4 and restarted.applied_steps == applied_before_crash
    assert restarted.receive(*late) == [] and restarted.applied == 4  # a lease of the dead instance: dropped
    again = restarted.next_work()
    assert restarted.unapplied_steps() == [4] and again["step"] == 4  # and its step comes again
    run_to_the_end(restarted, worker, [worker(again)])

    total = STEPS_PER_EPOCH * cfg.epochs
    assert sorted(restarted.applied_steps) == list(range(total))  # every step once
    assert [m.epoch for m in restarted.history] == [1, 2]
    if mode == "distributed":  # the same trajectory as without the restart
        assert restarted.applied_steps == list(range(total))
        assert torch.allclose(restarted.flat, undisturbed.flat, atol=1e-6, rtol=0)


def test_free_mode_resumes_with_the_steps_it_had_handed_out_but_not_applied(tmp_path):
    # out of order: steps 0..2 out, 2 and 1 applied, then a checkpoint while 0 is still out
    cfg = config(mode="free", checkpoint_every=2, epochs=1)
    state, worker = server(cfg, tmp_path), Worker(cfg)
    results = [worker(state.next_work()) for _ in range(3)]
    state.receive(*results[2])
    state.receive(*results[1])
    # no weights saved: a restart hands every step out again on the newest version, made then
    assert state.folder.load()["versions"] == {} and sorted(state.versions) == [0]
    restarted = server(cfg, tmp_path)
    restarted.restore()
    assert restarted.applied_steps == [2, 1] and restarted.unapplied_steps() == [0]
    assert [restarted.next_work()["step"] for _ in range(2)] == [0, 3]


def test_a_checkpoint_of_another_run_or_config_is_refused_naming_its_path(tmp_path):
    cfg = config(optimizer="ab")
    state, worker = server(cfg, tmp_path, run_id="run-a"), Worker(cfg)
    run_to_the_end(state, worker)  # checkpoints along the way and at the end
    folder = tmp_path / "run-a"
    assert (folder / "checkpoint.pt").exists()

    assert server(cfg, tmp_path, run_id="run-a").restore()  # its own run, same config: resumed
    other_config = config(optimizer="sgdm", seed=7, lr=0.01)
    for intruder in (server(other_config, tmp_path, run_id="run-a"), server(cfg, tmp_path, run_id="run-b")):
        intruder.folder = state.folder  # pointed at run-a's folder
        with pytest.raises(CheckpointError, match=f"checkpoint {folder}/checkpoint.pt belongs to run run-a .*"
                                                  "refusing to resume it"):
            intruder.restore()
        assert intruder.applied == 0  # nothing of it was taken

    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {folder}/checkpoint.pt"):
        server(cfg, tmp_path, run_id="run-a").restore()


def test_each_run_checkpoints_in_a_folder_of_its_own_under_the_storage_root(tmp_path):
    cfg = config(epochs=1)
    for run_id in ("run-a", "run-b"):
        state = server(cfg, tmp_path, run_id=run_id)
        run_to_the_end(state, Worker(cfg))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-a", "run-b"]
    assert [p.name for p in (tmp_path / "run-a").iterdir()] == ["checkpoint.pt"]  # no temporary file left
    state.folder.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-a"]
    remove_folder(str(tmp_path), only_if_empty=True)  # a sweep's root, when its runs keep their checkpoints
    assert (tmp_path / "run-a" / "checkpoint.pt").exists()
    remove_folder(str(tmp_path))  # and when they do not: whatever a stopped run left goes too
    assert not tmp_path.exists()


@pytest.mark.parametrize("retries", [0, 3])
def test_a_step_that_keeps_failing_fails_the_run_after_its_retries_with_the_workers_error(retries):
    state = server(config(step_retries=retries))
    for attempt in range(retries):
        work = state.next_work()
        assert work["step"] == 0 and state.fail(work["lease"], "OverflowError: timestamp too large")
        assert not state.done
    work = state.next_work()
    assert work["step"] == 0
    assert not state.fail(work["lease"], "OverflowError: timestamp too large")
    assert state.done and state.next_work() is None
    assert state.failure == (f"step 0 failed {retries + 1} times (step_retries = {retries}); last error: "
                             "OverflowError: timestamp too large")


def test_a_lost_worker_gives_its_step_back_without_using_a_retry():
    state = server(config(step_retries=0))
    work = state.next_work()
    assert state.requeue(work["lease"]) and not state.requeue(work["lease"])  # once per lease
    assert state.next_work()["step"] == 0 and state.failure is None and state.failures == {}


def test_an_epoch_is_checkpointed_before_it_is_reported_so_a_restart_never_reports_it_again(tmp_path):
    cfg = config(checkpoint_every=100, epochs=3)  # 100 does not divide an epoch of 22 steps
    state, worker = server(cfg, tmp_path), Worker(cfg)
    reported = []
    while state.applied < STEPS_PER_EPOCH + 5:  # into epoch 2, no checkpoint_every yet
        reported += state.receive(*worker(state.next_work()))
    assert [m.epoch for m in reported] == [1]

    restarted = server(cfg, tmp_path)
    assert restarted.restore() and restarted.applied == STEPS_PER_EPOCH  # resumed at the end of epoch 1
    assert restarted.epochs_since(0) == reported and restarted.epochs_since(1) == []
    reported += run_to_the_end(restarted, worker)
    assert [m.epoch for m in reported] == [1, 2, 3]
    assert [m.steps for m in reported] == [STEPS_PER_EPOCH * e for e in (1, 2, 3)]


def test_free_mode_weight_prediction_looks_ahead_by_the_measured_staleness():
    cfg = config(mode="free", optimizer="lwp", delay=0, lr=0.05)
    state, worker = server(cfg), Worker(cfg)
    results = [worker(state.next_work()) for _ in range(4)]
    for r in results:  # applied on arrival: staleness 0, 1, 2, 3
        state.receive(*r)
    assert state.staleness == [0, 1, 2, 3]
    horizon = 1.5  # their mean
    work = state.next_work()
    velocity = torch.cat([state.optimizer.state[p]["momentum_buffer"].reshape(-1) for p in state.params])
    lr = state.optimizer.param_groups[0]["lr"]
    expected = state.flat - lr * horizon * velocity  # w - lr * staleness * v
    assert not torch.allclose(expected, state.flat)
    np.testing.assert_allclose(work["weights"], expected.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("optimizer", sorted(METHODS))
def test_every_method_on_the_server_in_fixed_mode_is_the_simulators_update_for_update(optimizer):
    # each peer's delay-aware parts (the staleness it is told, the weights the gradient came from, the predicted
    # weights it is computed on) as the parameter server supplies them, against the simulator's; under the
    # default schedule (warmup, then cosine), so that a prediction's lr is that of the updates to come on both
    cfg = config(optimizer=optimizer, epochs=1, delay=3, lr=0.05)
    assert cfg.schedule == "cosine" and cfg.warmup_epochs > 0
    state = server(cfg)
    run_to_the_end(state, Worker(cfg))
    history, weights = simulate(cfg, DATA)
    # AB counts the updates its braking reversed, as in the simulator; the others count none
    assert state.history[-1].reversed_fraction == history[-1].reversed_fraction
    assert (state.history[-1].reversed_fraction is not None) == (optimizer in ("ab", "ab_lwp"))
    assert state.applied_steps == list(range(STEPS_PER_EPOCH))
    assert state.staleness == [min(t, 3) for t in range(STEPS_PER_EPOCH)]
    assert state.history[-1].staleness_hist == {0: 1, 1: 1, 2: 1, 3: STEPS_PER_EPOCH - 3}  # the epoch's record too
    np.testing.assert_allclose(state.flat.numpy(), weights, rtol=0, atol=1e-5)


def test_a_non_finite_loss_ends_a_fixed_delay_run_at_its_step_which_is_not_applied():
    cfg = config(epochs=1)
    state, worker = server(cfg), Worker(cfg)
    works = [state.next_work() for _ in range(3)]  # steps 0, 1, 2 (D = 2: all on version 0)
    state.receive(*worker(works[0]))
    lease, grad, _, buffers = worker(works[2])  # step 2's loss comes back not finite, before step 1's result
    weights = state.flat.clone()
    epochs = state.receive(lease, grad, float("nan"), buffers)
    assert state.done and state.diverged_step == 2 and state.applied == 1 and state.applied_steps == [0]
    assert torch.equal(state.flat, weights)  # the diverged step changed nothing
    assert len(epochs) == 1 and epochs[0].diverged and epochs[0].diverged_step == 2 and epochs[0].steps == 1
    assert state.receive(*worker(works[1])) == []  # nor does step 1, arriving after the end
    assert state.next_work() is None and state.receive(*worker(works[2])) == []  # a run that ended takes nothing


def test_a_non_finite_loss_ends_a_free_run_at_the_number_of_updates_applied():
    cfg = config(mode="free", epochs=1)
    state, worker = server(cfg), Worker(cfg)
    results = [worker(state.next_work()) for _ in range(4)]
    for result in (results[0], results[1], results[3]):  # applied on arrival, in any order
        state.receive(*result)
    lease, grad, _, buffers = results[2]
    epochs = state.receive(lease, grad, float("inf"), buffers)  # step 2, after 3 updates: diverged at update 3
    assert state.done and state.diverged_step == 3 == state.applied and state.applied_steps == [0, 1, 3]
    assert [(m.epoch, m.diverged, m.diverged_step) for m in epochs] == [(1, True, 3)]


def test_each_start_names_its_leases_apart_and_a_run_without_a_checkpoint_starts_afresh(tmp_path):
    cfg = config(mode="free")
    first, second = server(cfg, tmp_path), server(cfg, tmp_path)  # a run and its restart, before any checkpoint
    lease = first.next_work()["lease"]
    assert second.next_work()["lease"] != lease and not second.holds(lease)
    assert first.fail(second.next_work()["lease"], "not mine") is True and first.failure is None
    assert second.restore() is False and server(cfg).restore() is False  # nothing saved; no storage at all


def test_free_mode_keeps_only_the_versions_outstanding_work_needs_and_hands_out_no_step_past_the_end():
    cfg = config(mode="free", epochs=1, optimizer="lwp")
    state, worker = server(cfg), Worker(cfg)
    assert state.prediction_horizon() == 0.0  # no update measured yet: the weights as they are
    works = [state.next_work() for _ in range(2)]
    assert [w["version"] for w in works] == [0, 0]
    state.receive(*worker(works[0]))
    assert sorted(state.versions) == [0]  # version 1 is made when a step is handed out on it, not before
    state.receive(*worker(works[1]))
    assert sorted(state.versions) == []
    while state.next_step < STEPS_PER_EPOCH:
        state.next_work()
    assert state.next_work() is None and not state.done  # every step handed out, none applied yet


def test_fixed_mode_reports_an_epoch_that_ends_inside_a_run_of_buffered_steps():
    cfg = config(epochs=2)  # D = 2
    state, worker = server(cfg), Worker(cfg)
    while state.applied < STEPS_PER_EPOCH - 2:
        state.receive(*worker(state.next_work()))
    last_two, first_of_next = [worker(state.next_work()) for _ in range(2)], worker(state.next_work())
    assert state.receive(*last_two[1]) == [] and state.receive(*first_of_next) == []  # early: buffered
    epochs = state.receive(*last_two[0])  # applies the epoch's last two steps and the next epoch's first
    assert [m.epoch for m in epochs] == [1] and state.applied == STEPS_PER_EPOCH + 1


class BufferWorker(Worker):
    """A worker of a BatchNorm model, which sends its running statistics back as the Ray worker does."""

    def __call__(self, work):
        lease, grad, loss, _ = super().__call__(work)
        sent = {k: v + 1.0 for k, v in model_buffers(self.model).items()}  # changed, to be told apart
        return lease, grad, loss, sent if work["buffers"] else None


@pytest.mark.parametrize("mode", ["distributed", "free"])
def test_a_batchnorm_models_statistics_go_out_with_the_work_and_come_back_for_the_evaluation(mode):
    cfg = config(mode=mode, epochs=1, model="digits_cnn_bn")
    state, worker = server(cfg), BufferWorker(cfg)
    first = state.next_work()
    initial = model_buffers(build_model("digits_cnn_bn", DATA.num_classes))
    assert first["buffers"].keys() == initial.keys() and any("running_var" in k for k in initial)
    assert all(np.array_equal(first["buffers"][k], initial[k]) for k in initial)
    _, _, _, sent = result = worker(first)
    state.receive(*result)
    second = state.next_work()
    assert all(np.array_equal(second["buffers"][k], sent[k]) for k in sent)  # the latest statistics
    run_to_the_end(state, worker, [worker(second)])
    evaluated = model_buffers(state.model)
    assert all(np.array_equal(evaluated[k], state.buffers[k]) for k in evaluated)
    assert not all(np.array_equal(evaluated[k], initial[k]) for k in evaluated)


def test_holders_by_hand_a_retired_generation_and_every_earlier_one_and_each_holders_own_leases():
    cfg = config(mode="free")
    state, worker = server(cfg), Worker(cfg)
    a, b = ("w1", 0), ("w2", 0)
    first, second, third = state.next_work(a), state.next_work(b), state.next_work(a)
    assert state.leases_of(a) == [(first["lease"], 0), (third["lease"], 2)] and state.leases_of(b) == [
        (second["lease"], 1)]
    state.receive(*worker(first))
    assert state.leases_of(a) == [(third["lease"], 2)] and first["lease"] not in state.holders  # settled
    assert not state.is_retired(("w1", 0))
    state.retire(("w1", 3))
    state.retire(("w1", 1))  # an older loop ending later does not un-retire the newer ones
    assert state.is_retired(("w1", 2)) and state.is_retired(("w1", 3)) and not state.is_retired(("w1", 4))
    state.retire(("w3", 0))
    assert state.is_retired(("w3", 0)) and not state.is_retired(("w3", 1)) and not state.is_retired(("w2", 0))


def test_a_sharded_leader_has_the_other_parts_filled_in_before_each_epochs_evaluation():
    filled = []
    cfg = config(epochs=1)
    state = ParameterServerState(cfg, DATA.test, len(DATA.train), DATA.num_classes, None, "run-a",
                                 fill_others=lambda flat, epoch: filled.append((flat, epoch)))
    run_to_the_end(state, Worker(cfg))
    assert len(filled) == 1 and filled[0][0] is state.flat and filled[0][1] == 1


def test_a_restored_server_drops_the_versions_it_held_before(tmp_path):
    dropped = []
    cfg = config(mode="free", checkpoint_every=2, epochs=1)
    state, worker = server(cfg, tmp_path), Worker(cfg)
    for _ in range(2):
        state.receive(*worker(state.next_work()))
    restarted = ParameterServerState(cfg, DATA.test, len(DATA.train), DATA.num_classes, str(tmp_path), "run-a",
                                     drop=dropped.append)
    held = list(restarted.versions.values())
    assert restarted.restore() and len(held) == 1
    assert [id(h) for h in dropped] == [id(h) for h in held]  # version 0, made at its start


def test_the_time_spent_storing_versions_adds_up_every_put():
    import time

    puts = []

    def slow_put(array):  # each put takes at least 5 ms, so the total has a floor the test knows
        puts.append(array.size)
        time.sleep(0.005)
        return np.copy(array)

    cfg = config(mode="free", epochs=1)
    start = time.perf_counter()
    state = ParameterServerState(cfg, DATA.test, len(DATA.train), DATA.num_classes, None, "run-a", put=slow_put)
    worker = Worker(cfg)
    for _ in range(3):
        state.receive(*worker(state.next_work()))
    assert len(puts) == 3 and 0.005 * len(puts) <= state.put_seconds <= time.perf_counter() - start
