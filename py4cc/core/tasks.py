"""The task book: what every backend holds of its tasks, and the rules it applies to them.

A :class:`Task` lives from submit until its answer is collected, cancelled or expired.
:class:`TaskBook` is the base of both backends (:class:`py4cc.local.pool.Pool` and
:class:`py4cc.ray.backend.RayBackend`), and the interface the Driver reaches them through.
It holds, under one ``lock``, the state they share and the rules written once for both:

* admission (``admit``): refuse while stopping, draining, out of order or unavailable;
  ``max_tasks`` held at most; keys handed out once, from the book's own range (a key of
  another Driver of this process is refused by ``collect``, ``wait`` and ``cancel``);
* answers: ``complete`` records one (once), ``announce_finished`` wakes its waiters and
  tells the host (``notify``), or hands the answers to a host that keeps them (``deliver``:
  the tasks then leave the book, and the host's count of them joins ``held``), ``collect``
  and ``wait`` hand it out;
* dropping tasks: ``cancel``, ``expire_results`` (``result_ttl``), and :class:`Gone`, which
  remembers why a dropped key is gone;
* the slots' failed starts (``note_failed_start``, ``unavailable``);
* the stop path: ``drain``, ``stop`` (``close_book`` fails what is unfinished, then the
  backend shuts down), ``stop_when_collected``; and ``stats``.

A backend adds how tasks reach its workers: it sets the class names below and implements
``start``, ``runners``, ``out_of_order``, ``on_admitted`` (and ``after_admit``), ``event``,
``snapshot``, ``worker_pids``, ``wake_for_stop``, ``shut_down`` and ``on_own_thread``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from ..options import Options
from ..protocol import (
    AT_CAPACITY,
    CAPACITY_MESSAGE,
    DRAINING_MESSAGE,
    ERROR,
    FAILED,
    FINALIZED_MESSAGE,
    NOT_FINISHED,
    NOT_FINISHED_MESSAGE,
    OK,
    Call,
    FlagAnswer,
    call_wire_size,
    short_repr,
    unknown_key,
)
from .completion import (
    CANCELLED,
    EXPIRED,
    Deliverer,
    Gone,
    Notifier,
    cancelled_message,
    expired_message,
    host_answer,
)
from .scheduling import free_runner
from .slots import Slot, backoff_delay
from .stats import BatchStats, Counters, RunTimes

KEY_SPAN = 10**12
"""How many keys each task book (so each Driver) can issue: its keys are ``base + 1`` to
``base + KEY_SPAN - 1``, where ``base`` is its number in this process times ``KEY_SPAN``. A
power of ten, so that a key's last 12 digits count the Driver's tasks."""
_KEY_RANGES = (2**63 - 1) // KEY_SPAN - 1
"""How many books get distinct ranges before the numbers come round again (every key fits
in a signed 64-bit integer, as the Rust host reads it)."""
_book_numbers = itertools.count()  # next() is atomic under the GIL


def new_key_base() -> int:
    """The base of a new book's key range, one that no other book of this process has (until
    ``_KEY_RANGES`` books have been made)."""
    return (next(_book_numbers) % _KEY_RANGES + 1) * KEY_SPAN


def not_issued(key: int) -> str:
    """The message for a key outside this Driver's range."""
    return f"unknown key {short_repr(key)}: this Driver did not issue it (a key of another Driver, or a number made up)"


class Task:
    """One task a backend holds, from submit until its answer is retrieved."""

    __slots__ = (
        "call", "cancelled", "deadline", "demo", "done", "event", "flag", "key", "message", "queued_at", "size",
        "value", "worker",
    )  # fmt: skip

    def __init__(self, call: Call) -> None:
        self.key = call.key
        self.call: Call | None = call  # dropped once the task is done
        self.demo = call.demo
        self.size = call_wire_size(call.payload)  # what its message takes in a pipe, at most
        self.done = False
        self.flag = NOT_FINISHED
        self.value: object = 0
        self.message = NOT_FINISHED_MESSAGE
        self.event: threading.Event | None = None  # made by the first wait
        self.worker: Any = None  # the worker process that holds it (local pool)
        self.deadline: float | None = None  # task_timeout, once it runs
        self.cancelled = False  # dropped while a worker holds it: its answer is discarded
        self.queued_at = time.monotonic()  # when it was admitted (batching's max_wait, queue waits)


class TaskBook:
    """A backend's tasks and their answers. Everything here is read and written with
    ``lock`` held, unless a method takes it itself."""

    RUNNER = "worker"
    """What runs a task, in messages: "worker process", "Ray actor"."""
    RUNNERS = "workers"
    """The same, plural, in messages: "worker processes", "Engine actors"."""
    SLOT = "slot"
    """A slot, in events: "worker slot", "actor slot"."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.lock = threading.Lock()
        self.stop_lock = threading.Lock()  # one stop at a time
        self.drained = threading.Condition(self.lock)  # notified when a task finishes while draining
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()  # not sent to a worker yet, oldest first
        self.slots: list[Slot] = []  # one per worker to run
        self.key_base = new_key_base()  # this book's keys: key_base + 1, ..., key_base + KEY_SPAN - 1
        self.next_key = self.key_base + 1
        self.avg_run_s: float | None = None  # moving average of task run times
        self.closed = False  # stop has begun: refuse new tasks
        self.finished = False  # stop has completed
        self.draining = False  # drain has begun: refuse new tasks, let the held ones finish
        self.last_worker_failure: str | None = None  # why the last start failed
        self.notify = Notifier(options.notify)
        self.deliver = Deliverer(options.deliver, options.host_held)  # a host that keeps the answers
        self.expiring: dict[int, float] = {}  # finished, not collected: key -> when it expires, oldest first
        self.gone = Gone()  # recently cancelled or expired keys
        self.cancelled = 0
        self.expired = 0
        self.announce: list[Task] = []  # finished, waiters not woken yet (announce_finished)
        self.counters = Counters()
        self.run_times = RunTimes()  # the Engine's latest run times, as the workers measured them
        self.batch_stats = BatchStats()  # with batching: the latest batches' sizes and queue waits
        self.finished_held = 0  # tasks held that are finished (not retrieved yet)
        self.failed_by_stop = 0  # unfinished tasks that stop failed
        self.owner_pid = os.getpid()  # a forked copy of this process must not stop the workers

    # -- what a backend implements ------------------------------------------------------

    def start(self) -> None:
        """Start the workers; return once they are ready, or raise RuntimeError (having
        stopped what it started)."""
        raise NotImplementedError

    def runners(self) -> Sequence[Any]:
        """The workers (processes or actors), ready or starting; each has ``usable()``."""
        raise NotImplementedError

    def out_of_order(self) -> str | None:
        """Why nothing can run any more (the dispatcher crashed, the cluster is lost), or None."""
        raise NotImplementedError

    def settle(self) -> None:
        """Take off the book the tasks whose answers the host read itself (lock held; see
        ``Driver(pipe_reader=...)``); nothing to do for a backend that reads its own."""

    def on_admitted(self) -> Any:
        """A task was queued (lock held): hand tasks to workers; what it returns goes to
        :meth:`after_admit`, called once the lock is let go."""
        raise NotImplementedError

    def after_admit(self, sent: Any) -> None:
        """What must happen after ``on_admitted`` without the lock (default: nothing)."""

    def result_expires(self, when: float) -> None:
        """A result was given an expiry time (lock held); default: the backend's thread reads
        ``expiring`` on its next turn anyway."""

    def event(self, pid: int, text: str) -> None:
        """Report what happened to a worker to the output sink, as an "event" line."""
        raise NotImplementedError

    def snapshot(self, state: str) -> dict[str, Any]:
        """The stats dict (lock held); see :func:`py4cc.core.stats.task_stats`."""
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def wake_for_stop(self) -> None:
        """Stop (or drain) has begun (lock held): wake the backend's own threads, so that they
        end (or look at every answer)."""
        raise NotImplementedError

    def shut_down(self) -> None:
        """The rest of a stop, without the lock: end the backend's threads, stop its workers,
        let go of what it holds. Each step can be taken again (an interrupted stop is
        completed by the next one)."""
        raise NotImplementedError

    def on_own_thread(self) -> bool:
        """Whether the calling thread is one the backend runs (or one Ray runs for it)."""
        raise NotImplementedError

    def note_batch(self, batch: Sequence[Task], now: float) -> None:
        """``batch`` was sent to a worker at ``now`` (lock held): count it for the stats."""
        self.counters.batches += 1
        self.batch_stats.add(len(batch), [now - task.queued_at for task in batch])

    def batch_due(self) -> float | None:
        """With ``batching``: when the oldest queued task will have waited ``max_wait``, if a
        worker is free to take the batch then (lock held)."""
        batching = self.options.batching
        if batching is None or not self.pending or free_runner(self.runners()) is None:
            return None
        return self.pending[0].queued_at + batching.max_wait

    def run_names(self, tasks: Sequence[Task], one: str = "the task") -> tuple[str, str]:
        """How messages name the run of ``tasks`` (the head task, or with ``batching`` its
        batch): for events ("task K", "a batch of N tasks (keys K..)") and for the tasks'
        answers (``one``, "this task's batch of N tasks")."""
        if self.options.batching is None:
            return f"task {tasks[0].key}", one
        n = len(tasks)
        return f"a batch of {n} tasks (keys {tasks[0].key}..)", f"this task's batch of {n} task{'s' if n != 1 else ''}"

    def running_count(self, runner: Any) -> int:
        """How many of ``runner``'s tasks it is running: its whole batch with ``batching``,
        else the head of its queue."""
        if self.options.batching is not None:
            return len(runner.queue)
        return min(1, len(runner.queue))

    # -- admission ----------------------------------------------------------------------

    def submit(self, method: str, payload: bytes, demo: bool) -> FlagAnswer:
        """Take a checked task, ``engine.<method>(*args, **kwargs)`` with ``payload`` the
        pickled ``(args, kwargs)``: ``(OK, key, "")``, ``(AT_CAPACITY, 0, CAPACITY_MESSAGE)``
        or ``(ERROR, 0, why)``."""
        return self.submit_many([(method, payload, demo)])[0]

    def submit_many(self, calls: Sequence[tuple[str, bytes, bool] | FlagAnswer]) -> list[FlagAnswer]:
        """``submit`` of each ``(method, payload, demo)`` in order, under one hold of the lock
        (an answer given instead, a refusal already decided, stays as it is): the one
        admission rule, refused when stopping, out of order, unavailable, full, or out of keys."""
        answers: list[FlagAnswer] = []
        with self.lock:
            why = self.refusal()
            held = self.held()
            admitted = False
            for call in calls:
                if type(call[0]) is not str:
                    answers.append(call)  # type: ignore[arg-type]
                elif why is not None:
                    answers.append((ERROR, 0, why))
                elif held >= self.options.max_tasks:
                    answers.append((AT_CAPACITY, 0, CAPACITY_MESSAGE))
                elif self.next_key >= self.key_base + KEY_SPAN:
                    answers.append((ERROR, 0, f"this Driver has issued all of its {KEY_SPAN - 1} keys: make another"))
                else:
                    method, payload, demo = call
                    key = self.next_key
                    self.next_key += 1
                    task = Task(Call(key, method, payload, demo))
                    self.tasks[key] = task
                    self.pending.append(task)
                    held += 1
                    admitted = True
                    answers.append((OK, key, ""))
            sent = self.on_admitted() if admitted else None
        if admitted:
            self.after_admit(sent)
        return answers

    def refusal(self) -> str | None:
        """Why a new task is refused (lock held), or None."""
        if self.closed:
            return FINALIZED_MESSAGE
        if self.draining:
            return DRAINING_MESSAGE
        return self.out_of_order() or self.unavailable()

    def unavailable(self) -> str | None:
        """Why ``submit`` must refuse, or None: no worker is ready and a slot failed to start
        one (a worker merely being replaced after a death does not count)."""
        if any(w.usable() for w in self.runners()):
            return None
        failed = [slot for slot in self.slots if slot.degraded]
        if not failed:
            return None
        due = [slot.restart_at for slot in failed if slot.restart_at is not None]
        when = f"; next attempt in {max(0.0, min(due) - time.monotonic()):.1f} s" if due else ""
        return (
            f"no {self.RUNNER} is ready: {self.last_worker_failure}\n"
            f"(the driver keeps restarting its {self.RUNNERS}{when})"
        )

    def note_failed_start(self, slot: Slot, cause: str) -> None:
        """A start failed (lock held): back off, remember why, and if no worker is ready,
        fail the tasks waiting for one."""
        slot.failures += 1
        delay = backoff_delay(slot.failures)
        slot.restart_at = time.monotonic() + delay
        slot.last_failure = cause
        self.last_worker_failure = cause
        self.counters.replacement_failures += 1
        self.event(
            0,
            f"{self.SLOT} {slot.index}: start failed ({slot.failures} in a row), next attempt in {delay:g} s: {cause}",
        )
        if not any(w.usable() for w in self.runners()):
            message = f"no {self.RUNNER} is ready to run this task: {cause}"
            while self.pending:
                self.complete(self.pending.popleft(), FAILED, -1, message)

    # -- answers ------------------------------------------------------------------------

    def collect(self, key: int) -> FlagAnswer:
        """A task's answer without blocking, as ``Driver.retrieve`` gives it."""
        with self.lock:
            return self._collect(key)

    def issued(self, key: int) -> bool:
        """Whether this book issued ``key`` (whether or not it still holds its task)."""
        return self.key_base < key < self.next_key

    def _collect(self, key: int) -> FlagAnswer:
        self.announce_finished()  # and settles the answers a host read itself
        task = self.tasks.get(key)
        if task is None:
            if not self.issued(key):
                return ERROR, 0, not_issued(key)
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
        """Block up to ``limit`` seconds (None: no limit) until the task is finished or the
        backend stops, then answer as ``collect``; the lock is not held while blocking."""
        with self.lock:
            task = self.tasks.get(key)
            if task is None or task.done:
                return self._collect(key)  # which says why, a key of another Driver's included
            if task.event is None:
                task.event = threading.Event()
            event = task.event
        if limit is None:
            while not event.wait(threading.TIMEOUT_MAX):
                pass
        else:
            event.wait(min(limit, threading.TIMEOUT_MAX))
        return self.collect(key)

    def record_answer(self, task: Task, flag: int, value: object, message: str) -> bool:
        """Make ``task`` done with this answer and count it; False if it was done already
        (a later answer is ignored)."""
        if task.done:
            return False
        task.done = True
        task.flag = flag
        # A failed general task answers None, whatever failed it (its Engine, a timeout...).
        call = task.call
        task.value = None if flag == FAILED and call is not None and not call.demo else value
        task.message = message
        task.deadline = None
        task.call = None
        self.finished_held += 1
        if flag == OK:
            self.counters.tasks_done += 1
        else:
            self.counters.tasks_failed += 1
        return True

    def complete(self, task: Task, flag: int, value: object, message: str) -> None:
        """Record a task's answer (once; later answers are ignored); its waiters are woken
        by the next ``announce_finished`` (the backend's thread calls it before it lets go of the
        lock, once for all the tasks it completed)."""
        if not self.record_answer(task, flag, value, message):
            return
        task.worker = None
        if self.options.result_ttl is not None and not self.closed:
            when = time.monotonic() + self.options.result_ttl
            self.expiring[task.key] = when
            self.result_expires(when)
        self.announce.append(task)
        if self.draining:
            self.drained.notify_all()

    def fail_all(self, tasks: Iterable[Task], message: str) -> None:
        """Complete each of ``tasks`` as failed with ``message`` (lock held); over a copy,
        since completing may hand a task to the host and take it off the book."""
        for task in list(tasks):
            self.complete(task, FAILED, -1, message)

    def announce_finished(self) -> None:
        """Wake the waiters of the tasks finished since the last call and tell the host
        (``notify(key, True)``), or hand their answers to a host that keeps them, in one
        ``deliver`` call, and forget them. Whatever collects or drops a task calls it first,
        so that the host always hears of a finish before the task is gone. The answers the
        host read itself are settled first."""
        self.settle()
        announce = self.announce
        if not announce:
            return
        self.announce = []
        if self.deliver.callback is not None:
            self.hand_to_host(announce)
            return
        for task in announce:
            if task.event is not None:
                task.event.set()
            self.notify(task.key, True)

    def hand_to_host(self, finished: list[Task]) -> None:
        """Give the host these tasks' answers and forget the tasks (lock held): from now on
        the host's ``host_held`` counts them (``held``)."""
        answers = []
        for task in finished:
            if self.tasks.get(task.key) is not task:
                continue  # dropped meanwhile (cancelled, expired)
            self.forget_handed(task)
            answers.append(host_answer(task.key, task.flag, task.value, task.message, task.demo))
        self.deliver(answers)

    def forget_handed(self, task: Task) -> None:
        """Take a finished task whose answer the host holds off the book (lock held)."""
        del self.tasks[task.key]
        self.expiring.pop(task.key, None)
        self.finished_held -= 1
        if task.event is not None:
            task.event.set()

    def held(self, settle: bool = True) -> int:
        """The tasks held (lock held): in the book, and answered to a host that keeps them.
        ``settle=False`` counts the book as it stands (a host's answers not settled yet are
        the book's), for a count that must agree with others made from it just before."""
        if settle:
            self.settle()
        return len(self.tasks) + self.deliver.held()

    # -- dropping tasks -----------------------------------------------------------------

    def cancel(self, key: int) -> bool:
        """Drop a held task whatever its state (a queued one never runs, a running one's
        answer is discarded, a finished one is removed); True if it was held."""
        with self.lock:
            self.announce_finished()
            task = self.tasks.pop(key, None) if self.issued(key) else None
            if task is None:
                return False
            self.expiring.pop(key, None)
            if task.done:
                self.finished_held -= 1
            else:
                try:
                    self.pending.remove(task)
                except ValueError:
                    # A worker has it: let it run (task_timeout still bounds it) and discard
                    # its answer. Interrupting the worker would cost a new one.
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

    # -- monitoring ---------------------------------------------------------------------

    def held_tasks(self) -> int:
        with self.lock:
            return self.held()

    def stats(self, state: str) -> dict[str, Any]:
        """The dict of ``Driver.stats()`` (``state`` as the Driver sees it)."""
        with self.lock:
            self.announce_finished()
            if self.closed:
                state = "finalized"
            elif self.draining:
                state = "draining"
            return self.snapshot(state)

    # -- the stop path --------------------------------------------------------------------

    def drain(self, limit: float | None) -> int:
        """Refuse new tasks (``DRAINING_MESSAGE``), wait up to ``limit`` seconds (None: no
        limit) until every held task is finished, then ``stop``; answer how many tasks that
        stop failed."""
        deadline = None if limit is None else time.monotonic() + limit
        with self.lock:
            already = self.closed  # finalized (or drained): the tasks it failed are not ours
            self.draining = True
            self.wake_for_stop()  # its thread now wakes for every answer, to tell drain
        if already:
            self.stop()  # returns once that stop is complete
            return 0
        try:
            with self.lock:
                while not self.closed:
                    self.announce_finished()  # settles the answers the host read itself
                    if all(task.done for task in self.tasks.values()):
                        break
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

    def stop(self) -> None:
        """Fail the unfinished tasks, stop every worker; never raises an Exception; safe to
        call many times and from many threads.

        Does nothing in a forked child of the process that started the backend (its exit
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
                self.close_book()
                self.wake_for_stop()
            self.shut_down()
            self.finished = True
            _LIVE.discard(self)

    def went_live(self) -> None:
        """``start`` has begun: until stopped, this backend is one that :func:`stop_all` stops."""
        _LIVE.add(self)

    def stop_when_collected(self) -> None:
        """The Driver's garbage-collection finalizer.

        A collection runs it on whichever thread allocates, possibly the backend's own while
        it holds ``lock`` (a Driver in a reference cycle): stopping right there would deadlock
        on that lock, so a new thread does it. If a stop is already under way (e.g. the exit
        hook's, on this very thread), it is left to finish.
        """
        if self.stop_lock.locked():
            return
        if self.on_own_thread():
            try:
                threading.Thread(target=self.stop, name="py4cc-collect", daemon=True).start()
            except RuntimeError:
                pass  # interpreter shutting down: the exit hook stops the backend
            return
        self.stop()

    def close_book(self) -> None:
        """The first step of a stop (lock held): refuse new tasks, fail the unfinished ones,
        wake every waiter."""
        self.settle()  # a task whose answer the host has is not failed
        self.closed = True
        # A copy: a host that keeps the answers takes each task off the book as it is
        # announced.
        for task in list(self.tasks.values()):
            if not task.done:
                self.failed_by_stop += 1
                self.complete(task, FAILED, -1, "the driver was finalized before this task finished")
        self.pending.clear()
        self.announce_finished()
        self.drained.notify_all()


_LIVE: set[TaskBook] = set()
"""The backends started and not stopped yet, for the exit hooks."""


def stop_all(kind: type[TaskBook]) -> None:
    """An exit hook's work: stop every backend of ``kind`` still running, so that no worker
    outlives its host."""
    for book in [book for book in _LIVE if isinstance(book, kind)]:
        book.stop()
