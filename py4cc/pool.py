"""The pool: the tasks, the worker processes and their state, all under one lock.

The Driver reaches it only through :class:`Backend`, so that another way of running tasks
(a cluster's actors, say) can take its place. Behind that interface, ``Pool`` gives each
task to a worker process (``assign``, ``dispatch``), puts back the tasks a lost worker had
not started (``requeue_unstarted``), and starts and stops the processes
(:mod:`py4cc.processes`), one per slot that restarts it on its own (:mod:`py4cc.recovery`);
its dispatcher thread (:mod:`py4cc.dispatcher`) brings in the workers' answers and notices
their exits. The last pool to stop stops the forkserver py4cc started (:mod:`py4cc.cleanup`).
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import multiprocessing.util  # imported before our exit hook is registered, so that ours runs first
import os
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Protocol

from . import cleanup, recovery
from .completion import CANCELLED, EXPIRED, Gone, Notifier, cancelled_message, expired_message
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
    NOT_FINISHED,
    NOT_FINISHED_MESSAGE,
    OK,
    OUTPUT_GRACE_S,
    PREFETCH_BYTES,
    Call,
    GeneralCall,
    call_wire_size,
    encode_call,
    unknown_key,
    wire_size,
)
from .stats import Counters, RunTimes, snapshot

FlagAnswer = tuple[int, Any, str]
"""``(flag, key or value, message)``, as the Driver's calls answer (a general task's value
may be anything)."""


class Backend(Protocol):
    """What the Driver needs of whatever runs its tasks. Every method may be called from
    any thread; only ``start`` raises.

    * ``start()``: start the workers; return once they are ready, or raise RuntimeError
      (having stopped what it started).
    * ``submit(floats, strs, n)``: take a checked task: ``(OK, key, "")``, ``(AT_CAPACITY,
      0, CAPACITY_MESSAGE)`` or ``(ERROR, 0, why)`` (stopping, or no worker can run it).
    * ``submit_call(payload)``: the same for a general task, ``payload`` the pickled
      ``(args, kwargs)`` of ``Driver.submit_call``; same capacity, keys and answers.
    * ``collect(key)``: a task's answer without blocking, as ``Driver.retrieve`` gives it.
    * ``wait(key, limit)``: block up to ``limit`` seconds (None: no limit) until the task is
      finished or the backend stops, then answer as ``collect``.
    * ``worker_pids()``, ``held_tasks()``: for tests and monitoring.
    * ``options``: the options it runs with (``n_subprocesses`` resolved once started).
    * ``stats(state)``: the dict of ``Driver.stats()`` (``state`` as the Driver sees it).
    * ``drain(limit)``: refuse new tasks (``DRAINING_MESSAGE``), wait up to ``limit`` seconds
      (None: no limit) until every held task is finished, then ``stop``; answers how many
      tasks that stop failed.
    * ``stop()``: fail the unfinished tasks, stop every worker; idempotent. ``closed`` turns
      True when it begins. ``stop_when_collected()``: the same, from a garbage collection.
    * ``cancel(key)``: drop a held task whatever its state (a queued one never runs, a
      running one's answer is discarded, a finished one is removed); True if it was held.
      Collecting it then answers ERROR saying it was cancelled.

    And every backend honours two options: ``options.notify`` (see :mod:`py4cc.completion`),
    called with the backend's lock held when a task becomes finished (``finished=True``,
    whatever the cause, stop included) or is dropped unretrieved (``finished=False``: expired
    or cancelled), never raising into the backend; and ``options.result_ttl``: a finished
    result not collected within it is dropped (collecting it then answers ERROR, expired).
    Both keep counters: ``cancelled``, ``expired`` (ints).
    """

    closed: bool
    options: Options

    def start(self) -> None: ...
    def submit(self, float_features: list[float], str_features: list[str], int_feature: int) -> FlagAnswer: ...
    def submit_call(self, payload: bytes) -> FlagAnswer: ...
    def collect(self, key: int) -> FlagAnswer: ...
    def wait(self, key: int, limit: float | None) -> FlagAnswer: ...
    def worker_pids(self) -> list[int]: ...
    def held_tasks(self) -> int: ...
    def stats(self, state: str) -> dict[str, Any]: ...
    def drain(self, limit: float | None) -> int: ...
    def stop(self) -> None: ...
    def stop_when_collected(self) -> None: ...
    def cancel(self, key: int) -> bool: ...


class Task:
    """One task the pool holds, from submit until its answer is retrieved."""

    __slots__ = ("call", "cancelled", "deadline", "done", "event", "flag", "key", "message", "size", "value", "worker")

    def __init__(self, call: Call | GeneralCall, size: int) -> None:
        self.key = call.key
        self.call: Call | GeneralCall | None = call  # dropped once the task is done
        self.size = size  # wire_size of its call
        self.done = False
        self.flag = NOT_FINISHED
        self.value: object = 0
        self.message = NOT_FINISHED_MESSAGE
        self.event: threading.Event | None = None  # made by the first wait
        self.worker: Worker | None = None
        self.deadline: float | None = None  # task_timeout, once it runs
        self.cancelled = False  # dropped while a worker holds it: its answer is discarded


class Pool:
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

    # -- the Backend interface ------------------------------------------------------------

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

    def collect(self, key: int) -> FlagAnswer:
        with self.lock:
            return self._collect(key)

    def _collect(self, key: int) -> FlagAnswer:
        if self.announce:
            self.announce_finished()
        task = self.tasks.get(key)
        if task is None:
            why = self.gone.why(key)
            if why == CANCELLED:
                return ERROR, 0, cancelled_message(key)
            if why == EXPIRED:
                return ERROR, 0, expired_message(key, self.options.result_ttl)
            return ERROR, 0, unknown_key(key)
        if not task.done:
            return NOT_FINISHED, 0, NOT_FINISHED_MESSAGE
        del self.tasks[key]
        self.expiring.pop(key, None)
        self.finished_held -= 1
        return task.flag, task.value, task.message

    def wait(self, key: int, limit: float | None) -> FlagAnswer:
        with self.lock:
            task = self.tasks.get(key)
            if task is None or task.done:
                return self._collect(key)
            if task.event is None:
                task.event = threading.Event()
            event = task.event
        if limit is None:
            while not event.wait(threading.TIMEOUT_MAX):
                pass
        else:
            event.wait(min(limit, threading.TIMEOUT_MAX))
        return self.collect(key)

    def cancel(self, key: int) -> bool:
        with self.lock:
            self.announce_finished()
            task = self.tasks.pop(key, None)
            if task is None:
                return False
            self.expiring.pop(key, None)
            if task.done:
                self.finished_held -= 1
            else:
                if task.worker is None:
                    try:
                        self.pending.remove(task)
                    except ValueError:
                        pass
                else:
                    # Its worker has it already: let it run (task_timeout still bounds it)
                    # and discard the answer. Interrupting the worker would cost a new one.
                    task.cancelled = True
                    task.done = True
                    task.call = None
                if task.event is not None:
                    task.event.set()
            self.cancelled += 1
            self.gone.remember(key, CANCELLED)
            self.notify(key, False)
            if self.draining:
                self.drained.notify_all()  # one task fewer to wait for
            return True

    def expire_results(self, now: float) -> float | None:
        """Drop the finished results whose ``result_ttl`` has run out (lock held); return
        when the next one expires (None: none waits)."""
        self.announce_finished()
        expiring = self.expiring
        while expiring:
            key = next(iter(expiring))
            when = expiring[key]
            if when > now:
                return when
            del expiring[key]
            if self.tasks.pop(key, None) is not None:
                self.finished_held -= 1
                self.expired += 1
                self.gone.remember(key, EXPIRED)
                self.notify(key, False)
        return None

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

    # -- tasks (all called with self.lock held) --------------------------------------------

    def complete(self, task: Task, flag: int, value: object, message: str) -> None:
        """Record a task's answer (once; later answers are ignored); its waiters are woken
        by the next ``announce_finished``."""
        if task.done:
            return
        task.done = True
        task.flag = flag
        # A failed general task answers None, whatever failed it (its Engine, a timeout...).
        task.value = None if flag == FAILED and type(task.call) is GeneralCall else value
        task.message = message
        task.worker = None
        task.deadline = None
        task.call = None
        self.finished_held += 1
        if flag == OK:
            self.counters.tasks_done += 1
        else:
            self.counters.tasks_failed += 1
        if self.options.result_ttl is not None and not self.closed:
            self.expiring[task.key] = time.monotonic() + self.options.result_ttl
        self.announce.append(task)
        if self.draining:
            self.drained.notify_all()

    def announce_finished(self) -> None:
        """Wake the waiters of the tasks finished since the last call and tell the host
        (``notify(key, True)``). The dispatcher calls it last before it lets the GIL go;
        whatever collects or drops a task calls it first, so that the host always hears
        of a finish before the task is gone."""
        announce = self.announce
        if not announce:
            return
        self.announce = []
        for task in announce:
            if task.event is not None:
                task.event.set()
            self.notify(task.key, True)

    def assign(self, worker: Worker, task: Task) -> bool:
        """Send ``task`` to ``worker``; False (task untouched) if the pipe is broken."""
        try:
            worker.conn.send_bytes(encode_call(task.call))
        except (OSError, ValueError):
            worker.dead = True
            return False
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            self.start_head(worker, time.monotonic())
        return True

    def start_head(self, worker: Worker, now: float) -> None:
        """``worker.queue[0]`` starts (about) now: note it, and set its deadline."""
        worker.head_started = now
        if self.options.task_timeout is not None:
            worker.queue[0].deadline = now + self.options.task_timeout

    def note_run_time(self, seconds: float) -> None:
        if self.avg_run_s is None:
            self.avg_run_s = seconds
        else:
            self.avg_run_s += 0.1 * (seconds - self.avg_run_s)

    def prefetch_target(self, now: float, task: Task) -> Worker | None:
        """The busy worker that should get ``task`` queued behind its current one.

        Only workers holding at most ``prefetch`` tasks qualify, whose pipe keeps room
        for ``task`` (``PREFETCH_BYTES``), and not one whose current task has already
        run much longer than usual (it may be a long one: a task queued behind it could
        not move to a worker that frees up sooner). Among the rest, the one whose
        current task started first.
        """
        prefetch = self.options.prefetch
        if not prefetch:
            return None
        typical = self.avg_run_s if self.avg_run_s is not None else 0.0
        limit = max(0.002, 4.0 * typical)
        best = None
        for w in self.workers:
            if not w.usable() or not w.queue or len(w.queue) > prefetch:
                continue
            if now - w.head_started > limit:
                continue
            if sum(t.size for t in itertools.islice(w.queue, 1, None)) + task.size > PREFETCH_BYTES:
                continue
            if best is None or w.head_started < best.head_started:
                best = w
        return best

    def dispatch(self) -> bool:
        """Give pending tasks to workers, oldest task first: to an idle worker if there
        is one, else (``prefetch`` > 0) queued behind a busy worker's current task, so that
        it starts without a round trip through this process. Returns True if a task
        started and has a deadline (the dispatcher must learn it). Once stop has begun
        nothing is sent: its tasks are failed already."""
        if self.closed:
            return False
        started = False
        now = time.monotonic()
        while self.pending:
            target = None
            for w in self.workers:
                if w.usable() and not w.queue:
                    target = w
                    break
            if target is None:
                target = self.prefetch_target(now, self.pending[0])
                if target is None:
                    break
            task = self.pending.popleft()
            if self.assign(target, task):
                started = started or len(target.queue) == 1
            else:
                self.pending.appendleft(task)
        return started and self.options.task_timeout is not None

    def requeue_unstarted(self, w: Worker) -> None:
        """Put the tasks queued behind ``w``'s running one back at the head of pending."""
        while len(w.queue) > 1:
            task = w.queue.pop()
            task.worker = None
            task.deadline = None
            if not task.cancelled:
                self.pending.appendleft(task)

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
