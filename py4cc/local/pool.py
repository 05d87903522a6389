"""The local pool: worker processes on this machine, and the dispatcher thread that serves them.

One unit, as CPython's ``concurrent/futures/process.py`` keeps its manager thread beside
its executor: :class:`Pool` is the backend (the task book of :mod:`py4cc.core.tasks`, plus
how tasks reach this machine's worker processes, and their slots' restarts);
:class:`Dispatcher` is its one thread, which brings in the workers' answers and notices
their exits and overrun deadlines. The worker processes themselves are
:mod:`py4cc.local.processes`; their output reaches the host through
:mod:`py4cc.local.output`; the forkserver and preloading are :mod:`py4cc.local.forkserver`.

Data flow::

    caller's threads          this process                                a worker process
    ----------------          ------------                                ----------------
    Driver.submit /      -->  TaskBook.admit: a Task in tasks[key],
    Driver.submit_call        at the end of pending (py4cc.core.tasks)
                                  |  Pool.dispatch: pick_runner (py4cc.core.scheduling):
                                  v  an idle worker, or behind a busy one's current task
                              Call(key, method, payload, demo) == pipe ==>  worker.serve:
                                                                            engine.<method>
                              Dispatcher thread  <======== pipe =========  Answer(key, flag,
                              (polls every pipe, every worker's pidfd,      value, message)
                               the WakeUp pipe; deadlines bound the wait)
                                  |  complete(task): its answer is held;
                                  v  announce_finished wakes its waiters, notify(key)
    Driver.retrieve(key) <--  tasks[key] is done: the answer; the task is removed
    Driver.wait(key, t)  <--  the same, once the task's Event is set (or t runs out)

                              a worker's exit (pidfd readable) --> Dispatcher._reap:
                              its running task fails, those behind it go back to pending,
                              its slot starts a replacement (at once, or after a backoff)

With a host that reads the pipes itself (``options.pipe_reader``: rs4py), the answers skip
the dispatcher: the host's ``wait_readable`` reads them into its own table while the GIL is
released, and :meth:`Pool.settle` takes the answered tasks off the book afterwards (see
``docs/architecture.md``).

Everything below the pool's ``lock`` is read and written with it held; the dispatcher lets
it go while it polls. The last pool to stop stops the forkserver py4cc started.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import multiprocessing
import multiprocessing.util  # imported before our exit hook is registered, so that ours runs first
import os
import select
import signal
import threading
import time
import traceback
from typing import Any

from ..core.scheduling import batch_to_form, free_runner, moving_average, pick_runner
from ..core.slots import Slot
from ..core.stats import task_stats
from ..core.tasks import Task, TaskBook, stop_all
from ..options import Options
from ..protocol import (
    FAILED,
    OUTPUT_GRACE_S,
    PREFETCH_BYTES,
    Answer,
    InitFailed,
    Ready,
    decode_report,
    encode_batch,
    encode_call,
    exit_text,
    frame_header,
    take_messages,
    unpickle_answer,
)
from . import forkserver
from .output import OutputRelay, WakeUp
from .processes import Worker, last_stderr_text, start_worker, stop_workers, wait_exited, wait_ready


class Pool(TaskBook):
    """Worker processes running an Engine, and the tasks they hold; one per Driver.

    Holds no reference to its Driver, so that a Driver nobody uses is collected (and its
    finalizer stops the pool). Everything below ``lock`` is read and written with it held.
    """

    RUNNER = "worker process"
    RUNNERS = "worker processes"
    SLOT = "worker slot"

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.ctx = multiprocessing.get_context(options.start_method)
        self.workers: list[Worker] = []
        self.broken: str | None = None  # the dispatcher crashed: nothing runs any more
        self.uses_forkserver = False
        self.wakeup = WakeUp()
        self.dispatcher: Dispatcher | None = None
        self.preloaded: object = None  # the Engine "fork" workers inherit (preload="engine")
        self.relay = OutputRelay(options.worker_output)  # the workers' output, and events
        # The host reads the workers' pipes itself while the dispatcher waits (and hands
        # their answers to its own table): Driver(pipe_reader=...).
        self.reader = options.pipe_reader if options.wait_readable is not None else None
        # A pipe write never waits (non-blocking): the host's keeps the GIL meanwhile.
        self.write = os.write if self.reader is None else self.reader.write

    # -- what the task book asks of a backend -------------------------------------------

    def start(self) -> None:
        self.went_live()
        try:
            if self.options.start_method == "forkserver":
                forkserver.acquire_forkserver()
                self.uses_forkserver = True
            self.relay.start()
            self.preload_engine()
            workers: list[Worker] = []
            try:
                for index in range(self.options.n_subprocesses):
                    w = self.start_worker()
                    workers.append(w)
                    with self.lock:
                        self.slots.append(Slot(index))
                        self.attach(self.slots[-1], w)
            except Exception as exc:
                raise RuntimeError(
                    f"Driver.initialize: could not start a worker process "
                    f"(start method {self.options.start_method!r}): {type(exc).__name__}: {exc}"
                ) from exc
            wait_ready(workers, self.options.setup.engine, self.options.init_timeout, self.relay.start_stderr)
            for w in workers:
                self.relay.ready(w.pid)
                w.make_nonblocking()
        except BaseException:
            self.stop()
            raise
        self.dispatcher = Dispatcher(self)
        self.dispatcher.start()

    def worker_pids(self) -> list[int]:
        with self.lock:
            return [w.pid for w in self.workers]

    def runners(self) -> list[Worker]:
        return self.workers

    def out_of_order(self) -> str | None:
        if self.broken is not None:
            return f"the driver has no working worker process: {self.broken}"
        return None

    def on_admitted(self) -> None:
        if self.dispatch() or (self.reader is not None and self.pending):
            # The dispatcher must learn the new deadline, or that a task waits for a worker
            # (it then looks at every answer the host reads).
            self.wakeup.wake()

    def settle(self) -> None:
        """Take off the book the tasks whose answers the host read from the pipes itself
        (lock held): each worker's head task is done, as ``Dispatcher._handle_messages``
        would have found it; the answer is in the host's table already."""
        if self.reader is None:
            return
        answered = self.reader.answered()
        if not answered:
            return
        by_fd = {w.conn.fileno(): w for w in self.workers if not w.conn.closed}
        now = time.monotonic()
        for fd, key, flag, run_s in answered:
            w = by_fd.get(fd)
            # Settled late: the run time the worker measured is the sample, not the time since.
            task = None if w is None else self.take_head(w, key, run_s, run_s, now)
            if task is not None and self.tasks.get(key) is task and self.record_answer(task, flag, None, ""):
                task.worker = None
                self.forget_handed(task)  # its answer is the host's already
        if self.draining:
            self.drained.notify_all()

    def take_head(self, w: Worker, key: int, sample_s: float, run_s: float, now: float) -> Task | None:
        """The head of ``w``'s queue, which answered ``key``, taken off it (lock held), the run
        time noted (``sample_s`` for the prefetch rule's average, ``run_s`` as the worker
        measured it), and the next one started; None if ``key`` is not its head (it was
        failed meanwhile)."""
        if not w.queue or w.queue[0].key != key:
            return None
        task = w.queue.popleft()
        self.avg_run_s = moving_average(self.avg_run_s, sample_s)
        self.run_times.add(run_s)
        if w.queue and self.options.batching is None:  # a batch's tasks started together
            self.start_head(w, now)
        return task

    def event(self, pid: int, text: str) -> None:
        """Report what happened to worker ``pid`` to the output sink, as an "event" line."""
        self.relay.event(pid, text)

    def snapshot(self, state: str) -> dict[str, Any]:
        """The stats of this pool (called with its lock held)."""
        running = 0
        queued_in_workers = 0
        alive = 0
        ready = 0
        for w in self.workers:
            # A cancelled task a worker still holds is no longer the pool's: not counted.
            started = self.running_count(w)
            for position, task in enumerate(w.queue):
                if not task.cancelled:
                    if position < started:
                        running += 1
                    else:
                        queued_in_workers += 1
            if w.doomed is not None:  # its worker is being killed for them; they fail once it is dead
                running += sum(1 for task in w.doomed[0] if not task.done)
            if not w.dead:
                alive += 1
                if w.ready:
                    ready += 1
        return task_stats(
            self,
            state,
            queued_in_workers=queued_in_workers,
            running=running,
            alive=alive,
            ready=ready,
            workers_degraded=sum(1 for slot in self.slots if slot.degraded),
            last_worker_failure=self.last_worker_failure or "",
            cluster="",
            cluster_lost=None,
        )

    # -- which worker runs which task (the rule is py4cc.core.scheduling's) ---------------

    def dispatch(self) -> bool:
        """Give pending tasks to workers, oldest task first (lock held), as
        :func:`~py4cc.core.scheduling.pick_runner` says. Returns True if a task started and
        has a deadline, or bytes were left waiting for a pipe (the dispatcher must learn
        it). Once stop has begun nothing is sent: its tasks are failed already."""
        if self.closed:
            return False
        if self.options.batching is not None:
            return self.dispatch_batches()
        started = False
        backlog = False  # bytes left waiting for a pipe: the dispatcher must watch it
        now = time.monotonic()
        while self.pending:
            task = self.pending[0]
            target = pick_runner(
                self.workers, self.options, now, self.avg_run_s, functools.partial(self.has_room, task=task)
            )
            if target is None:
                break
            self.pending.popleft()
            if self.assign(target, task):
                started = started or len(target.queue) == 1
                backlog = backlog or bool(target.outbox)
            else:
                self.pending.appendleft(task)
        return backlog or (started and self.options.task_timeout is not None)

    def dispatch_batches(self) -> bool:
        """With ``batching``: give each free worker a batch of the queue's head once
        :func:`~py4cc.core.scheduling.batch_to_form` says one is due (lock held). Returns True
        if the dispatcher must look at its deadlines again: a batch started with a
        task_timeout, or a new oldest task now waits for a batch to fill."""
        batching = self.options.batching
        assert batching is not None
        started = False
        now = time.monotonic()
        while self.pending:
            worker = free_runner(self.workers)
            if worker is None:
                return started
            size, _ = batch_to_form(self.pending, batching, now)
            if not size:
                return started or len(self.pending) == 1
            batch = [self.pending.popleft() for _ in range(size)]
            if self.assign_batch(worker, batch, now):
                started = started or self.options.task_timeout is not None
            else:
                self.pending.extendleft(reversed(batch))
        return started

    def assign_batch(self, worker: Worker, batch: list[Task], now: float) -> bool:
        """Send ``batch`` to ``worker`` as one message; False (tasks untouched) if the pipe
        is broken. Its tasks all start now: task_timeout bounds the batch's whole run."""
        if not self.send(worker, encode_batch([task.call for task in batch])):  # type: ignore[misc]
            return False
        worker.queue.extend(batch)
        worker.head_started = now
        deadline = None if self.options.task_timeout is None else now + self.options.task_timeout
        for task in batch:
            task.worker = worker
            task.deadline = deadline
        self.note_batch(batch, now)
        return True

    @staticmethod
    def has_room(w: Worker, task: Task) -> bool:
        """Whether ``w``'s pipe keeps room for ``task`` behind what it holds (``PREFETCH_BYTES``);
        never while its pipe is full (bytes of an earlier task still wait to go)."""
        if w.outbox:
            return False
        return sum(t.size for t in itertools.islice(w.queue, 1, None)) + task.size <= PREFETCH_BYTES

    def assign(self, worker: Worker, task: Task) -> bool:
        """Send ``task`` to ``worker``; False (task untouched) if the pipe is broken."""
        if not self.send(worker, encode_call(task.call)):
            return False
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            self.start_head(worker, time.monotonic())
        return True

    def send(self, worker: Worker, message: bytes) -> bool:
        """Send ``message`` to ``worker``: the pool's one write to a worker (lock held); False
        if the pipe is broken before any of it went (nothing is left to send).

        It never blocks: what the pipe does not take in now waits in ``worker.outbox``, and
        the dispatcher sends it on once the pipe is writable (``flush``); a worker that takes
        in nothing for ``write_stall_bound`` is killed (``Dispatcher._expire``)."""
        was_empty = not worker.outbox
        if len(message) < JOIN_BELOW:
            # One write: the worker wakes once, to the whole message.
            worker.outbox.append(memoryview(frame_header(len(message)) + message))
        else:
            worker.outbox.append(memoryview(frame_header(len(message))))
            worker.outbox.append(memoryview(message))
        if was_empty:
            worker.write_progress = time.monotonic()
            return self.flush(worker)
        return True

    def flush(self, worker: Worker) -> bool:
        """Write what ``worker``'s pipe takes now of its outbox, without blocking (lock held).
        False if the pipe is broken: the worker is then dead (killed; ``Dispatcher._reap``
        fails its running task and puts the others back)."""
        outbox = worker.outbox
        fd = worker.conn.fileno()
        try:
            while outbox:
                written = self.write(fd, outbox[0])
                if written:
                    worker.write_progress = time.monotonic()
                if written == len(outbox[0]):
                    outbox.popleft()
                else:
                    outbox[0] = outbox[0][written:]
        except BlockingIOError:
            return True
        except (OSError, ValueError):
            outbox.clear()
            worker.dead = True
            worker.signal(signal.SIGKILL)
            return False
        return True

    def write_stall_bound(self) -> float:
        """How long a worker may take in none of the bytes waiting for its pipe before it is
        killed: ``task_timeout``, or ``WRITE_STALL_S`` without one."""
        task_timeout = self.options.task_timeout
        return WRITE_STALL_S if task_timeout is None else task_timeout

    def start_head(self, worker: Worker, now: float) -> None:
        """``worker.queue[0]`` starts (about) now: note it, and set its deadline."""
        worker.head_started = now
        if self.options.task_timeout is not None:
            worker.queue[0].deadline = now + self.options.task_timeout

    def requeue_unstarted(self, w: Worker) -> None:
        """Put the tasks queued behind ``w``'s running one back at the head of pending (with
        ``batching`` a worker holds only its running batch: nothing to put back)."""
        while len(w.queue) > self.running_count(w):
            task = w.queue.pop()
            task.worker = None
            task.deadline = None
            if not task.cancelled:
                self.pending.appendleft(task)

    # -- recovery: each slot restarts its worker (py4cc.core.slots) -------------------------

    def attach(self, slot: Slot, worker: Worker) -> None:
        """``worker`` (just started) fills ``slot``."""
        slot.worker = worker
        slot.restart_at = None
        slot.last_pid = worker.pid
        worker.slot = slot
        self.workers.append(worker)

    def note_ready(self, worker: Worker) -> None:
        """``worker`` reported ready: its slot's failures are over."""
        if worker.slot is not None:
            worker.slot.failures = 0
        self.relay.ready(worker.pid)

    def failure_text(self, w: Worker, exitcode: int | None) -> str:
        """Why ``w``, which died before it was ready, could not start."""
        stderr = self.relay.start_stderr(w.pid)
        if w.failure is not None:
            return f"a worker process (pid {w.pid}) failed to initialise its engine:\n{w.failure}"
        if w.init_timed_out:
            return (
                f"a worker process (pid {w.pid}) did not become ready within the "
                f"{self.options.init_timeout:g} s start-up limit (init_timeout) and was killed"
            )
        return f"a worker process (pid {w.pid}) exited before it was ready, with {exit_text(exitcode)}" + (
            last_stderr_text(stderr)
        )

    def note_lost(self, w: Worker, exitcode: int | None) -> None:
        """``w`` has exited (and its tasks have been dealt with): its slot starts another one,
        at once if ``w`` had been ready, else after the backoff."""
        slot = w.slot
        if slot is None or slot.worker is not w:
            return
        slot.worker = None
        if w.ready:
            slot.restart_at = time.monotonic()
        else:
            self.note_failed_start(slot, self.failure_text(w, exitcode))

    def next_restart(self) -> float | None:
        """When the next slot without a worker is due to start one (monotonic), if any."""
        due = [slot.restart_at for slot in self.slots if slot.worker is None and slot.restart_at is not None]
        return min(due) if due else None

    def restart_due(self) -> None:
        """Start a worker in every slot whose time has come; called without the lock, by the
        dispatcher (a start that fails is noted and backed off)."""
        with self.lock:
            now = time.monotonic()
            due = [s for s in self.slots if s.worker is None and s.restart_at is not None and s.restart_at <= now]
            if self.closed:
                due = []
            for slot in due:
                slot.restart_at = None
        for slot in due:
            try:
                new = self.start_worker()
            except Exception:
                with self.lock:
                    if not self.closed:
                        self.note_failed_start(
                            slot, "a worker process could not be started:\n" + traceback.format_exc()
                        )
                continue
            with self.lock:
                stop = self.closed
                if not stop:
                    replaced = slot.last_pid
                    self.attach(slot, new)
                    again = f" (after {slot.failures} failed starts)" if slot.failures else ""
                    self.event(new.pid, f"started, replacing worker process {replaced}{again}")
            if stop:
                stop_workers([new])

    # -- starting workers -----------------------------------------------------------------

    def preload_engine(self) -> None:
        """Load what ``preload`` asks for before the first worker starts (py4cc.local.forkserver)."""
        try:
            self.preloaded = forkserver.preload(self.options.setup, self.options.start_method, self.options.preload)
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
            forkserver.note_forkserver()
        with self.lock:
            self.counters.worker_starts += 1
        return w

    # -- stopping -------------------------------------------------------------------------

    def wake_for_stop(self) -> None:
        self.wakeup.wake()

    def shut_down(self) -> None:
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
        self.preloaded = None
        if self.uses_forkserver:
            self.uses_forkserver = False
            forkserver.release_forkserver()

    def on_own_thread(self) -> bool:
        return threading.current_thread() is self.dispatcher


JOIN_BELOW = 1 << 16
"""A message shorter than this goes in one write with its length prefix (a copy); a longer
one as two writes, uncopied."""

READ_SIZE = 1 << 16
"""The most one read of a worker's pipe takes in."""

WRITE_STALL_S = 30.0
"""Without ``task_timeout``: how long a worker may take in none of the bytes waiting for
its pipe (it is stopped, or stuck before reading its next task) before it is killed and its
tasks fail. Long enough for any live worker to finish unpickling a task and read on."""


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
        finally:
            # A host holding the wakes of answers it read (hold_wakes) gives them at its next
            # call of wait_readable: this is the last.
            wait_readable = self.pool.options.wait_readable
            with contextlib.suppress(BaseException):
                if wait_readable is not None:
                    wait_readable([], 0)

    def _loop(self) -> None:
        pool = self.pool
        wake_fd = pool.wakeup.read_fd
        task_timeout = pool.options.task_timeout
        init_timeout = pool.options.init_timeout
        result_ttl = pool.options.result_ttl
        batching = pool.options.batching is not None
        poller = select.poll()
        poller.register(wake_fd, select.POLLIN)
        watched: dict[int, tuple[bool, Worker]] = {}  # fd -> (is its pipe, worker)
        polling_out: set[int] = set()  # the pipes with bytes waiting to go: watched for POLLOUT
        wait_readable = pool.options.wait_readable  # the host's, instead of poller.poll
        reader = pool.reader
        while True:
            with pool.lock:
                if pool.closed:
                    return
                pool.settle()
                self._watch(poller, watched, polling_out)
                if batching or pool.pending:
                    # The batches whose oldest task has waited max_wait; the tasks that wait
                    # for a worker the host's settled answers freed.
                    pool.dispatch()
                writers = {w.conn.fileno() for w in pool.workers if w.outbox and not w.dead}
                if wait_readable is None and writers != polling_out:
                    for fd in writers ^ polling_out:
                        poller.modify(fd, select.POLLIN | (select.POLLOUT if fd in writers else 0))
                polling_out = writers
                deadlines: list[float] = []
                if writers:
                    stall = pool.write_stall_bound()
                    deadlines += [w.write_progress + stall for w in pool.workers if w.outbox and not w.dead]
                if task_timeout is not None:
                    deadlines += [
                        w.queue[0].deadline for w in pool.workers if w.queue and w.queue[0].deadline is not None
                    ]
                if init_timeout is not None:
                    deadlines += [w.started + init_timeout for w in pool.workers if not w.ready and not w.dead]
                restart = pool.next_restart()
                if restart is not None:
                    deadlines.append(restart)
                starting = init_timeout is not None and any(not w.ready and not w.dead for w in pool.workers)
                if batching:
                    batch_due = pool.batch_due()
                    if batch_due is not None:
                        deadlines.append(batch_due)
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
                # With the host reading the pipes, an answer needs this thread only when a
                # task waits for a worker, a deadline moves with it, or drain waits.
                eager = bool(pool.pending) or pool.draining or batching or task_timeout is not None
            if reader is not None and wait_readable is not None:
                pipes = [fd for fd, (is_pipe, _) in watched.items() if is_pipe]
                ready = wait_readable([wake_fd, *watched], timeout, sorted(writers), pipes, eager, batching)
            elif wait_readable is None:
                ready = poller.poll(timeout)
            elif writers:
                ready = wait_readable([wake_fd, *watched], timeout, sorted(writers))
            else:
                ready = wait_readable([wake_fd, *watched], timeout)
            exited: list[Worker] = []
            for fd, revents in ready:
                if fd == wake_fd:
                    pool.wakeup.drain(pool.lock)
                    continue
                is_pipe, w = watched[fd]
                if not is_pipe:
                    exited.append(w)
                    continue
                if revents & select.POLLOUT:
                    self._write_worker(w)
                if revents & ~select.POLLOUT:
                    self._read_worker(w)
            for w in exited:
                self._reap(w)
            if task_timeout is not None or writers:
                self._expire(task_timeout)
            if starting and init_timeout is not None:
                self._expire_startup(init_timeout)
            if restart is not None:
                pool.restart_due()

    def _watch(self, poller: Any, watched: dict[int, tuple[bool, Worker]], polling_out: set[int]) -> None:
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
                polling_out.discard(fd)
        for fd, what in wanted.items():
            if fd not in watched:
                poller.register(fd, select.POLLIN)
                watched[fd] = what

    def _read_worker(self, w: Worker, to_the_end: bool = False) -> None:
        """Take in what ``w`` has sent: one read (its pipe is readable), or (``to_the_end``:
        it has exited) every read that does not block. Whole messages are handled; a
        partial one waits in its inbox for the rest. With the host reading the pipes, what
        it read and left for py4cc."""
        pool = self.pool
        fd = w.conn.fileno()
        if pool.reader is not None:
            messages, ended = pool.reader.drain(fd) if to_the_end else pool.reader.take(fd)
            self._handle_messages(w, messages)
            if ended and not w.eof:
                self._ended(w)
            return
        inbox = self.inboxes.setdefault(w, bytearray())
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                return  # nothing yet (it was writable, or hung up with bytes still to come)
            except OSError:
                data = b""
            if not data:
                self._ended(w)
            else:
                inbox += data
            if not self._handle_messages(w, take_messages(inbox)) or w.eof or not to_the_end:
                return
            if not select.select([fd], [], [], 0)[0]:
                return

    def _ended(self, w: Worker) -> None:
        """``w``'s pipe has ended: it is of no use, and dead once reaped."""
        w.eof = True
        with self.pool.lock:
            w.dead = True
        w.signal(signal.SIGKILL)

    def _handle_messages(self, w: Worker, messages: list[bytes]) -> bool:
        """Handle whole messages ``w`` sent; False if the worker's messages can no longer be
        read (it has been killed)."""
        pool = self.pool
        reports = []
        try:
            for message in messages:
                reports.append(decode_report(message))
        except Exception:  # an unpicklable message: treat as a broken worker
            w.eof = True
            with pool.lock:
                pool.settle()
                w.dead = True
                if w.queue and not pool.closed:
                    pool.requeue_unstarted(w)
                    doomed = [w.queue.popleft() for _ in range(pool.running_count(w))]
                    w.doomed = (doomed, "the worker's answer could not be read:\n" + traceback.format_exc())
            w.signal(signal.SIGKILL)  # _reap fails the task once the worker is dead
            return False
        if not reports:
            return True
        # General tasks' answers, unpickled outside the lock (it never raises); a host that
        # keeps the answers gets them pickled, and unpickles them itself.
        if pool.deliver.callback is None:
            reports = [unpickle_answer(r) if type(r) is Answer and r.pickled else r for r in reports]
        with pool.lock:
            if pool.closed:
                return False  # stop has begun (and failed every unfinished task)
            pool.settle()
            for report in reports:
                if isinstance(report, Answer):
                    now = time.monotonic()
                    task = pool.take_head(w, report.key, now - w.head_started, report.run_s, now)
                    if task is not None:
                        if report.pickled and task.demo:  # an int outside i64, pickled
                            report = unpickle_answer(report)
                        pool.complete(task, report.flag, report.value, report.message)
                elif isinstance(report, Ready):
                    if not w.init_timed_out:  # too late: it has been killed already
                        w.make_nonblocking()
                        w.ready = True
                        pool.note_ready(w)
                elif isinstance(report, InitFailed):
                    # Killed, not left to exit: a thread its Engine started may keep it
                    # alive for ever. Its exit (pidfd) is then a failed start, backed off.
                    w.dead = True
                    w.failure = report.traceback
                    pool.event(w.pid, f"failed to initialise its engine:\n{report.traceback}")
                    w.signal(signal.SIGKILL)
            pool.dispatch()
        return True

    def _write_worker(self, w: Worker) -> None:
        """``w``'s pipe is writable: send on what waits in its outbox; once it is empty, the
        worker may take more tasks."""
        pool = self.pool
        with pool.lock:
            if pool.closed or w.dead:
                return
            pool.flush(w)
            if not w.outbox:
                pool.dispatch()

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
            pool.settle()  # the answers read from its pipe before it went
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
            cause = w.death_cause(exitcode, pool.options.task_timeout, pool.options.init_timeout)
            pool.counters.worker_deaths += 1
            pool.counters.last_death_cause = f"worker process {w.pid} {cause}"
            lost = [w.queue.popleft() for _ in range(pool.running_count(w))]
            if len(lost) == 1:
                pool.event(w.pid, f"{cause} while running task {lost[0].key}")
            elif lost:
                pool.event(w.pid, f"{cause} while running a batch of {len(lost)} tasks (keys {lost[0].key}..)")
            elif w.timed_out or w.init_timed_out or w.stalled:
                pool.event(w.pid, cause)
            elif was_ready or w.failure is None:
                pool.event(w.pid, f"{cause} {'while idle' if was_ready else 'before it was ready'}")
            if lost:
                whose = pool.run_names(lost, "this task")[1]
                pool.fail_all(
                    lost,
                    f"the worker process (pid {w.pid}) running {whose} died with {exit_text(exitcode)}; "
                    "it is being replaced",
                )
            if w.doomed is not None:  # killed for them: failed now that the worker is dead
                pool.fail_all(*w.doomed)
                w.doomed = None
            pool.note_lost(w, exitcode)
            pool.dispatch()
            pool.announce_finished()  # before starting a replacement, which takes a while
        w.release()

    def _expire(self, task_timeout: float | None) -> None:
        """Kill each worker whose pipe took in nothing of its outbox for the pool's
        ``write_stall_bound``, and the worker of each task that has run past
        ``task_timeout``; ``_reap`` fails the task once that worker is dead (so that it
        cannot still be running it)."""
        pool = self.pool
        now = time.monotonic()
        with pool.lock:
            if pool.closed:
                return
            pool.settle()  # a task answered already has not run past its deadline
            stall = pool.write_stall_bound()
            for w in pool.workers:
                task = w.queue[0] if w.queue else None
                overdue = task is not None and task.deadline is not None and task.deadline <= now
                if w.outbox and not w.dead and (overdue or now >= w.write_progress + stall):
                    # Its bytes have not all gone: it never ran the task, it is stuck.
                    self._kill_stalled(w, stall)
                    continue
                if task is None or task.deadline is None or task.deadline > now or task_timeout is None:
                    continue
                pool.requeue_unstarted(w)
                doomed = list(w.queue)
                w.queue.clear()
                w.dead = True
                w.timed_out = True
                pool.counters.tasks_timed_out += sum(1 for t in doomed if not t.cancelled)
                what, whose = pool.run_names(doomed)
                pool.event(w.pid, f"{what} ran past task_timeout ({task_timeout:g} s): killing the worker")
                w.doomed = (
                    doomed,
                    f"{whose} timed out after {task_timeout:g} s; its worker process "
                    f"(pid {w.pid}) was killed and is being replaced",
                )
                w.signal(signal.SIGKILL)
                # Its exit shows up on its pidfd; _reap then fails the task and has it replaced.
            pool.dispatch()

    def _kill_stalled(self, w: Worker, stall: float) -> None:
        """``w`` took in none of the bytes waiting for its pipe for ``stall`` seconds (lock
        held): kill it; its running task fails once it is dead, the others go back to pending."""
        pool = self.pool
        pool.requeue_unstarted(w)
        w.outbox.clear()
        w.dead = True
        w.stalled = True
        text = (
            f"its worker process (pid {w.pid}) took in none of the task's bytes for {stall:g} s "
            f"(its pipe did not drain: the process is stopped or stuck); it was killed and is being replaced"
        )
        doomed = [w.queue.popleft() for _ in range(pool.running_count(w))]
        if doomed:
            pool.event(w.pid, f"its pipe did not drain for {stall:g} s with task {doomed[0].key} to send: killing it")
            w.doomed = (doomed, f"the task could not be sent: {text}")
        w.signal(signal.SIGKILL)

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


def stop_all_pools() -> None:
    """The exit hook: stop every pool still running, so that no worker outlives us."""
    stop_all(Pool)


# Registered after multiprocessing.util's own exit hook, so (atexit being LIFO) our
# workers are stopped before multiprocessing would try to join them.
atexit.register(stop_all_pools)
