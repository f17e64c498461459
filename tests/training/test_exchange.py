"""The parameter server's desk without Ray (`Exchange`): workers trading gradients for work from threads of their
own, the leases of loops that ended, and the driver's poll. Gradients are computed as the Ray workers compute
them (`flat_gradient`)."""

import threading
import time

import numpy as np
import pytest
import torch

from abray.training.config import parse_config
from abray.training.data import digits
from abray.training.exchange import Exchange
from abray.training.flat import FlatLayout, flat_gradient
from abray.training.models import build_model
from abray.training.parameter_server import ParameterServerState

DATA = digits()


pytestmark = pytest.mark.usefixtures("one_thread")


def desk(**kw) -> Exchange:
    config = parse_config({"mode": "distributed", "delay": 0, "batch_size": 64, "epochs": 1, **kw})
    return Exchange(ParameterServerState(config, DATA.test, len(DATA.train), DATA.num_classes, None, "run-a"))


class Worker:
    def __init__(self, model="digits_cnn"):
        self.model = build_model(model, DATA.num_classes).train()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.layout = FlatLayout([p.shape for p in self.model.parameters()])

    def outcome(self, work) -> tuple[dict, np.ndarray]:
        loss, grad = flat_gradient(self.model, self.names, self.layout, DATA.train, work, work["weights"])
        return {"kind": "gradient", "step": work["step"], "loss": loss}, grad


def in_thread(call):
    """Run `call` in a thread; returns (thread, box): box["out"] once it returns."""
    box = {}
    thread = threading.Thread(target=lambda: box.__setitem__("out", call()), daemon=True)
    thread.start()
    return thread, box


def test_a_worker_whose_step_needs_weights_not_made_yet_waits_until_a_step_it_can_compute_comes():
    d, worker = desk(delay=0), Worker()  # D = 0: one step at a time, each on the weights of the one before
    first = d.exchange((0, 1), None, None, None)
    assert (first["step"], first["version"]) == (0, 0)
    thread, box = in_thread(lambda: d.exchange((1, 1), None, None, None))  # step 1 needs version 1
    time.sleep(0.3)
    assert thread.is_alive()
    second = d.exchange((0, 1), first["lease"], *worker.outcome(first))  # step 0 applied
    assert (second["step"], second["version"]) == (1, 1)  # the worker that made version 1 computes on it
    time.sleep(0.3)
    assert thread.is_alive()  # the other waits on: step 2 needs version 2
    d.release((0, 1), None)  # the first loop ends holding step 1: the waiting one gets it
    thread.join(timeout=10)
    assert (box["out"]["step"], box["out"]["version"]) == (1, 1) and box["out"]["timing"]["wait"] > 0.5


def test_an_early_gradient_in_memory_the_worker_reuses_is_kept_as_a_copy():
    # D = 3: steps 0-3 all on version 0, so the worker that returns step 1 early gets step 2 at once, while its
    # gradient waits for step 0; it then writes its next gradient where the first one was
    results = {}
    for lent in (True, False):  # lent: the worker's memory, overwritten; or Ray's copy, left alone
        d, worker = desk(delay=3), Worker()
        w0, w1 = d.exchange((0, 1), None, None, None), d.exchange((1, 1), None, None, None)
        outcome, grad = worker.outcome(w1)
        again = d.exchange((1, 1), w1["lease"], outcome, grad, borrowed=lent)
        assert again["step"] == 2 and d.state.applied == 0  # step 1 waits for step 0
        if lent:
            grad[:] = np.nan  # the worker's next gradient, written over the first
        d.exchange((0, 1), w0["lease"], *worker.outcome(w0))
        assert d.state.applied_steps == [0, 1]
        results[lent] = d.state.flat.clone()
    assert torch.isfinite(results[True]).all()
    assert torch.equal(results[True], results[False])  # the copy kept what was lent


def test_a_released_holder_gives_its_step_back_and_its_late_result_is_dropped_without_new_work():
    d, worker = desk(mode="free"), Worker()
    work = d.exchange((0, 1), None, None, None)
    late = worker.outcome(work)
    assert d.release((0, 1), None) is None  # its worker is gone for good: the step goes back, no try counted
    again = d.exchange((1, 1), None, None, None)
    assert again["step"] == 0 and d.state.failures == {}
    assert d.exchange((0, 1), work["lease"], *late) is None  # retired: no more work for that loop
    assert d.state.applied == 0  # and its late gradient was dropped
    d.exchange((1, 1), again["lease"], *worker.outcome(again))
    assert d.state.applied_steps == [0]
    assert d.exchange((0, 2), None, None, None)["step"] == 2  # its worker's next loop works again


def test_a_worker_that_died_costs_its_step_a_try_and_out_of_tries_the_run_fails_saying_so():
    d = desk(step_retries=1)
    error = "worker 0 died computing step {step}: ActorUnavailableError"
    for attempt in (1, 2):
        work = d.exchange((0, attempt), None, None, None)
        assert work["step"] == 0
        failure = d.release((0, attempt), error)
    assert failure == ("step 0 failed 2 times (step_retries = 1); last error: worker 0 died computing step 0: "
                       "ActorUnavailableError")
    assert d.state.done and d.exchange((1, 1), None, None, None) is None  # every loop stops


def test_the_step_s_own_error_comes_with_the_next_exchange_and_counts_a_try():
    d = desk(step_retries=3)
    work = d.exchange((0, 1), None, None, None)
    again = d.exchange((0, 1), work["lease"], {"kind": "failed", "error": "OverflowError: too large (on worker 0)"},
                       None)
    assert again["step"] == 0 and d.state.failures == {0: 1}


def test_the_drivers_poll_hears_each_update_once_and_after_a_restart_all_of_the_new_instance():
    d, worker = desk(mode="free"), Worker()
    works = [d.exchange((w, 1), None, None, None) for w in range(2)]
    for w, work in enumerate(works):
        d.exchange((w, 1), work["lease"], *worker.outcome(work))
    # a driver that heard 5 updates of the instance before this one (which restarted): all of this one's
    first = d.poll("an instance before", 5, 0, {})
    assert [u["applied"] for u in first["updates"]] == [1, 2] and first["next"] == 2
    assert [u["worker"] for u in first["updates"]] == [0, 1] and first["instance"] == d.state.instance
    assert not first["done"] and first["epochs"] == []
    start = time.monotonic()
    quiet = d.poll(d.state.instance, 2, 0, {}, timeout=0.3)  # nothing new: it waits, then answers
    assert quiet["updates"] == [] and quiet["next"] == 2 and time.monotonic() - start >= 0.25


def test_a_restarted_instance_learns_the_retired_loops_from_the_poll_and_gives_their_steps_back():
    d = desk(mode="free")
    zombie = d.exchange((0, 1), None, None, None)  # a loop the driver saw end, talking to the new instance
    d.poll(None, 0, 0, {0: 1})
    assert not d.state.holds(zombie["lease"]) and d.state.requeued == [0]
    assert d.exchange((0, 1), None, None, None) is None
    assert d.exchange((1, 1), None, None, None)["step"] == 0


def test_a_poll_for_one_update_at_a_time_hears_the_epoch_with_its_last_update_and_the_end_after_it():
    d, worker = desk(mode="free"), Worker()  # one epoch of 22 steps
    work = d.exchange((0, 1), None, None, None)
    while work is not None:
        work = d.exchange((0, 1), work["lease"], *worker.outcome(work))
    assert d.state.done
    heard, after, epochs = [], 0, []
    while True:
        out = d.poll(d.state.instance, after, len(epochs), {}, limit=1)
        heard += [u["applied"] for u in out["updates"]]
        after, epochs = out["next"], epochs + out["epochs"]
        assert [m.epoch for m in epochs] == ([1] if heard[-1] == 22 else [])
        if out["done"]:
            break
    assert heard == list(range(1, 23))
