"""The pool: the tasks, the worker processes and their state, all under one lock.

The Driver reaches it only through :class:`py4cc.backend.Backend`, which ``Pool``
implements, so that another way of running tasks (a cluster's actors, say) can take its
place. ``Pool`` is assembled from its parts: the tasks and their answers
(:class:`py4cc.tasks.TaskBook`), which worker runs which task
(:class:`py4cc.scheduling.Scheduling`), and here, the Backend's calls, starting and stopping
the worker processes (:mod:`py4cc.processes`), one per slot that restarts it on its own
(:mod:`py4cc.recovery`). Its dispatcher thread (:mod:`py4cc.dispatcher`) brings in the
workers' answers and notices their exits. The last pool to stop stops the forkserver py4cc
started (:mod:`py4cc.cleanup`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # imported before our exit hook is registered, so that ours runs first
import os
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable

from . import cleanup, recovery
from .backend import FlagAnswer
from .completion import Gone, Notifier
from .dispatcher import Dispatcher, WakeUp
from .options import Options
from .output import OutputRelay
from .preload import preload
from .processes import Worker, start_worker, stop_workers, wait_ready
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
    call_wire_size,
    wire_size,
)
from .scheduling import Scheduling
from .stats import Counters, RunTimes, snapshot
from .tasks import Task, TaskBook


class Pool(TaskBook, Scheduling):
    """Worker processes running an Engine, and the tasks they hold; one per Driver.

    Holds no reference to its Driver, so that a Driver nobody uses is collected (and its
    finalizer stops the pool). Everything below ``lock`` is read and written with it held.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ctx = multiprocessing.get_context(options.start_method)
        self.lock = threading.Lock()
        self.stop_lock = threading.Lock()  # one stop at a time
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()  # not sent to a worker yet, oldest first
        self.workers: list[Worker] = []
        self.next_key = 1
        self.avg_run_s: float | None = None  # moving average of task run times
        self.closed = False  # stop has begun: refuse new tasks
        self.finished = False  # stop has completed
        self.broken: str | None = None  # the dispatcher crashed: nothing runs any more
        self.slots: list[recovery.Slot] = []  # one per worker process to run
        self.last_worker_failure: str | None = None  # why the last start failed (counted in counters)
        self.uses_forkserver = False
        self.wakeup = WakeUp()
        self.dispatcher: Dispatcher | None = None
        self.owner_pid = os.getpid()  # a forked copy of this process must not stop the workers
        self.preloaded: object = None  # the Engine "fork" workers inherit (preload="engine")
        self.notify = Notifier(options.notify)
        self.expiring: dict[int, float] = {}  # finished, not collected: key -> when it expires, oldest first
        self.gone = Gone()  # recently cancelled or expired keys
        self.cancelled = 0
        self.expired = 0
        self.announce: list[Task] = []  # finished, waiters not woken yet (announce_finished)
        self.relay = OutputRelay(options.worker_output)  # the workers' output, and events
        self.counters = Counters()
        self.run_times = RunTimes()  # the Engine's latest run times, as the workers measured them
        self.finished_held = 0  # tasks held that are finished (not retrieved yet)
        self.draining = False  # drain has begun: refuse new tasks, let the held ones finish
        self.drained = threading.Condition(self.lock)  # notified when a task finishes while draining
        self.failed_by_stop = 0  # unfinished tasks that stop failed

    # -- the Backend interface (collect, wait and cancel are TaskBook's) -------------------

    def start(self) -> None:
        _LIVE_POOLS.add(self)
        try:
            if self.options.start_method == "forkserver":
                cleanup.acquire_forkserver()
                self.uses_forkserver = True
            self.relay.start()
            self.preload_engine()
            workers: list[Worker] = []
            try:
                for index in range(self.options.n_subprocesses):
                    w = self.start_worker()
                    workers.append(w)
                    with self.lock:
                        self.slots.append(recovery.Slot(index))
                        recovery.attach(self, self.slots[-1], w)
            except Exception as exc:
                raise RuntimeError(
                    f"Driver.initialize: could not start a worker process "
                    f"(start method {self.options.start_method!r}): {type(exc).__name__}: {exc}"
                ) from exc
            wait_ready(workers, self.options.setup.engine, self.options.init_timeout)
        except BaseException:
            self.stop()
            raise
        self.dispatcher = Dispatcher(self)
        self.dispatcher.start()

    def submit(self, float_features: list[float], str_features: list[str], int_feature: int) -> FlagAnswer:
        size = wire_size(float_features, str_features, int_feature)
        return self.admit(lambda key: Call(key, float_features, str_features, int_feature), size)

    def submit_call(self, payload: bytes) -> FlagAnswer:
        return self.admit(lambda key: GeneralCall(key, payload), call_wire_size(payload))

    def admit(self, make_call: Callable[[int], Call | GeneralCall], size: int) -> FlagAnswer:
        """Take the task ``make_call(key)`` of ``size`` wire bytes, unless stopping, broken or full."""
        with self.lock:
            if self.closed:
                return ERROR, 0, FINALIZED_MESSAGE
            if self.draining:
                return ERROR, 0, DRAINING_MESSAGE
            if self.broken is not None:
                return ERROR, 0, f"the driver has no working worker process: {self.broken}"
            why = recovery.unavailable(self)
            if why is not None:
                return ERROR, 0, why
            if len(self.tasks) >= self.options.max_tasks:
                return AT_CAPACITY, 0, CAPACITY_MESSAGE
            key = self.next_key
            self.next_key += 1
            task = Task(make_call(key), size)
            self.tasks[key] = task
            self.pending.append(task)
            if self.dispatch():
                self.wakeup.wake()  # the dispatcher must learn the new deadline
            return OK, key, ""

    def worker_pids(self) -> list[int]:
        with self.lock:
            return [w.pid for w in self.workers]

    def held_tasks(self) -> int:
        with self.lock:
            return len(self.tasks)

    def stats(self, state: str) -> dict[str, Any]:
        with self.lock:
            if self.closed:
                state = "finalized"
            elif self.draining:
                state = "draining"
            return snapshot(self, state)

    def drain(self, limit: float | None) -> int:
        deadline = None if limit is None else time.monotonic() + limit
        with self.lock:
            already = self.closed  # finalized (or drained): the tasks it failed are not ours
            self.draining = True
        if already:
            self.stop()  # returns once that stop is complete
            return 0
        try:
            with self.lock:
                while not self.closed and any(not task.done for task in self.tasks.values()):
                    if deadline is None:
                        self.drained.wait(threading.TIMEOUT_MAX)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.drained.wait(min(left, threading.TIMEOUT_MAX))
        finally:
            self.stop()  # also when interrupted: drain was asked to end in a stop
        return self.failed_by_stop

    # -- starting workers -----------------------------------------------------------------

    def preload_engine(self) -> None:
        """Load what ``preload`` asks for before the first worker starts (py4cc.preload)."""
        try:
            self.preloaded = preload(self.options.setup, self.options.start_method, self.options.preload)
        except BaseException as exc:
            raise RuntimeError(
                f"Driver.initialize: preloading ({self.options.preload!r}) the engine "
                f"{self.options.setup.engine!r} in this process failed:\n{traceback.format_exc()}"
            ) from exc

    def start_worker(self) -> Worker:
        """Start one worker process (not yet ready), its output read by the relay. Raises on
        failure.

        A forked worker also inherits the relay's descriptors (other workers' output pipes'
        read ends, its wake-up pipe); it keeps them: they are not listed here because the
        relay thread may close and so free one of those numbers meanwhile, and holding a read
        end or an unused wake-up pipe changes nothing for anyone."""
        inherited_fds = None
        if self.options.start_method == "fork":
            with self.lock:
                inherited_fds = [w.conn.fileno() for w in self.workers if not w.conn.closed]
            inherited_fds += self.wakeup.fds()
        w = start_worker(self.ctx, self.options.setup, inherited_fds, self.preloaded)
        if w.output_fds is not None:
            self.relay.add(w.pid, *w.output_fds)
            w.output_fds = None
        if self.uses_forkserver:
            cleanup.note_forkserver()
        with self.lock:
            self.counters.worker_starts += 1
        return w

    def event(self, pid: int, text: str) -> None:
        """Report what happened to worker ``pid`` to the output sink, as an "event" line."""
        self.relay.event(pid, text)

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """Fail the unfinished tasks, stop the dispatcher and every worker; never raises an
        Exception; safe to call many times and from many threads.

        Does nothing in a forked child of the process that started the pool (its exit
        hook, a collected Driver, or finalize there): the workers are not its own.

        An interruption (KeyboardInterrupt while it joins a process, say) propagates and
        leaves the rest to the next call: each step can be taken again.
        """
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
                self.announce_finished()
                self.wakeup.wake()
                self.drained.notify_all()
            thread = self.dispatcher
            if thread is not None and thread is not threading.current_thread():
                thread.join(10.0)
            with self.lock:
                workers = list(self.workers)
            stop_workers(workers)
            with self.lock:  # only once they are stopped: an interrupted stop finds them again
                self.workers.clear()
                self.wakeup.close()
            self.relay.stop(OUTPUT_GRACE_S)  # the workers' last words first
            self.finished = True
            self.preloaded = None
            _LIVE_POOLS.discard(self)
            if self.uses_forkserver:
                self.uses_forkserver = False
                cleanup.release_forkserver()

    def stop_when_collected(self) -> None:
        """The Driver's garbage-collection finalizer.

        A collection runs it on whichever thread allocates, possibly the dispatcher while it
        holds ``lock`` (a Driver in a reference cycle): stopping right there would deadlock
        on that lock, so the dispatcher hands the work to a new thread. If a stop is
        already under way (e.g. the exit hook's, on this very thread), it is left to finish.
        """
        if self.stop_lock.locked():
            return
        if threading.current_thread() is self.dispatcher:
            try:
                threading.Thread(target=self.stop, name="py4cc-collect", daemon=True).start()
            except RuntimeError:
                pass  # interpreter shutting down: the exit hook stops the pool
            return
        self.stop()


_LIVE_POOLS: set[Pool] = set()
"""The pools started and not stopped yet, for the exit hook."""


def stop_all_pools() -> None:
    """The exit hook: stop every pool still running, so that no worker outlives us."""
    for pool in list(_LIVE_POOLS):
        pool.stop()


# Registered after multiprocessing.util's own exit hook, so (atexit being LIFO) our
# workers are stopped before multiprocessing would try to join them.
atexit.register(stop_all_pools)
