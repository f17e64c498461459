"""The driver loop of a distributed run (`abray.training.distributed`): it keeps every worker busy, forwards each
gradient to the parameter server by reference, and settles every lease the server hands out exactly once.

A worker's next task takes the server's `next_work()` reference as its argument, and the server runs calls in
the order they were sent, so a worker starts as soon as the server has applied the previous gradient and picked its
next step: no round trip through the driver in between.

How each lease is settled, whatever fails (docs/fault-tolerance.md):
- the gradient arrives: `apply` (the server drops it if it no longer holds the lease);
- the apply fails (the server died, or the gradient was lost with its node): `requeue`;
- computing it raised, or killed its restartable worker: `fail`, which counts against the step's `step_retries`
  and fails the run with the worker's error once they are used up;
- its weights died with an earlier server instance, or its worker is gone for good: `requeue`.
A server that dies is waited for (it resumes from its checkpoint, and its new instance knows no earlier lease);
one that cannot restart fails the run. A worker that dies is probed until it answers, without holding up the
others; one gone for good, or not back within RESTART_TIMEOUT_S, leaves the run to the rest.
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


def error_line(err: BaseException) -> str:
    """The last line of an error's text: for a task error, the remote exception's own `Type: message`."""
    if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):
        return f"{type(err.cause).__name__}: {err.cause}"
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


class Driver:
    """One run's loop: `run()` returns when the server is done, or raises TrainingFailed."""

    def __init__(self, server, workers, run_id, train_ref, test_ref, on_step, on_epoch, on_update, on_ready=None):
        self.server, self.workers, self.run_id = server, workers, run_id
        self.train_ref, self.test_ref = train_ref, test_ref
        self.on_ready = on_ready
        self.on_step, self.on_epoch, self.on_update = on_step, on_epoch, on_update
        self.instance: Optional[str] = None  # the server instance last heard from
        self.server_restarts = 0
        self.worker_failures = 0
        self.reported = 0  # epochs passed to on_epoch
        self.in_flight: dict = {}  # compute's metadata ref -> (worker, work ref, gradient ref)
        self.applies: list = []  # (the server's answer to `apply`, the gradient's metadata), in the order sent
        self.probes: dict = {}  # `ready` ref of a restarting worker -> (worker, deadline)
        self.idle: set[int] = set()  # workers that found no work the last time they asked
        self.alive: set[int] = set(range(len(workers)))
        self.woken_without_progress = False

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
            self._hand_out(w)
        while not self._next_event():
            pass

    def _next_event(self) -> bool:
        waitables = [a for a, _ in self.applies[:1]] + list(self.in_flight) + list(self.probes)
        if not waitables:
            return self._stalled()
        ready, _ = ray.wait(waitables, num_returns=1, timeout=1.0)
        finished = self._handle(ready[0]) if ready else False
        self._expire_probes()
        return finished

    def _handle(self, ref) -> bool:
        if self.applies and ref == self.applies[0][0]:
            _, meta = self.applies.pop(0)
            return self._applied(ref, meta)
        if ref in self.probes:
            self._probed(ref)
        else:
            self._computed(ref)
        return False

    def _stalled(self) -> bool:
        """Nothing in flight: the run is over, or the idle workers get one more chance to find work."""
        status = self.server_call(lambda: self.server.ping.remote())
        self._heard_from(status["instance"])
        if status["failure"]:
            raise TrainingFailed(status["failure"])
        if status["done"]:
            return True
        if self.woken_without_progress:
            raise RuntimeError(f"no work in flight, yet the run is not finished ({status['applied']} updates "
                               f"applied)")
        self.woken_without_progress = True
        self._wake_idle()
        return False

    def _hand_out(self, w: int) -> None:
        work_ref = self.server.next_work.remote()
        meta_ref, grad_ref = self.workers[w].compute.remote(work_ref, [self.train_ref])
        self.in_flight[meta_ref] = (w, work_ref, grad_ref)

    def _wake_idle(self) -> None:
        for w in sorted(self.idle & self.alive):
            self._hand_out(w)
        self.idle.clear()

    # ---- results ------------------------------------------------------------------------------------
    def _computed(self, ref) -> None:
        w, work_ref, grad_ref = self.in_flight.pop(ref)
        try:
            meta = ray.get(ref)
        except RayError as err:
            try:  # the gradient holds the same error: read it, so Ray does not report it as unhandled
                ray.get(grad_ref)
            except RayError:
                pass
            self._compute_failed(w, work_ref, err)
            return
        if meta["lease"] is None:
            self.idle.add(w)  # nothing to do until the next update
            return
        apply_ref = self.server.apply.remote(meta["lease"], grad_ref, meta, [self.test_ref])
        self.applies.append((apply_ref, meta))
        self._hand_out(w)

    def _applied(self, ref, meta: dict) -> bool:
        try:
            out = ray.get(ref)
        except RayError as err:
            if isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):
                raise TrainingFailed(f"the parameter server failed: {error_line(err)}") from None
            if isinstance(err, RayActorError) and not isinstance(err, RayTaskError):
                self._server_failed(err)  # it died with this gradient
            # the gradient was not applied (the server died, or the gradient was lost with its node): give the
            # step back; for a lease from before a restart this does nothing, the restarted server redoes it anyway
            self.server_call(lambda: self.server.requeue.remote(meta["lease"]))
            self._wake_idle()
            return False
        self._heard_from(out["instance"])
        if out["accepted"]:
            self.woken_without_progress = False
            if self.on_update:
                self.on_update({**out, "run_id": self.run_id, "step": meta["step"], "worker": meta["worker"],
                                "compute_time": meta["compute_time"]})
            if self.on_step:
                self.on_step(out["applied"], out["loss"])
        self._report(out["epochs"])
        if out["done"]:
            return True
        self._wake_idle()
        return False

    def _compute_failed(self, w: int, work_ref, err: RayError) -> None:
        try:
            work = ray.get(work_ref)
        except RayTaskError as server_err:
            raise TrainingFailed(f"the parameter server failed: {error_line(server_err)}") from None
        except RayActorError as server_err:  # the server died handing the step out: no lease to settle
            self._server_failed(server_err)
            work = None
        lease = work["lease"] if work else None
        if isinstance(err, RayActorError) and not isinstance(err, RayTaskError):  # the worker's process died
            self.worker_failures += 1
            if isinstance(err, ActorDiedError):  # for good (killed, or its restart failed): the others go on
                self._drop_worker(w, error_line(err))
                if lease:
                    self.server_call(lambda: self.server.requeue.remote(lease))
                self._wake_idle()
            else:  # restarting
                if lease:
                    self._settle_failure(lease, f"worker {w} died computing step {work['step']}: {error_line(err)}")
                self._probe(w)
            return
        if lease is None:
            pass
        elif isinstance(err, RayTaskError) and not isinstance(err.cause, RayError):  # the step's own error
            self._settle_failure(lease, f"{error_line(err)} (on worker {w})")
        else:  # a Ray error inside the task, e.g. its weights died with an earlier server instance
            self.server_call(lambda: self.server.requeue.remote(lease))
        self._hand_out(w)

    def _settle_failure(self, lease: str, error: str) -> None:
        failure = self.server_call(lambda: self.server.fail.remote(lease, error))
        if failure:
            raise TrainingFailed(failure)
        self._wake_idle()

    def _report(self, epochs: list[EpochMetrics]) -> None:
        for metrics in epochs:
            if metrics.epoch == self.reported + 1:
                self.reported += 1
                if self.on_epoch:
                    self.on_epoch(metrics)

    # ---- workers that died ----------------------------------------------------------------------------
    def _probe(self, w: int, deadline: Optional[float] = None) -> None:
        """Wait (without blocking the loop) for worker `w` to come back before it gets work again."""
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
        self._hand_out(w)

    def _expire_probes(self) -> None:
        now = time.monotonic()
        for ref, (w, deadline) in list(self.probes.items()):
            if now > deadline:
                del self.probes[ref]
                self._drop_worker(w, f"it did not come back within {RESTART_TIMEOUT_S:.0f} s")

    def _drop_worker(self, w: int, why: str) -> None:
        self.alive.discard(w)
        self.idle.discard(w)
        print(f"abray: worker {w} of run {self.run_id} is gone ({why}); {len(self.alive)} left", file=sys.stderr,
              flush=True)
        if not self.alive:
            raise TrainingFailed(f"no worker left: the last one, worker {w}, is gone ({why})")

    # ---- the server -----------------------------------------------------------------------------------
    def server_call(self, make_call):
        """`ray.get(make_call())`, again after the server restarts if it died meanwhile. Only calls that are safe
        to repeat go through here (a lease of a dead instance means nothing to the restarted one)."""
        while True:
            try:
                return ray.get(make_call())
            except RayActorError as err:
                if isinstance(err, RayTaskError):
                    raise
                self._server_failed(err)

    def _server_failed(self, err: RayActorError) -> None:
        """The server died: wait for it to come back (it resumes from its checkpoint), or fail the run if it
        cannot. Not for workers: their deaths go through `_compute_failed`."""
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

    def _heard_from(self, instance: str) -> None:
        """An answer from server instance `instance`: if it is a new one, it restarted from its checkpoint; hear
        the epochs it closed that were never reported, and give the idle workers its work."""
        if instance == self.instance:
            return
        if self.instance is not None:
            self.server_restarts += 1
        self.instance = instance
        self._report(self.server_call(lambda: self.server.epochs_since.remote(self.reported)))
        self._wake_idle()
