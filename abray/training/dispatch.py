"""The driver of a distributed run (`abray.training.distributed`): it starts every worker's loop, listens to the
parameter server, and steps in only when something fails. It is off the critical path: each worker trades its
gradient for its next work with the server directly (`Worker.loop`, `Exchange.exchange`), one Ray call per update,
and the driver hears of the updates through a long poll (`Exchange.poll`), in batches, for its callbacks.

Every lease is settled exactly once (docs/fault-tolerance.md):
- by the loop that holds it, with its next exchange: the gradient (applied, or dropped if the server no longer
  holds the lease), the step's own error (`fail`: a try of the step; out of `step_retries` the run fails with
  that error), or a give-back when its weights died with an earlier server instance (`requeue`);
- by the driver, when a loop ends without settling (`release`, which also retires that loop, so that a late
  exchange of it gets no more work): its worker's process died (`fail`, a try of the step, if it restarts;
  `requeue` if it is gone for good), or it lost the server (`requeue`; the restarted instance knows no lease of
  the one before anyway).
A server that dies is waited for (it resumes from its checkpoint); one that cannot restart fails the run. A worker
that dies is probed until it answers, then runs a new loop, without holding up the others; one gone for good, or
not back within RESTART_TIMEOUT_S, leaves the run to the rest.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from .epochs import EpochMetrics
from .parameter_server import TrainingFailed

RESTART_TIMEOUT_S = 180.0
LOOP_ERRORS = 3  # a worker whose loop itself fails this many times in a row leaves the run


def error_line(err: BaseException) -> str:
    """The last line of an error's text: for a task error, the remote exception's own `Type: message`."""
    if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class Driver:
    """One run's watcher: `run()` returns when the server is done, or raises TrainingFailed."""

    def __init__(self, server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready=None,
                 followers: Optional[list] = None, parts: Optional[list[tuple]] = None):
        """`followers`, `parts`: with sharded servers, the following shards and every shard's part."""
        self.server, self.workers, self.run_id = server, workers, run_id
        self.followers, self.parts = followers or [], parts
        self.train_ref, self.test_ref = train_ref, test_ref
        self.on_ready = on_ready
        self.on_step, self.on_epoch, self.on_update = on_step, on_epoch, on_update
        self.instance: Optional[str] = None  # the server instance last heard from
        self.past_instances: set[str] = set()  # those before it: what they still say is stale
        self.heard = 0  # updates of that instance passed to the callbacks
        self.server_restarts = 0
        self.worker_failures = 0
        self.reported = 0  # epochs passed to on_epoch
        self.loops: dict = {}  # a running loop's task ref -> (worker, generation)
        self.generation = [0] * len(workers)  # of each worker's latest loop
        self.retired: dict[int, int] = {}  # worker -> its newest loop generation that ended
        self.loop_errors = [0] * len(workers)  # loops of the worker that failed in a row
        self.poll_ref = None
        self.probes: dict = {}  # `ready` ref of a restarting worker -> (worker, deadline)
        self.alive: set[int] = set(range(len(workers)))

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            ray.get([w.ready.remote() for w in self.workers])
        except RayError as err:
            raise TrainingFailed(f"a worker could not start: {error_line(err)}") from None
        self._heard_from(self.server_call(lambda: self.server.ping.remote())["instance"])
        if self.on_ready:
            self.on_ready()
        for w in sorted(self.alive):
            self._start_loop(w)
        self._poll()
        while not self._next_event():
            pass

    def _next_event(self) -> bool:
        ready, _ = ray.wait([self.poll_ref, *self.loops, *self.probes], num_returns=1, timeout=1.0)
        finished = False
        if ready and ready[0] == self.poll_ref:
            finished = self._polled()
        elif ready and ready[0] in self.probes:
            self._probed(ready[0])
        elif ready:
            self._loop_ended(ready[0])
        self._expire_probes()
        return finished

    def _start_loop(self, w: int) -> None:
        self.generation[w] += 1
        ref = self.workers[w].loop.remote(self.server, self.generation[w], [self.train_ref], [self.test_ref],
                                          self.followers or None, self.parts)
        self.loops[ref] = (w, self.generation[w])

    def _poll(self) -> None:
        # with on_update, one update a poll: the caller reacts to each (the chaos test kills actors) before it
        # hears of the next, as it would if updates came one by one
        self.poll_ref = self.server.poll.remote(self.instance, self.heard, self.reported, dict(self.retired),
                                                1 if self.on_update else None)

    def _polled(self) -> bool:
        try:
            out = ray.get(self.poll_ref)
        except RayTaskError as err:
            if not isinstance(err.cause, RayError):
                raise TrainingFailed(f"the parameter server failed: {error_line(err)}") from None
            self._server_failed(err)
            out = None
        except RayActorError as err:
            self._server_failed(err)
            out = None
        if out is not None and self._heard_from(out["instance"]):
            for update in out["updates"]:
                if self.on_update:
                    self.on_update({**update, "run_id": self.run_id,
                                    "server_seconds": update["apply_seconds"] + update["put_seconds"]})
                if self.on_step:
                    self.on_step(update["applied"], update["loss"])
            self.heard = out["next"]
            self._report(out["epochs"])
            if out["failure"]:
                raise TrainingFailed(out["failure"])
            if out["done"]:
                return True
            if not self.loops and not self.probes and not out["updates"]:
                raise RuntimeError(f"no worker loop running, yet the run is not finished ({out['applied']} updates "
                                   "applied)")
        self._poll()
        return False

    def _report(self, epochs: list[EpochMetrics]) -> None:
        for metrics in epochs:
            if metrics.epoch == self.reported + 1:
                self.reported += 1
                if self.on_epoch:
                    self.on_epoch(metrics)

    # ---- loops that ended ---------------------------------------------------------------------------
    def _loop_ended(self, ref) -> None:
        w, generation = self.loops.pop(ref)
        holder = (w, generation)
        try:
            out = ray.get(ref)
        except RayError as err:
            why = error_line(err)
            if isinstance(err, RayActorError) and not isinstance(err, RayTaskError):  # the worker's process died
                self.worker_failures += 1
                if isinstance(err, ActorDiedError):  # for good (killed, or its restart failed): the others go on
                    self._release(holder, None)
                    self._drop_worker(w, why)
                else:  # restarting: a try of the step it was computing
                    self._release(holder, f"worker {w} died computing step {{step}}: {why}")
                    self._probe(w)
                return
            # the loop's own code failed (it settles the step's errors itself): a try of what it held
            self.loop_errors[w] += 1
            self._release(holder, f"worker {w} failed on step {{step}}: {why}")
            if self.loop_errors[w] >= LOOP_ERRORS:
                self._drop_worker(w, f"its loop failed {LOOP_ERRORS} times in a row, last: {why}")
            else:
                self._start_loop(w)
            return
        self.loop_errors[w] = 0
        if out["ended"] == "server failed":
            raise TrainingFailed(f"the parameter server failed: {out['error']}")
        if out["ended"] == "shard":
            raise TrainingFailed(f"a parameter-server shard failed, and sharded servers do not restart: "
                                 f"{out['error']}")
        if out["ended"] == "server":  # lost the server: give back what it held, once the server answers again
            self._release(holder, None)
            self._start_loop(w)
        # "done": the server stopped it, and the poll says why

    def _release(self, holder: tuple, error: Optional[str]) -> None:
        failure = self.server_call(lambda: self.server.release.remote(holder, error))
        self.retired[holder[0]] = holder[1]
        if self.followers:  # they keep the versions a loop reads until it sends its gradient, or is released
            ray.wait([f.release.remote(holder) for f in self.followers], num_returns=len(self.followers),
                     timeout=30)
        if failure:
            raise TrainingFailed(failure)

    # ---- workers that died ----------------------------------------------------------------------------
    def _probe(self, w: int, deadline: Optional[float] = None) -> None:
        """Wait (without blocking the loop) for worker `w` to come back before it runs a loop again."""
        self.probes[self.workers[w].ready.remote()] = (w, deadline or time.monotonic() + RESTART_TIMEOUT_S)

    def _probed(self, ref) -> None:
        w, deadline = self.probes.pop(ref)
        try:
            ray.get(ref)
        except ActorDiedError as err:
            self._drop_worker(w, error_line(err))
            return
        except RayActorError:
            self._probe(w, deadline)
            return
        self._start_loop(w)

    def _expire_probes(self) -> None:
        now = time.monotonic()
        for ref, (w, deadline) in list(self.probes.items()):
            if now > deadline:
                del self.probes[ref]
                self._drop_worker(w, f"it did not come back within {RESTART_TIMEOUT_S:.0f} s")

    def _drop_worker(self, w: int, why: str) -> None:
        self.alive.discard(w)
        print(f"abray: worker {w} of run {self.run_id} is gone ({why}); {len(self.alive)} left", file=sys.stderr,
              flush=True)
        if not self.alive:
            raise TrainingFailed(f"no worker left: the last one, worker {w}, is gone ({why})")

    # ---- the server -----------------------------------------------------------------------------------
    def server_call(self, make_call):
        """`ray.get(make_call())`, again after the server restarts if it died meanwhile. Only calls that are safe
        to repeat go through here."""
        while True:
            try:
                return ray.get(make_call())
            except RayActorError as err:
                if isinstance(err, RayTaskError):
                    raise
                self._server_failed(err)

    def _server_failed(self, err: RayError) -> None:
        """The server died: wait for it to come back (it resumes from its checkpoint), or fail the run if it
        cannot. Not for workers: their deaths go through `_loop_ended`."""
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while True:
            try:
                status = ray.get(self.server.ping.remote(), timeout=30)
                break
            except ActorDiedError as dead:
                raise TrainingFailed(f"the parameter server died and cannot restart: {error_line(dead)}") from None
            except (RayActorError, GetTimeoutError):
                if time.monotonic() > deadline:
                    raise TrainingFailed(f"the parameter server did not come back within {RESTART_TIMEOUT_S:.0f} s "
                                         f"({error_line(err)})") from None
                time.sleep(0.2)
        self._heard_from(status["instance"])

    def _heard_from(self, instance: str) -> bool:
        """An answer from server instance `instance`: a new one restarted from its checkpoint, and knows nothing
        of the updates heard from the one before (the next poll brings the epochs not yet reported). False for
        an answer of an instance before the current one, which arrived late: it is stale."""
        if instance == self.instance:
            return True
        if instance in self.past_instances:
            return False
        if self.instance is not None:
            self.server_restarts += 1
            self.past_instances.add(self.instance)
        self.instance, self.heard = instance, 0
        return True
