"""The parameter server's desk, where workers trade a result for their next work directly, and the driver only
listens: `Exchange` wraps `ParameterServerState` for concurrent callers (the Ray actor gives each call a
thread of its own), free of Ray so that it reads, and tests, as plain Python.

- `exchange(holder, lease, outcome, grad)`: a worker's loop settles its last lease (its gradient, the step's
  own error, or a give-back when its weights were lost), then waits until there is work for it. Fixed mode
  applies steps strictly in order, so an early gradient waits in the state's buffer and a worker whose next
  step needs weights not made yet waits here; every settled lease wakes the waiting. None tells the loop to
  stop: the run is over or failed, or the holder was retired.
- `release(holder, error)`: a loop ended without settling what it holds (its worker died, or lost the
  server): retire the holder, and settle each of its leases with `fail` (a try of the step; `error` says why)
  or, with no error, `requeue`.
- `poll(instance, after, reported, retired)`: the driver's long poll: the updates applied since it last
  heard (a record each, for its callbacks), the epochs it has not reported, and whether the run is over.
  `retired` repeats the holders the driver has retired, so a restarted instance knows them too.

Timing, for the per-update breakdown (docs/distributed.md): each record carries the server's time to apply
the update and to store the next version (`put`), and the worker's compute, fetch and round-trip times, with
the server's own share of that worker's previous call (queue for the lock, hand-out, wait for work).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

from .parameter_server import ParameterServerState

POLL_SECONDS = 0.5  # the longest a poll waits for news
KEEP_RECORDS = 10_000  # records kept for a driver that does not poll (it acknowledges what it heard)


class Exchange:
    """One server instance's desk. `observe(record)` is called, under the lock, for every applied update."""

    def __init__(self, state: ParameterServerState, observe: Callable[[dict], None] = lambda record: None):
        self.state = state
        self.observe = observe
        self.cond = threading.Condition()
        self.records: list[dict] = []  # applied updates not yet acknowledged by the driver
        self.first_record = 0  # the index of records[0] among this instance's updates
        self.arrivals: dict[int, dict] = {}  # step -> the worker's report, until its update is applied

    # ---- workers ------------------------------------------------------------------------------------
    def exchange(self, holder: tuple, lease: Optional[str], outcome: Optional[dict],
                 grad: Optional[np.ndarray], borrowed: bool = False) -> Optional[dict]:
        """Settle `lease` with `outcome` ({"kind": "gradient" | "failed" | "requeue", ...}), then the holder's
        next work, once there is some; None: stop. `borrowed`: `grad` is the worker's memory, which it reuses
        once it has its next work, so a gradient kept for later (fixed mode, early) is copied."""
        entered = time.perf_counter()
        with self.cond:
            locked = time.perf_counter()
            if lease is not None:
                self._settle(holder, lease, outcome, grad, borrowed)
                self.cond.notify_all()
            waited = busy = put = 0.0
            while True:
                if self.state.done or self.state.is_retired(holder):
                    return None
                start, put_before = time.perf_counter(), self.state.put_seconds
                work = self.state.next_work(holder)
                busy += time.perf_counter() - start
                put += self.state.put_seconds - put_before  # free mode stores the newest version at hand-out
                if work is not None:
                    break
                start = time.perf_counter()
                self.cond.wait(timeout=POLL_SECONDS)
                waited += time.perf_counter() - start
            work["timing"] = {"queue": locked - entered, "handout": busy - put, "handout_put": put, "wait": waited,
                              "in_call": time.perf_counter() - entered}
            return work

    def _settle(self, holder: tuple, lease: str, outcome: dict, grad, borrowed: bool) -> None:
        state, kind = self.state, outcome["kind"]
        if kind == "failed":
            state.fail(lease, outcome["error"])  # out of retries: state.failure is set, and the run is done
            return
        if kind == "requeue":
            state.requeue(lease)
            return
        if not state.holds(lease):  # settled already (released, or of an instance before a restart): dropped
            return
        step = state.outstanding[lease][0]
        if borrowed and state.fixed and step != state.applied:
            grad = np.array(grad)  # it waits in the buffer, while the worker writes its next gradient
        self.arrivals[step] = {"worker": holder[0], **{k: outcome[k] for k in outcome
                                                                  if k not in ("kind", "buffers", "step", "grad_slot")}}
        start, put_before, before = time.perf_counter(), state.put_seconds, state.applied
        state.receive(lease, grad, outcome["loss"], outcome.get("buffers"))
        applied = state.applied - before
        if not applied:
            return  # early in fixed mode: it waits for the steps before it
        put = state.put_seconds - put_before
        apply = (time.perf_counter() - start - put) / applied
        for index in range(before, state.applied):
            step = state.applied_steps[index]
            record = {"applied": index + 1, "step": step, "staleness": state.staleness[index],
                      "apply_seconds": apply, "put_seconds": put / applied, "instance": state.instance,
                      **self.arrivals.pop(step, {})}
            self.records.append(record)
            self.observe(record)
        if len(self.records) > KEEP_RECORDS:
            drop = len(self.records) - KEEP_RECORDS
            self.records, self.first_record = self.records[drop:], self.first_record + drop

    def release(self, holder: tuple, error: Optional[str]) -> Optional[str]:
        """Retire `holder` and settle its leases: `fail` each (counting a try) with `error`, which may name the
        step as {step}, or `requeue` each when `error` is None. Returns the run's failure, if this ended it."""
        with self.cond:
            self.state.retire(holder)
            for lease, step in self.state.leases_of(holder):
                if error is None:
                    self.state.requeue(lease)
                elif not self.state.fail(lease, error.format(step=step)):
                    break
            self.cond.notify_all()
            return self.state.failure

    def _retire_all(self, retired: dict) -> None:
        """What the driver has retired; new to a restarted instance, whose leases to them go back to the queue."""
        state = self.state
        fresh = [(w, g) for w, g in retired.items() if not state.is_retired((w, g))]
        for holder in fresh:
            state.retire(holder)
        for lease, holder in list(state.holders.items()) if fresh else []:
            if state.is_retired(holder):
                state.requeue(lease)
        if fresh:
            self.cond.notify_all()

    # ---- the driver ---------------------------------------------------------------------------------
    def poll(self, instance: Optional[str], after: int, reported: int, retired: dict,
             timeout: float = POLL_SECONDS, limit: Optional[int] = None) -> dict:
        """The updates of this instance after the first `after` (all of them if the caller last heard from
        another instance; the first `limit` of them, when given), the epochs after the first `reported`, and the
        run's status; waits up to `timeout` for at least one update."""
        deadline = time.monotonic() + timeout
        with self.cond:
            self._retire_all(retired)
            if instance != self.state.instance:
                after = 0
            while self.first_record + len(self.records) <= after and not self.state.done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(timeout=left)
            start = max(0, after - self.first_record)
            self.records, self.first_record = self.records[start:], self.first_record + start  # acknowledged
            s = self.state
            updates = self.records[:limit] if limit else list(self.records)
            more = len(self.records) > len(updates)  # then the epochs up to the last update given, and not done
            epochs = [m for m in s.epochs_since(reported) if not more or m.steps <= updates[-1]["applied"]]
            return {"instance": s.instance, "updates": updates, "next": self.first_record + len(updates),
                    "epochs": epochs, "applied": s.applied, "done": s.done and not more, "failure": s.failure}
