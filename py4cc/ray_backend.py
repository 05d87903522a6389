"""The Ray backend: the Driver's Engines as actors on a Ray cluster (``Driver(backend="ray")``).

It takes the place of :class:`py4cc.pool.Pool` behind the :class:`py4cc.pool.Backend`
interface, so the Driver's calls and answers, its capacity, timeouts, cancel, result_ttl,
drain and stats stay the same. Each Engine is one actor (:class:`py4cc.ray_actor.EngineActor`,
one CPU, Ray's own restarts and task retries off, so that nothing runs twice behind the
Driver's back); this backend keeps the queue and hands each actor one task at a time (plus
``prefetch`` queued behind it).

How a task travels::

    submit --> tasks[key], pending --dispatch--> actor.run.remote(...) -- Ray --> the actor
                                                                                    |
    retrieve / wait <-- complete(task) <-- the ObjectRef's future callback <---------+
                                           (on a Ray thread)

Nothing is polled: an answer arrives through its ObjectRef's future callback, and an
actor's death through a call (``watch``) that ends only with the actor. The supervisor
thread does what may block or must wait: it sorts out a dead actor's calls (the one it was
running fails, those queued behind it go back to the queue), enforces ``task_timeout`` and
``init_timeout`` (the actor is killed), drops expired results, and starts actors. Each
actor has a slot, which restarts it as the local pool's slots restart their workers
(:mod:`py4cc.recovery`'s rule and backoff): at once after a death, after a doubling wait
after a failed start, for ever. The probe thread asks the cluster every second whether this
process's node is alive; after ``LOST_AFTER_S`` without a yes the connection is lost for
good: unfinished tasks fail, ``submit`` refuses, and ``stats()`` says why.

Ray is imported only when this backend starts (:mod:`py4cc.ray_connect`).

:class:`RayBackend` holds the state and the Backend interface; its parts, one mixin per
module, each built on the one before: :mod:`py4cc.ray_tasks` (the queue and which actor runs
which task, over :class:`py4cc.tasks.TaskBook`), :mod:`py4cc.ray_actors` (the actors' start,
death and restart), :mod:`py4cc.ray_answers` (the answers' callbacks, a dead actor's calls),
:mod:`py4cc.ray_supervisor` (the supervisor's timeouts, the probe, the stats).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import deque
from typing import Any

from .backend import FlagAnswer
from .completion import Gone, Notifier
from .options import Options
from .protocol import (
    AT_CAPACITY,
    CAPACITY_MESSAGE,
    DRAINING_MESSAGE,
    ERROR,
    FAILED,
    FINALIZED_MESSAGE,
    OK,
    OUTPUT_GRACE_S,
    Call,
    GeneralCall,
)
from .ray_actor import WATCH_GROUP, EngineActor
from .ray_actors import Actor, Relay, Slot
from .ray_connect import CONNECTION, LogTap, build_runtime_env, import_ray
from .ray_supervisor import RaySupervisor
from .stats import Counters, RunTimes
from .tasks import Task

STOP_WAIT_S = 5.0
"""How long ``stop`` waits for Ray to confirm the killed actors' deaths."""


class RayBackend(RaySupervisor):
    """The Driver's tasks run by Engine actors on a Ray cluster; one per Driver.

    Everything below ``lock`` is read and written with it held. Ray's calls that may block
    (creating and killing actors, reading a dead actor's calls) are made without it. Holds
    no reference to its Driver, so that a Driver nobody uses is collected.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ray: Any = None
        self.actor_class: Any = None
        self.runtime_env: dict[str, Any] = {}
        self.where = ""
        self.acquired = False  # holds one use of the process's connection
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)  # the supervisor waits on it
        self.drained = threading.Condition(self.lock)  # notified when a task finishes while draining
        self.stop_lock = threading.Lock()
        self.stop_requested = threading.Event()  # ends the probe's sleep
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()  # not sent to an actor yet, oldest first
        self.slots: list[Slot] = []
        self.actors: list[Actor] = []  # ready or starting
        self.events: list[tuple[str, Actor, Any]] = []  # for the supervisor
        self.next_key = 1
        self.avg_run_s: float | None = None
        self.closed = False
        self.finished = False
        self.draining = False
        self.lost: str | None = None  # why the connection to the cluster is gone
        self.last_worker_failure = ""
        self.notify = Notifier(options.notify)
        self.expiring: dict[int, float] = {}  # finished, not collected: key -> when it expires
        self.gone = Gone()
        self.cancelled = 0
        self.expired = 0
        self.counters = Counters()
        self.run_times = RunTimes()
        self.finished_held = 0
        self.failed_by_stop = 0
        self.relay = Relay(options.worker_output)
        self.tap = LogTap(self.relay.put)
        self.wake_at: float | None = 0.0  # when the supervisor means to wake (None: not before told)
        self.supervisor: threading.Thread | None = None
        self.probe: threading.Thread | None = None
        self.owner_pid = os.getpid()
        self.announce: list[Task] = []  # TaskBook's; stays empty: complete wakes waiters at once

    # -- the Backend interface ------------------------------------------------------------

    def start(self) -> None:
        ray = import_ray()
        _LIVE_BACKENDS.add(self)
        CONNECTION.on_exit = stop_all_backends
        try:
            self.where = CONNECTION.acquire(ray, self.options.ray_address, self.options.n_subprocesses)
            self.ray = ray
            self.acquired = True
            n = self.count_actors()
            self.options = dataclasses.replace(self.options, n_subprocesses=n)
            self.runtime_env = build_runtime_env(ray, self.options.setup.engine, self.options.setup.env)
            self.actor_class = ray.remote(concurrency_groups={WATCH_GROUP: 1})(EngineActor)
            self.relay.start()
            if self.options.worker_output is not None:
                self.tap.start()
            self.slots = [Slot(i) for i in range(n)]
            first = [self.start_actor(slot) for slot in self.slots]
            self.wait_ready(first)
        except BaseException:
            self.stop()
            raise
        for actor in first:
            self.watch(actor)
        self.supervisor = threading.Thread(target=self.supervise, name="py4cc-ray-supervisor", daemon=True)
        self.supervisor.start()
        self.probe = threading.Thread(target=self.probe_connection, name="py4cc-ray-probe", daemon=True)
        self.probe.start()

    def submit(self, float_features: list[float], str_features: list[str], int_feature: int) -> FlagAnswer:
        return self.admit(lambda key: Call(key, float_features, str_features, int_feature))

    def submit_call(self, payload: bytes) -> FlagAnswer:
        return self.admit(lambda key: GeneralCall(key, payload))

    def admit(self, make_call: Any) -> FlagAnswer:
        """Take the task ``make_call(key)``, unless stopping, unavailable or full."""
        with self.lock:
            if self.closed:
                return ERROR, 0, FINALIZED_MESSAGE
            if self.draining:
                return ERROR, 0, DRAINING_MESSAGE
            if self.lost is not None:
                return ERROR, 0, self.lost
            why = self.unavailable()
            if why is not None:
                return ERROR, 0, why
            if len(self.tasks) >= self.options.max_tasks:
                return AT_CAPACITY, 0, CAPACITY_MESSAGE
            key = self.next_key
            self.next_key += 1
            task = Task(make_call(key), 0)
            self.tasks[key] = task
            self.pending.append(task)
            launched = self.dispatch()
        self.arm(launched)
        return OK, key, ""

    def worker_pids(self) -> list[int]:
        """The pids of the actors' processes, ready or starting (on their own nodes)."""
        with self.lock:
            return [a.pid for a in self.actors if a.pid]

    def held_tasks(self) -> int:
        with self.lock:
            return len(self.tasks)

    def stats(self, state: str) -> dict[str, Any]:
        with self.lock:
            if self.closed:
                state = "finalized"
            elif self.draining:
                state = "draining"
            return self.snapshot(state)

    def drain(self, limit: float | None) -> int:
        deadline = None if limit is None else time.monotonic() + limit
        with self.lock:
            already = self.closed
            self.draining = True
        if already:
            self.stop()
            return 0
        try:
            with self.lock:
                while not self.closed and any(not task.done for task in self.tasks.values()):
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self.drained.wait(threading.TIMEOUT_MAX if left is None else min(left, threading.TIMEOUT_MAX))
        finally:
            self.stop()
        return self.failed_by_stop

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Fail the unfinished tasks, kill every actor, let go of the connection (the last
        Driver's stop ends a local Ray instance); never raises an Exception; safe to call
        many times and from many threads. Does nothing in a forked child."""
        if os.getpid() != self.owner_pid:
            return
        try:
            self._stop()
        except Exception:
            pass

    def _stop(self) -> None:
        with self.stop_lock:
            if self.finished:
                return
            with self.lock:
                self.closed = True
                for task in self.tasks.values():
                    if not task.done:
                        self.failed_by_stop += 1
                        self.complete(task, FAILED, -1, "the driver was finalized before this task finished")
                self.pending.clear()
                self.wakeup.notify_all()
                self.drained.notify_all()
                actors = list(self.actors)
            self.stop_requested.set()
            for thread in (self.supervisor, self.probe):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(10.0)
            if self.ray is not None:
                for actor in actors:
                    self.kill(actor)
                ends = [a.watch or a.init_ref for a in actors if (a.watch or a.init_ref) is not None]
                if ends and self.lost is None:
                    try:  # each fails once its actor is dead
                        self.ray.wait(ends, num_returns=len(ends), timeout=STOP_WAIT_S)
                    except Exception:
                        pass
            with self.lock:
                self.actors.clear()
            self.tap.stop()
            self.relay.stop(OUTPUT_GRACE_S)
            if self.acquired:
                self.acquired = False
                CONNECTION.release(self.ray)
            self.finished = True
            _LIVE_BACKENDS.discard(self)

    def stop_when_collected(self) -> None:
        """The Driver's garbage-collection finalizer: a collection may run it on a Ray
        callback thread or the supervisor, where stopping would deadlock; a new thread does it."""
        if self.stop_lock.locked():
            return
        current = threading.current_thread()
        if current in (self.supervisor, self.probe) or isinstance(current, threading._DummyThread):
            try:
                threading.Thread(target=self.stop, name="py4cc-collect", daemon=True).start()
            except RuntimeError:
                pass
            return
        self.stop()


_LIVE_BACKENDS: set[RayBackend] = set()
"""The Ray backends started and not stopped yet, for the exit hook."""


def stop_all_backends() -> None:
    """The exit hook: stop every Ray backend still running (before Ray's own exit hook)."""
    for backend in list(_LIVE_BACKENDS):
        backend.stop()
