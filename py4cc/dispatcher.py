"""The dispatcher thread, and the wake-up pipe that interrupts its wait.

One thread per pool waits (``poll``, no polling loop) on every
worker's pipe, every worker's own process (its pidfd: see :mod:`py4cc.processes`) and
the wake-up pipe, with a timeout set by the nearest deadline (``task_timeout``,
``init_timeout``, a slot's next restart). It records the workers' answers, hands queued
tasks on, and deals with workers that die, overrun a deadline or fail to start: their
running task fails, the tasks queued behind it go back to the queue, and their slot starts
a replacement (:mod:`py4cc.recovery`). It also drops the finished results nobody
retrieved within ``result_ttl``.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from . import recovery
from .processes import wait_exited
from .protocol import FAILED, Answer, InitFailed, Ready, decode_report, exit_text, unpickle_answer

if TYPE_CHECKING:
    from .pool import Pool
    from .processes import Worker


class WakeUp:
    """A pipe the dispatcher watches, so that another thread can interrupt its wait (a
    task started with a new deadline, or stop has begun).

    ``pending`` says a byte is in the pipe already: a wake then costs no write. ``wake``
    and ``close`` are called with the pool's lock held; ``drain`` takes it.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.pending = False
        self.closed = False

    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd

    def wake(self) -> None:
        if self.pending or self.closed:
            return
        self.pending = True
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self, lock: Any) -> None:
        """Empty the pipe, then clear ``pending``, in that order: clearing first would let
        a ``wake`` in between write a byte that this read swallows, leaving ``pending`` set
        with the pipe empty, and every later ``wake`` a no-op."""
        try:
            os.read(self.read_fd, 4096)
        except OSError:
            pass
        with lock:
            self.pending = False

    def close(self) -> None:
        """Close the pipe, once; later wakes do nothing (its numbers may be reused)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


READ_SIZE = 1 << 16
"""The most one read of a worker's pipe takes in."""

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")


def take_messages(inbox: bytearray) -> list[bytes]:
    """Remove the whole messages at the front of ``inbox`` and return them.

    A worker sends with ``Connection.send_bytes``, whose framing is a 4-byte big-endian
    length, or -1 and then an 8-byte length for a message over 2 GiB. Reading the pipe
    ourselves takes in every message waiting with one read, where ``Connection.poll`` and
    ``recv_bytes`` would cost two reads and two polls per message.
    """
    messages = []
    at = 0
    end = len(inbox)
    while end - at >= 4:
        (size,) = _LENGTH.unpack_from(inbox, at)
        start = at + 4
        if size == -1:
            if end - start < 8:
                break
            (size,) = _LONG_LENGTH.unpack_from(inbox, start)
            start += 8
        if start + size > end:
            break
        messages.append(bytes(inbox[start : start + size]))
        at = start + size
    del inbox[:at]
    return messages


class Dispatcher(threading.Thread):
    """The pool's dispatcher thread; it exits once the pool's stop has begun."""

    def __init__(self, pool: Pool) -> None:
        super().__init__(name="py4cc-dispatcher", daemon=True)
        self.pool = pool
        self.inboxes: dict[Worker, bytearray] = {}  # what each worker sent, not yet a whole message

    def run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug; do not leave waiters hanging
            pool = self.pool
            text = traceback.format_exc()
            with pool.lock:
                pool.broken = f"the driver's dispatcher thread crashed:\n{text}"
                for task in list(pool.tasks.values()):
                    pool.complete(task, FAILED, -1, pool.broken)
                pool.pending.clear()
                pool.announce_finished()

    def _loop(self) -> None:
        pool = self.pool
        wake_fd = pool.wakeup.read_fd
        task_timeout = pool.options.task_timeout
        init_timeout = pool.options.init_timeout
        result_ttl = pool.options.result_ttl
        poller = select.poll()
        poller.register(wake_fd, select.POLLIN)
        watched: dict[int, tuple[bool, Worker]] = {}  # fd -> (is its pipe, worker)
        wait_readable = pool.options.wait_readable  # the host's, instead of poller.poll
        while True:
            with pool.lock:
                if pool.closed:
                    return
                self._watch(poller, watched)
                deadlines: list[float] = []
                if task_timeout is not None:
                    deadlines = [
                        w.queue[0].deadline for w in pool.workers if w.queue and w.queue[0].deadline is not None
                    ]
                if init_timeout is not None:
                    deadlines += [w.started + init_timeout for w in pool.workers if not w.ready and not w.dead]
                restart = recovery.next_restart(pool)
                if restart is not None:
                    deadlines.append(restart)
                if result_ttl is not None:
                    next_expiry = pool.expire_results(time.monotonic())
                    if next_expiry is not None:
                        deadlines.append(next_expiry)
                timeout: float | None = None
                if deadlines:
                    timeout = max(0.0, min(deadlines) - time.monotonic()) * 1000.0
                # Last thing before the GIL is let go in poll: whoever is woken now finds
                # it free, instead of waiting for this thread's bookkeeping.
                pool.announce_finished()
            ready = poller.poll(timeout) if wait_readable is None else wait_readable([wake_fd, *watched], timeout)
            exited: list[Worker] = []
            for fd, _ in ready:
                if fd == wake_fd:
                    pool.wakeup.drain(pool.lock)
                    continue
                is_pipe, w = watched[fd]
                if is_pipe:
                    self._read_worker(w)
                else:
                    exited.append(w)
            for w in exited:
                self._reap(w)
            if task_timeout is not None:
                self._expire(task_timeout)
            if init_timeout is not None:
                self._expire_startup(init_timeout)
            recovery.restart_due(pool)

    def _watch(self, poller: Any, watched: dict[int, tuple[bool, Worker]]) -> None:
        """Bring ``poller`` in line with the workers (lock held): each one's pipe until its
        EOF, and its own process (its pidfd: readable once it has exited)."""
        wanted: dict[int, tuple[bool, Worker]] = {}
        for w in self.pool.workers:
            if not w.eof:
                wanted[w.conn.fileno()] = (True, w)
            wanted[w.watch()] = (False, w)
        if wanted == watched:
            return
        for fd, what in list(watched.items()):
            if wanted.get(fd) != what:
                poller.unregister(fd)
                del watched[fd]
        for fd, what in wanted.items():
            if fd not in watched:
                poller.register(fd, select.POLLIN)
                watched[fd] = what

    def _read_worker(self, w: Worker, to_the_end: bool = False) -> None:
        """Take in what ``w`` has sent: one read (its pipe is readable), or (``to_the_end``:
        it has exited) every read that does not block. Whole messages are handled; a
        partial one waits in its inbox for the rest."""
        pool = self.pool
        inbox = self.inboxes.setdefault(w, bytearray())
        fd = w.conn.fileno()
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                data = b""
            if not data:
                w.eof = True
                with pool.lock:
                    w.dead = True
                w.signal(signal.SIGKILL)  # its pipe is closed: of no use, and dead once reaped
            else:
                inbox += data
            if not self._handle_messages(w, inbox) or w.eof or not to_the_end:
                return
            if not select.select([fd], [], [], 0)[0]:
                return

    def _handle_messages(self, w: Worker, inbox: bytearray) -> bool:
        """Handle the whole messages at the front of ``inbox``, removing them; False if the
        worker's messages can no longer be read (it has been killed)."""
        pool = self.pool
        reports = []
        try:
            for message in take_messages(inbox):
                reports.append(decode_report(message))
        except Exception:  # an unpicklable message: treat as a broken worker
            w.eof = True
            with pool.lock:
                w.dead = True
                if w.queue and not pool.closed:
                    pool.requeue_unstarted(w)
                    w.doomed = (w.queue.popleft(), "the worker's answer could not be read:\n" + traceback.format_exc())
            w.signal(signal.SIGKILL)  # _reap fails the task once the worker is dead
            return False
        if not reports:
            return True
        # General tasks' answers, unpickled outside the lock (it never raises).
        reports = [unpickle_answer(r) if type(r) is Answer and r.pickled else r for r in reports]
        with pool.lock:
            if pool.closed:
                return False  # stop has begun (and failed every unfinished task)
            for report in reports:
                if isinstance(report, Answer):
                    if w.queue and w.queue[0].key == report.key:
                        now = time.monotonic()
                        pool.note_run_time(now - w.head_started)
                        pool.run_times.add(report.run_s)
                        pool.complete(w.queue.popleft(), report.flag, report.value, report.message)
                        if w.queue:
                            pool.start_head(w, now)
                elif isinstance(report, Ready):
                    if not w.init_timed_out:  # too late: it has been killed already
                        w.ready = True
                        recovery.note_ready(w)
                elif isinstance(report, InitFailed):
                    w.dead = True  # it exits by itself; its exit is a failed start
                    w.failure = report.traceback
                    pool.event(w.pid, f"failed to initialise its engine:\n{report.traceback}")
            pool.dispatch()
        return True

    def _reap(self, w: Worker) -> None:
        """A worker process has exited: fail its task, drop it, let its slot replace it."""
        pool = self.pool
        # Read whatever it managed to send before it exited.
        if not w.eof:
            self._read_worker(w, to_the_end=True)
        self.inboxes.pop(w, None)
        if not w.has_exited():  # only without a pidfd: its forkserver's pipe closed
            w.signal(signal.SIGKILL)  # a worker reported dead is dead
            wait_exited([w], 5.0)
        exitcode = w.exit_code()
        with pool.lock:
            if pool.closed:
                # stop has begun: it failed every unfinished task (those queued behind
                # this worker's running one must not be queued again: their call is
                # gone) and stops the workers it finds in pool.workers, this one included.
                w.dead = True
                return
            was_ready = w.ready
            w.dead = True
            if w in pool.workers:
                pool.workers.remove(w)
            pool.requeue_unstarted(w)
            cause = death_cause(w, exitcode, pool.options.task_timeout, pool.options.init_timeout)
            pool.counters.worker_deaths += 1
            pool.counters.last_death_cause = f"worker process {w.pid} {cause}"
            if w.queue:
                pool.event(w.pid, f"{cause} while running task {w.queue[0].key}")
            elif w.timed_out or w.init_timed_out:
                pool.event(w.pid, cause)
            elif was_ready or w.failure is None:
                pool.event(w.pid, f"{cause} {'while idle' if was_ready else 'before it was ready'}")
            if w.queue:
                pool.complete(
                    w.queue.popleft(),
                    FAILED,
                    -1,
                    f"the worker process (pid {w.pid}) running this task died with "
                    f"{exit_text(exitcode)}; it is being replaced",
                )
            if w.doomed is not None:  # killed for it: failed now that the worker is dead
                pool.complete(w.doomed[0], FAILED, -1, w.doomed[1])
                w.doomed = None
            recovery.note_lost(pool, w, exitcode)
            pool.dispatch()
            pool.announce_finished()  # before starting a replacement, which takes a while
        w.release()

    def _expire(self, task_timeout: float) -> None:
        """Kill the worker of each task that has run past ``task_timeout``; ``_reap`` fails
        the task once that worker is dead (so that it cannot still be running it)."""
        pool = self.pool
        now = time.monotonic()
        with pool.lock:
            if pool.closed:
                return
            for w in pool.workers:
                task = w.queue[0] if w.queue else None
                if task is None or task.deadline is None or task.deadline > now:
                    continue
                pool.requeue_unstarted(w)
                w.queue.clear()
                w.dead = True
                w.timed_out = True
                pool.counters.tasks_timed_out += 1
                pool.event(w.pid, f"task {task.key} ran past task_timeout ({task_timeout:g} s): killing the worker")
                w.doomed = (
                    task,
                    f"the task timed out after {task_timeout:g} s; its worker process "
                    f"(pid {w.pid}) was killed and is being replaced",
                )
                w.signal(signal.SIGKILL)
                # Its exit shows up on its pidfd; _reap then fails the task and has it replaced.
            pool.dispatch()

    def _expire_startup(self, init_timeout: float) -> None:
        """Kill the replacement workers not ready within ``init_timeout`` of their start;
        ``_reap`` then counts each as a failed start (retried after a backoff)."""
        pool = self.pool
        now = time.monotonic()
        with pool.lock:
            if pool.closed:
                return
            for w in pool.workers:
                if w.ready or w.dead or now < w.started + init_timeout:
                    continue
                w.dead = True
                w.init_timed_out = True
                pool.event(w.pid, f"not ready within init_timeout ({init_timeout:g} s): killing it")
                w.signal(signal.SIGKILL)
                # Its exit shows up on its pidfd; _reap then notes the failed start.


def death_cause(w: Worker, exitcode: int | None, task_timeout: float | None, init_timeout: float | None) -> str:
    """How worker ``w`` died, in words, for stats and events."""
    how = f"exited with {exit_text(exitcode)}"
    if w.timed_out and task_timeout is not None:
        return f"{how}, killed because its task ran past task_timeout ({task_timeout:g} s)"
    if w.init_timed_out and init_timeout is not None:
        return f"{how}, killed because it was not ready within init_timeout ({init_timeout:g} s)"
    if w.failure is not None:
        return f"{how} after its engine failed to initialise"
    return how
