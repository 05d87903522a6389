"""The tasks a pool holds: each one's record, and the bookkeeping of their answers.

A :class:`Task` lives from submit until its answer is collected, cancelled or expired.
:class:`TaskBook`, a part of :class:`py4cc.pool.Pool`, records answers (``complete``),
wakes the waiters and tells the host (``announce_finished``), hands answers out
(``collect``, ``wait``), drops tasks (``cancel``, ``expire_results`` for ``result_ttl``)
and remembers why a dropped key is gone (:class:`py4cc.completion.Gone`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from .backend import FlagAnswer
from .completion import CANCELLED, EXPIRED, Gone, Notifier, cancelled_message, expired_message
from .protocol import (
    ERROR,
    FAILED,
    NOT_FINISHED,
    NOT_FINISHED_MESSAGE,
    OK,
    Call,
    GeneralCall,
    unknown_key,
)

if TYPE_CHECKING:
    from .options import Options
    from .processes import Worker
    from .stats import Counters, RunTimes


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


class TaskBook:
    """The pool's tasks and their answers (a mixin of :class:`py4cc.pool.Pool`, which sets
    these attributes). Everything here is read and written with ``lock`` held."""

    options: Options
    lock: threading.Lock
    tasks: dict[int, Task]
    pending: deque[Task]  # not sent to a worker yet, oldest first
    closed: bool
    draining: bool
    drained: threading.Condition
    notify: Notifier
    expiring: dict[int, float]  # finished, not collected: key -> when it expires, oldest first
    gone: Gone
    cancelled: int
    expired: int
    announce: list[Task]  # finished, waiters not woken yet (announce_finished)
    counters: Counters
    run_times: RunTimes
    finished_held: int

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

    def record_answer(self, task: Task, flag: int, value: object, message: str) -> bool:
        """Make ``task`` done with this answer and count it; False if it was done already
        (a later answer is ignored). What wakes its waiters is the backend's."""
        if task.done:
            return False
        task.done = True
        task.flag = flag
        # A failed general task answers None, whatever failed it (its Engine, a timeout...).
        task.value = None if flag == FAILED and type(task.call) is GeneralCall else value
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
        by the next ``announce_finished``."""
        if not self.record_answer(task, flag, value, message):
            return
        task.worker = None
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
