"""The py4cc pool driver: runs an Engine in a pool of worker processes.

Protocol (every call may come from any thread, concurrently)::

    d = Driver(max_tasks=64, n_subprocesses=0, start_method="forkserver",
               engine="py4cc.engine:Engine", task_timeout=None, init_timeout=None)
    d.initialize(config_json, float_feature_names, str_feature_names, **extra)

    d.submit(float_features, str_features, int_feature) -> (flag, key, message)
        0  accepted; come back with ``key`` (a positive int, unique among held tasks)
        1  at capacity (``max_tasks`` tasks held, finished-not-retrieved ones included):
           "Model engine is working at capacity. Try again later."; key 0
        9  error (not initialised, finalized, wrong number of features, wrong type...);
           the message names the cause; key 0

    d.retrieve(key) -> (flag, value, message)
        0  done; ``value > 0`` is the model's answer; the task is removed
        1  "The requested task is not finished"; value 0; the task is kept
        2  the model failed or answered ``value <= 0``, its worker died, or the task
           timed out; ``message`` holds the traceback or the cause; the task is removed
        9  error (unknown key: never issued, already retrieved, ``<= 0``, not an int);
           value 0; nothing changes

    d.wait(key, timeout) -> (flag, value, message)
        blocks up to ``timeout`` seconds until the task is finished, then answers
        exactly as ``retrieve`` does (flag 1 if it is still not finished)

    d.finalize()
        stops the pool; safe to call twice; afterwards submit answers flag 9
        ("... finalized ...")

Only ``initialize`` ever raises; every other failure comes back as a flag and a message.

How it works: ``initialize`` starts N worker processes (``multiprocessing`` context of
``start_method``), each with its own duplex pipe; each builds the Engine and reports
ready. A dispatcher thread in this process waits (``multiprocessing.connection.wait``,
no polling) on the pipes, the process sentinels and a wake-up pipe; it collects
answers and hands queued tasks to workers (``submit`` hands a task straight to an idle
worker itself). Because the driver knows which tasks each worker holds, a worker
that dies or overruns ``task_timeout`` fails exactly its running task (flag 2), the
tasks queued behind it go back to the queue, and a replacement worker is started.
If a replacement cannot be started or cannot initialise its Engine (or, with
``init_timeout``, does not become ready in time) and no worker is left, queued tasks
fail (flag 2) and ``submit`` answers flag 9 saying why.

With ``start_method="fork"`` replacement workers are forked from a process that runs
threads (the dispatcher, the caller's); Python 3.12+ warns about that
(DeprecationWarning), and it is as safe as ``fork`` is in a threaded program: prefer
``forkserver`` (the default) or ``spawn``.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.util  # imported before our atexit hook so that ours runs first
import numbers
import os
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "Driver",
    "OK",
    "NOT_FINISHED",
    "AT_CAPACITY",
    "FAILED",
    "ERROR",
    "CAPACITY_MESSAGE",
    "NOT_FINISHED_MESSAGE",
    "MAX_WORKERS",
]

OK = 0
"""submit: accepted. retrieve/wait: done, value > 0."""
AT_CAPACITY = 1
"""submit: ``max_tasks`` tasks held."""
NOT_FINISHED = 1
"""retrieve/wait: the task is not finished yet (it is kept)."""
FAILED = 2
"""retrieve/wait: the model failed, its worker died, or it timed out (it is removed)."""
ERROR = 9
"""any call: a usage error; the message says what."""

CAPACITY_MESSAGE = "Model engine is working at capacity. Try again later."
NOT_FINISHED_MESSAGE = "The requested task is not finished"

DEFAULT_ENGINE = "py4cc.engine:Engine"

# Messages between the parent and a worker process.
_MSG_READY = "ready"  # worker -> parent: (READY, pid)
_MSG_INIT_FAILED = "init-failed"  # worker -> parent: (INIT_FAILED, traceback text)
_MSG_RESULT = "result"  # worker -> parent: (RESULT, key, flag, value, message)
# parent -> worker: (key, float_features, str_features, int_feature), or None to stop.

MAX_WORKERS = 1024
"""The most worker processes one Driver starts."""

_STOP_GRACE_S = 1.0
"""How long finalize waits for idle workers to exit before killing them."""

_STARTUP_RETRIES = 3
"""How many replacement workers in a row may die before they are ready (killed, crashed,
killed for overrunning ``init_timeout``, without reporting an Engine failure) and still be
replaced; past that the pool gives up on that slot. A replacement whose Engine.initialize
raises is never retried."""

_PREFETCH_BYTES = 32 * 1024
"""At most this many (estimated) bytes of tasks wait in a busy worker's pipe. Tasks are
sent with the lock held; a send into a full pipe would block until the worker reads, that
is for the rest of its current task, or for ever if that task hangs (and the dispatcher,
needing the lock, could then never enforce task_timeout). A Linux socket pair holds about
208 KiB by default; a larger task waits for an idle worker instead."""


def _wire_size(payload: tuple) -> int:
    """A generous estimate of the kernel memory one task message takes in a pipe."""
    floats, strs, n = payload
    data = 64 + 9 * len(floats) + n.bit_length() // 8
    for s in strs:
        data += 8 + (len(s) if s.isascii() else 4 * len(s))
    return 2 * data + 1024


# --------------------------------------------------------------------------- worker side


def _load_engine_class(engine: str) -> Any:
    module_name, _, class_name = engine.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in class_name.split("."):
        obj = getattr(obj, part)
    return obj


def _short_repr(value: Any) -> str:
    """repr(value), cut at 200 characters; never raises."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise; so may a huge int's
        text = f"<repr() raised {type(exc).__name__}>"
    if len(text) > 200:
        text = text[:200] + "..."
    return text


def _describe(value: Any) -> str:
    return f"{_short_repr(value)} (type {type(value).__name__})"


def _run_task(engine: Any, key: int, ff: list, sf: list, n: int) -> tuple:
    """Run one task in the worker; answers a RESULT message, never raises."""
    try:
        answer = engine.run(float_features=ff, str_features=sf, int_feature=n)
    except BaseException:  # a user's run may raise anything, even SystemExit
        return (_MSG_RESULT, key, FAILED, -1, traceback.format_exc())
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return (
            _MSG_RESULT, key, FAILED, -1,
            f"Engine.run must return a (value: int, message: str) pair; it returned {_describe(answer)}",
        )
    value, message = answer
    if not isinstance(value, int) or isinstance(value, bool):
        return (
            _MSG_RESULT, key, FAILED, -1,
            f"Engine.run must return a (value: int, message: str) pair; its value was {_describe(value)}",
        )
    if not isinstance(message, str):
        return (
            _MSG_RESULT, key, FAILED, -1,
            f"Engine.run must return a (value: int, message: str) pair; its message was {_describe(message)}",
        )
    if value > 0:
        return (_MSG_RESULT, key, OK, int(value), str(message))
    if not message:
        message = f"the model answered {value} (a value <= 0 means the model failed)"
    return (_MSG_RESULT, key, FAILED, int(value), str(message))


def _worker_main(
    conn: Any,
    engine: str,
    config: Any,
    float_names: List[str],
    str_names: List[str],
    extra: Dict[str, Any],
    close_fds: List[int],
) -> None:
    """Body of one worker process: build the Engine, report ready, then serve tasks."""
    # With "fork" the child inherits the parent's ends of every worker pipe; closing
    # them lets this worker see EOF (and exit) when the parent goes away.
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    # Ctrl-C reaches the whole process group: the parent decides when workers stop.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    try:
        cls = _load_engine_class(engine)
        obj = cls()
        obj.initialize(
            config=config,
            float_feature_names=list(float_names),
            str_feature_names=list(str_names),
            **extra,
        )
    except BaseException:
        try:
            conn.send((_MSG_INIT_FAILED, traceback.format_exc()))
        except Exception:
            pass
        return
    try:
        conn.send((_MSG_READY, os.getpid()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            key, ff, sf, n = msg
            try:
                answer = _run_task(obj, key, ff, sf, n)
            except Exception:  # checking a strange answer failed: fail the task, not the worker
                answer = (_MSG_RESULT, key, FAILED, -1,
                          "the engine's answer could not be checked:\n" + traceback.format_exc())
            conn.send(answer)
    except (EOFError, OSError):
        return  # the parent has gone away


# --------------------------------------------------------------------------- parent side


class _Task:
    __slots__ = ("key", "payload", "size", "done", "flag", "value", "message", "event", "worker",
                 "deadline")

    def __init__(self, key: int, payload: tuple, size: int) -> None:
        self.key = key
        self.payload = payload
        self.size = size  # _wire_size(payload)
        self.done = False
        self.flag = NOT_FINISHED
        self.value = 0
        self.message = NOT_FINISHED_MESSAGE
        self.event: Optional[threading.Event] = None
        self.worker: Optional[_Worker] = None
        self.deadline: Optional[float] = None


class _Worker:
    """One worker process, seen from the parent.

    ``queue`` holds the tasks sent to it, in order: a worker runs them one at a time in
    that order and answers each before reading the next, so ``queue[0]`` is the one it
    is running (or about to run) and the others have not started.
    """

    __slots__ = ("process", "conn", "pid", "ready", "started", "queue", "head_started", "dead",
                 "eof", "timed_out", "init_failed", "init_timed_out")

    def __init__(self, process: Any, conn: Any) -> None:
        self.process = process
        self.conn = conn
        self.pid: int = process.pid
        self.ready = False  # reported READY (its Engine is initialised)
        self.started = time.monotonic()  # when its process was started (for init_timeout)
        self.queue: Deque[_Task] = deque()
        self.head_started = 0.0  # when queue[0] was sent (or its predecessor answered)
        self.dead = False  # must not be given tasks (killed, broken pipe, exited)
        self.eof = False  # its pipe reported EOF: stop watching it
        self.timed_out = False
        self.init_failed = False  # reported INIT_FAILED (its Engine.initialize raised)
        self.init_timed_out = False  # killed for not being ready within init_timeout

    def release(self) -> None:
        """Close this worker's pipe end and process handle (it has exited); never raises."""
        for close in (self.conn.close, self.process.close):
            try:
                close()
            except Exception:
                pass

    def usable(self) -> bool:
        return self.ready and not self.dead


def _exit_text(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "an unknown exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"exit code {exitcode} (killed by {name})"
    return f"exit code {exitcode}"


class _Pool:
    """Everything the dispatcher thread and the finalizers need; holds no Driver ref."""

    def __init__(self, ctx: Any, start_method: str, n_workers: int, max_tasks: int,
                 task_timeout: Optional[float], init_timeout: Optional[float], prefetch: int,
                 worker_args: tuple) -> None:
        self.ctx = ctx
        self.prefetch = prefetch
        self.avg_run_s: Optional[float] = None  # moving average of task run times
        self.start_method = start_method
        self.n_workers = n_workers
        self.max_tasks = max_tasks
        self.task_timeout = task_timeout
        self.init_timeout = init_timeout
        self.worker_args = worker_args  # (engine, config, float_names, str_names, extra)
        self.lock = threading.Lock()
        self.shutdown_lock = threading.Lock()
        self.tasks: Dict[int, _Task] = {}
        self.pending: Deque[_Task] = deque()
        self.workers: List[_Worker] = []
        self.next_key = 1
        self.closed = False  # finalize has begun: refuse new tasks
        self.finished = False  # finalize has completed
        self.broken: Optional[str] = None  # no worker can be started any more
        self.startup_deaths = 0  # replacements in a row that died before they were ready
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.wake_pending = False
        self.thread: Optional[threading.Thread] = None
        self.owner_pid = os.getpid()  # a forked copy of this process must not stop the workers

    # -- workers ------------------------------------------------------------------

    def start_worker(self) -> _Worker:
        """Start one worker process (not yet ready). Raises on failure."""
        parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
        close_fds: List[int] = []
        if self.start_method == "fork":
            with self.lock:
                close_fds = [w.conn.fileno() for w in self.workers if not w.conn.closed]
            close_fds += [parent_conn.fileno(), self.wake_r, self.wake_w]
        process = self.ctx.Process(
            target=_worker_main,
            args=(child_conn,) + self.worker_args + (close_fds,),
            name="py4cc-worker",
            daemon=False,
        )
        try:
            process.start()
        except BaseException:
            parent_conn.close()
            child_conn.close()
            raise
        child_conn.close()
        return _Worker(process, parent_conn)

    def wait_ready(self, workers: List[_Worker]) -> None:
        """Block until every worker has reported ready; raise RuntimeError if one fails
        or (``init_timeout``) is not ready within ``init_timeout`` seconds of its start."""
        waiting = {w.conn: w for w in workers}
        sentinels = {w.process.sentinel: w for w in workers}
        while waiting:
            timeout = None
            if self.init_timeout is not None:
                now = time.monotonic()
                late = [w for w in waiting.values()
                        if now >= w.started + self.init_timeout and not w.conn.poll()]
                if late:
                    pids = ", ".join(str(w.pid) for w in late)
                    raise RuntimeError(
                        f"Driver.initialize: {len(late)} of {len(workers)} worker processes "
                        f"(pid {pids}) did not become ready within {self.init_timeout:g} s "
                        f"(init_timeout): the engine {self.worker_args[0]!r} was not "
                        f"initialised yet; every worker process was stopped"
                    )
                timeout = max(0.0, min(w.started for w in waiting.values())
                              + self.init_timeout - now)
            ready = multiprocessing.connection.wait(list(waiting) + list(sentinels), timeout)
            for obj in ready:
                if obj in waiting:
                    w = waiting[obj]
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        msg = None
                    if msg is not None and msg[0] == _MSG_READY:
                        w.ready = True
                        del waiting[obj]
                        sentinels.pop(w.process.sentinel, None)
                        continue
                    if msg is not None and msg[0] == _MSG_INIT_FAILED:
                        raise RuntimeError(
                            f"worker process (pid {w.pid}) failed to build and initialise the "
                            f"engine {self.worker_args[0]!r}:\n{msg[1]}"
                        )
                    w.process.join(5)
                    raise RuntimeError(
                        f"worker process (pid {w.pid}) exited before its engine "
                        f"{self.worker_args[0]!r} was ready, with {_exit_text(w.process.exitcode)}"
                    )
                if obj in sentinels:
                    w = sentinels[obj]
                    if w.conn.poll():  # its last words may still be in the pipe
                        continue
                    w.process.join(5)
                    raise RuntimeError(
                        f"worker process (pid {w.pid}) exited before its engine "
                        f"{self.worker_args[0]!r} was ready, with {_exit_text(w.process.exitcode)}"
                    )

    # -- tasks (all called with self.lock held) --------------------------------------

    def complete(self, task: _Task, flag: int, value: int, message: str) -> None:
        if task.done:
            return
        task.done = True
        task.flag = flag
        task.value = value
        task.message = message
        task.worker = None
        task.deadline = None
        task.payload = None
        if task.event is not None:
            task.event.set()

    def assign(self, worker: _Worker, task: _Task) -> bool:
        """Send ``task`` to ``worker``; False (task untouched) if the pipe is broken."""
        try:
            worker.conn.send((task.key,) + task.payload)
        except (OSError, ValueError):
            worker.dead = True
            return False
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            self.start_head(worker, time.monotonic())
        return True

    def start_head(self, worker: _Worker, now: float) -> None:
        """``worker.queue[0]`` starts (about) now: note it, and set its deadline."""
        worker.head_started = now
        if self.task_timeout is not None:
            worker.queue[0].deadline = now + self.task_timeout

    def note_run_time(self, seconds: float) -> None:
        if self.avg_run_s is None:
            self.avg_run_s = seconds
        else:
            self.avg_run_s += 0.1 * (seconds - self.avg_run_s)

    def prefetch_target(self, now: float, task: _Task) -> Optional[_Worker]:
        """The busy worker that should get ``task`` queued behind its current one.

        Only workers holding at most ``prefetch`` tasks qualify, whose pipe keeps room
        for ``task`` (``_PREFETCH_BYTES``), and not one whose current task has already
        run much longer than usual (it may be a long one: a task queued behind it could
        not move to a worker that frees up sooner). Among the rest, the one whose
        current task started first.
        """
        if not self.prefetch:
            return None
        typical = self.avg_run_s if self.avg_run_s is not None else 0.0
        limit = max(0.002, 4.0 * typical)
        best = None
        for w in self.workers:
            if not w.usable() or not w.queue or len(w.queue) > self.prefetch:
                continue
            if now - w.head_started > limit:
                continue
            if sum(t.size for t in itertools.islice(w.queue, 1, None)) + task.size > _PREFETCH_BYTES:
                continue
            if best is None or w.head_started < best.head_started:
                best = w
        return best

    def dispatch(self) -> bool:
        """Give pending tasks to workers, oldest task first: to an idle worker if there
        is one, else (``prefetch`` > 0) queued behind a busy worker's current task, so that
        it starts without a round trip through this process. Returns True if a task
        started (so the dispatcher must learn a new deadline). Once finalize has begun
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
        return started and self.task_timeout is not None

    def requeue_unstarted(self, w: _Worker) -> None:
        """Put the tasks queued behind ``w``'s running one back at the head of pending."""
        while len(w.queue) > 1:
            task = w.queue.pop()
            task.worker = None
            task.deadline = None
            self.pending.appendleft(task)

    def wake(self) -> None:
        """Wake the dispatcher thread (called with self.lock held)."""
        if self.wake_pending:
            return
        self.wake_pending = True
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def fail_all_pending(self, message: str) -> None:
        while self.pending:
            self.complete(self.pending.popleft(), FAILED, -1, message)

    # -- the dispatcher thread ---------------------------------------------------------

    def run_dispatcher(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException:  # pragma: no cover - a bug; do not leave waiters hanging
            text = traceback.format_exc()
            with self.lock:
                self.broken = f"the driver's dispatcher thread crashed:\n{text}"
                for task in list(self.tasks.values()):
                    self.complete(task, FAILED, -1, self.broken)
                self.pending.clear()

    def _dispatch_loop(self) -> None:
        while True:
            with self.lock:
                if self.closed:
                    return
                watch: Dict[Any, Tuple[str, _Worker]] = {}
                for w in self.workers:
                    if not w.eof:
                        watch[w.conn] = ("conn", w)
                    watch[w.process.sentinel] = ("exit", w)
                timeout = None
                deadlines: List[float] = []
                if self.task_timeout is not None:
                    deadlines = [w.queue[0].deadline for w in self.workers
                                 if w.queue and w.queue[0].deadline is not None]
                if self.init_timeout is not None:
                    deadlines += [w.started + self.init_timeout for w in self.workers
                                  if not w.ready and not w.dead]
                if deadlines:
                    timeout = max(0.0, min(deadlines) - time.monotonic())
            ready = multiprocessing.connection.wait([self.wake_r] + list(watch), timeout)
            exited: List[_Worker] = []
            for obj in ready:
                if isinstance(obj, int) and obj == self.wake_r:
                    # Drain first, then clear the flag: clearing first would let a wake()
                    # in between write a byte that this read swallows, leaving the flag
                    # set with the pipe empty, and every later wake() a no-op.
                    try:
                        os.read(self.wake_r, 4096)
                    except OSError:
                        pass
                    with self.lock:
                        self.wake_pending = False
                    continue
                kind, w = watch[obj]
                if kind == "conn":
                    self._read_worker(w)
                else:
                    exited.append(w)
            for w in exited:
                self._reap(w)
            if self.task_timeout is not None:
                self._expire()
            if self.init_timeout is not None:
                self._expire_startup()

    def _read_worker(self, w: _Worker) -> None:
        while True:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError, ValueError):
                w.eof = True
                with self.lock:
                    w.dead = True
                return
            except Exception:  # an unpicklable message: treat as a broken worker
                w.eof = True
                with self.lock:
                    w.dead = True
                    if w.queue and not self.closed:
                        self.requeue_unstarted(w)
                        self.complete(w.queue.popleft(), FAILED, -1,
                                      "the worker's answer could not be read:\n" + traceback.format_exc())
                try:
                    w.process.kill()
                except Exception:
                    pass
                return
            with self.lock:
                if self.closed:
                    return  # finalize has begun (and failed every unfinished task)
                if msg[0] == _MSG_READY:
                    if not w.init_timed_out:  # too late: it has been killed already
                        w.ready = True
                        self.startup_deaths = 0
                elif msg[0] == _MSG_RESULT:
                    _, key, flag, value, message = msg
                    if w.queue and w.queue[0].key == key:
                        now = time.monotonic()
                        self.note_run_time(now - w.head_started)
                        self.complete(w.queue.popleft(), flag, value, message)
                        if w.queue:
                            self.start_head(w, now)
                elif msg[0] == _MSG_INIT_FAILED:
                    w.dead = True
                    w.init_failed = True
                    self.note_replacement_failure(
                        f"a replacement worker process (pid {w.pid}) failed to initialise "
                        f"its engine:\n{msg[1]}")
                self.dispatch()

    def _reap(self, w: _Worker) -> None:
        """A worker process has exited: fail its task, drop it, start a replacement."""
        # Read whatever it managed to send before it exited.
        if not w.eof:
            self._read_worker(w)
        try:
            w.process.join(1.0)
        except Exception:
            pass
        exitcode = w.process.exitcode
        with self.lock:
            if self.closed:
                # finalize has begun: it failed every unfinished task (those queued behind
                # this worker's running one must not be queued again: their payload is
                # gone) and stops the workers it finds in self.workers, this one included.
                w.dead = True
                return
            was_ready = w.ready
            w.dead = True
            if w in self.workers:
                self.workers.remove(w)
            self.requeue_unstarted(w)
            if w.queue:
                self.complete(
                    w.queue.popleft(), FAILED, -1,
                    f"the worker process (pid {w.pid}) running this task died with "
                    f"{_exit_text(exitcode)}; it is being replaced",
                )
            retry = False
            if not was_ready and not w.init_failed:
                # Killed or crashed while starting (an Engine failure was noted already):
                # try again, unless it keeps happening.
                self.startup_deaths += 1
                if self.startup_deaths <= _STARTUP_RETRIES:
                    retry = True
                elif w.init_timed_out:
                    self.note_replacement_failure(
                        f"replacement worker processes could not start within the "
                        f"{self.init_timeout:g} s start-up limit (init_timeout): the last one "
                        f"(pid {w.pid}) did not become ready in time and was killed "
                        f"({self.startup_deaths} in a row)")
                else:
                    self.note_replacement_failure(
                        f"a replacement worker process (pid {w.pid}) exited before it was "
                        f"ready, with {_exit_text(exitcode)} ({self.startup_deaths} in a row)")
            replace = not self.closed and (was_ready or retry)
            self.dispatch()
        w.release()
        if replace:
            self._replace()

    def _replace(self) -> None:
        try:
            new = self.start_worker()
        except Exception:
            with self.lock:
                self.note_replacement_failure(
                    "a replacement worker process could not be started:\n" + traceback.format_exc())
            return
        stop = False
        with self.lock:
            if self.closed:
                stop = True
            else:
                self.workers.append(new)
        if stop:
            _stop_workers([new])

    def note_replacement_failure(self, message: str) -> None:
        """Called with the lock held; if no usable worker is left, the pool is broken."""
        alive = [w for w in self.workers if not w.dead]
        if not alive:
            self.broken = message
            self.fail_all_pending(f"no worker process is left to run this task: {message}")

    def _expire(self) -> None:
        now = time.monotonic()
        with self.lock:
            if self.closed:
                return
            for w in self.workers:
                task = w.queue[0] if w.queue else None
                if task is None or task.deadline is None or task.deadline > now:
                    continue
                self.requeue_unstarted(w)
                w.queue.clear()
                w.dead = True
                w.timed_out = True
                self.complete(
                    task, FAILED, -1,
                    f"the task timed out after {self.task_timeout:g} s; its worker process "
                    f"(pid {w.pid}) was killed and is being replaced",
                )
                try:
                    w.process.kill()
                except Exception:
                    pass
                # Its exit shows up on its sentinel; _reap then starts the replacement.
            self.dispatch()

    def _expire_startup(self) -> None:
        """Kill the replacement workers not ready within ``init_timeout`` of their start;
        ``_reap`` then counts each as a failed start (and retries, up to a point)."""
        now = time.monotonic()
        with self.lock:
            if self.closed:
                return
            for w in self.workers:
                if w.ready or w.dead or now < w.started + self.init_timeout:
                    continue
                w.dead = True
                w.init_timed_out = True
                try:
                    w.process.kill()
                except Exception:
                    pass
                # Its exit shows up on its sentinel; _reap then decides on a replacement.

    # -- shutdown -------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop everything; never raises; safe to call many times and from many threads.

        Does nothing in a forked child of the process that started the pool (its exit
        hook, a collected Driver, or finalize there): the workers are not its own.
        """
        if os.getpid() != self.owner_pid:
            return
        try:
            self._shutdown()
        except Exception:
            pass

    def _shutdown(self) -> None:
        with self.shutdown_lock:
            if self.finished:
                return
            with self.lock:
                self.closed = True
                for task in self.tasks.values():
                    if not task.done:
                        self.complete(task, FAILED, -1,
                                      "the driver was finalized before this task finished")
                self.pending.clear()
                self.wake()
            thread = self.thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(10.0)
            with self.lock:
                workers = list(self.workers)
                self.workers.clear()
            _stop_workers(workers)
            for fd in (self.wake_r, self.wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.finished = True
            _LIVE_POOLS.discard(self)


def _stop_workers(workers: List[_Worker]) -> None:
    """Stop idle workers politely and busy ones at once; kill stragglers; join all."""
    for w in workers:
        try:
            if not w.queue and w.ready and not w.dead:
                w.conn.send(None)
            else:
                w.process.terminate()
        except Exception:
            try:
                w.process.terminate()
            except Exception:
                pass
    deadline = time.monotonic() + _STOP_GRACE_S
    for w in workers:
        try:
            w.process.join(max(0.0, deadline - time.monotonic()))
        except Exception:
            pass
    for w in workers:
        try:
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join(5.0)
        except Exception:
            pass
        w.release()


_LIVE_POOLS: "set[_Pool]" = set()


def _collect_pool(pool: _Pool) -> None:
    """The Driver's garbage-collection finalizer.

    A collection runs it on whichever thread allocates, possibly the dispatcher while it
    holds ``pool.lock`` (a Driver in a reference cycle): shutting down right there would
    deadlock on that lock, so the dispatcher hands the work to a new thread. If a
    shutdown is already under way (e.g. the exit hook's, on this very thread), it is left
    to finish.
    """
    if pool.shutdown_lock.locked():
        return
    if threading.current_thread() is pool.thread:
        try:
            threading.Thread(target=pool.shutdown, name="py4cc-collect", daemon=True).start()
        except RuntimeError:
            pass  # interpreter shutting down: the exit hook stops the pool
        return
    pool.shutdown()


def _shutdown_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.shutdown()


# Registered after multiprocessing.util's own exit hook, so (atexit being LIFO) our
# workers are stopped before multiprocessing would try to join them.
atexit.register(_shutdown_all_pools)


# --------------------------------------------------------------------------- the Driver


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Driver:
    """Runs an Engine (``"module:Class"``) in a pool of worker processes.

    Flag protocol (see the module docstring for the full table):

    * ``submit(float_features, str_features, int_feature) -> (flag, key, message)``:
      0 accepted (``key`` > 0), 1 at capacity (``CAPACITY_MESSAGE``), 9 error.
    * ``retrieve(key) -> (flag, value, message)``: 0 done (``value`` > 0; removed),
      1 not finished (``NOT_FINISHED_MESSAGE``; kept), 2 failed (message holds the
      traceback or the cause; removed; ``value`` is the model's value if it answered
      one, else -1), 9 error such as an unknown key (value 0; nothing changes).
    * ``wait(key, timeout) -> (flag, value, message)``: like ``retrieve`` after blocking
      up to ``timeout`` seconds for the task to finish. ``timeout`` None (or +inf) waits
      until the task finishes or the driver is finalized; ``timeout <= 0`` (or NaN) does
      not block at all. Other threads keep submitting and retrieving meanwhile.
    * ``finalize()``: stops the pool. Tasks not finished by then answer flag 2 ("the
      driver was finalized before this task finished"); tasks already finished keep
      their answers; each can still be retrieved once. Afterwards ``submit`` answers
      flag 9 ("... finalized ...").

    ``worker_pids()`` lists the pids of the current worker processes (for tests and
    monitoring); ``held_tasks()`` counts the tasks held; ``n_workers`` is the resolved
    worker count. Only ``initialize`` raises; all other methods answer flags. Every
    method is thread-safe; an internal lock is held only briefly and never while
    ``wait`` blocks. A task whose worker process dies, or which runs past
    ``task_timeout`` seconds (measured from when a worker starts it; its worker is then
    killed), answers flag 2 with a message saying so, and a replacement worker is
    started.

    ``init_timeout`` (seconds, None = no limit) bounds how long a worker process may take
    from its start until its Engine is initialised and it reports ready. ``initialize``
    then raises RuntimeError ("... did not become ready within N s (init_timeout) ...")
    after stopping every worker it started, instead of hanging. A replacement worker not
    ready in time is killed and counts as a failed start: it is retried like one that
    crashed while starting (up to 3 times in a row); past that, if no worker is left,
    queued tasks answer flag 2 and ``submit`` flag 9, both saying that the workers could
    not start within the limit. Without it a hanging ``Engine.initialize`` blocks
    ``initialize`` (and a ``finalize`` from another thread) for ever, and a replacement
    that hangs keeps its slot, not ready, for ever.

    The Driver is a context manager; it is also finalized when garbage collected or at
    interpreter exit, so no worker process is left behind.
    """

    def __init__(
        self,
        max_tasks: int = 64,
        n_subprocesses: int = 0,
        start_method: str = "forkserver",
        engine: str = DEFAULT_ENGINE,
        task_timeout: Optional[float] = None,
        init_timeout: Optional[float] = None,
        *,
        prefetch: int = 1,
    ) -> None:
        """Store the options; nothing is checked or started until ``initialize``.

        ``prefetch`` (keyword only, >= 0): how many tasks may wait in a busy worker's
        pipe behind the one it runs, so that it starts the next one without a round trip
        through the parent. 1 (the default) removes that gap from the throughput; 0
        hands a task only to an idle worker (best when tasks are long and uneven:
        a prefetched task cannot move to another worker that frees up sooner).
        """
        self.max_tasks = max_tasks
        self.n_subprocesses = n_subprocesses
        self.start_method = start_method
        self.engine = engine
        self.task_timeout = task_timeout
        self.init_timeout = init_timeout
        self.prefetch = prefetch
        self.float_feature_names: List[str] = []
        self.str_feature_names: List[str] = []
        self.config: Any = None
        self.n_workers = 0
        """The resolved number of worker processes (set by ``initialize``)."""
        self._pool: Optional[_Pool] = None
        self._state_lock = threading.Lock()
        self._finalized = False
        self._finalizer: Optional[weakref.finalize] = None

    # -- lifecycle ------------------------------------------------------------------

    def initialize(
        self,
        config_json: Any,
        float_feature_names: Sequence[str],
        str_feature_names: Sequence[str],
        **extra: Any,
    ) -> "Driver":
        """Parse the JSON config, start the workers, and wait until all are ready.

        Each worker builds ``Class()`` from ``engine`` and calls ``initialize(config=
        <parsed config>, float_feature_names=[...], str_feature_names=[...], **extra)``.
        Returns ``self``. Raises ValueError (bad JSON, start method, engine name or
        option), TypeError (feature names not lists of str), ImportError (engine module
        not found), RuntimeError (called twice or after finalize; a worker failed to
        start or to initialise its Engine: the message carries its traceback; a worker
        was not ready within ``init_timeout`` seconds). When it raises, every worker
        process it started has been stopped.
        """
        with self._state_lock:
            if self._finalized:
                raise RuntimeError("Driver.initialize: the driver is finalized; create a new Driver")
            if self._pool is not None:
                raise RuntimeError("Driver.initialize: the driver is already initialized")
            config = self._parse_config(config_json)
            float_names = self._check_names("float_feature_names", float_feature_names)
            str_names = self._check_names("str_feature_names", str_feature_names)
            start_method = self._check_start_method(self.start_method)
            max_tasks = self._check_int_at_least("max_tasks", self.max_tasks, 1)
            n_workers = self._check_workers(self.n_subprocesses)
            task_timeout = self._check_timeout("task_timeout", self.task_timeout)
            init_timeout = self._check_timeout("init_timeout", self.init_timeout)
            prefetch = self._check_int_at_least("prefetch", self.prefetch, 0)
            engine = self._check_engine(self.engine)
            ctx = multiprocessing.get_context(start_method)
            pool = _Pool(ctx, start_method, n_workers, max_tasks, task_timeout, init_timeout,
                         prefetch, (engine, config, float_names, str_names, dict(extra)))
            _LIVE_POOLS.add(pool)
            try:
                workers: List[_Worker] = []
                try:
                    for _ in range(n_workers):
                        w = pool.start_worker()
                        workers.append(w)
                        with pool.lock:
                            pool.workers.append(w)
                except Exception as exc:
                    raise RuntimeError(
                        f"Driver.initialize: could not start a worker process "
                        f"(start method {start_method!r}): {type(exc).__name__}: {exc}"
                    ) from exc
                pool.wait_ready(workers)
            except BaseException:
                pool.shutdown()
                raise
            pool.thread = threading.Thread(
                target=pool.run_dispatcher, name="py4cc-dispatcher", daemon=True)
            pool.thread.start()
            self.config = config
            self.float_feature_names = float_names
            self.str_feature_names = str_names
            self.n_workers = n_workers
            self._pool = pool
            self._finalizer = weakref.finalize(self, _collect_pool, pool)
            self._finalizer.atexit = False  # the module's own exit hook covers that case
            return self

    def finalize(self) -> None:
        """Stop the dispatcher and every worker (terminate, join, kill stragglers).

        Safe to call twice and from any thread; never raises. Unfinished tasks answer
        flag 2; finished ones keep their answers until retrieved. Later submits answer
        flag 9 with a message containing "finalized".
        """
        try:
            with self._state_lock:
                self._finalized = True
                pool = self._pool
            if pool is not None:
                pool.shutdown()
        except Exception:
            pass

    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finalize()

    def __repr__(self) -> str:
        state = "finalized" if self._finalized else ("running" if self._pool else "new")
        return (f"Driver(max_tasks={self.max_tasks!r}, n_subprocesses={self.n_subprocesses!r}, "
                f"start_method={self.start_method!r}, engine={self.engine!r}, "
                f"task_timeout={self.task_timeout!r}, init_timeout={self.init_timeout!r}) "
                f"<{state}>")

    # -- the protocol -----------------------------------------------------------------

    def submit(self, float_features: Sequence[float], str_features: Sequence[str],
               int_feature: int) -> Tuple[int, int, str]:
        """Queue one task: ``(0, key, "")``, ``(1, 0, CAPACITY_MESSAGE)`` or ``(9, 0, why)``."""
        try:
            return self._submit(float_features, str_features, int_feature)
        except Exception as exc:  # pragma: no cover - defensive: never raise
            return ERROR, 0, f"submit failed unexpectedly: {type(exc).__name__}: {exc}"

    def retrieve(self, key: int) -> Tuple[int, int, str]:
        """Answer for ``key``: flag 0 / 2 (task removed), 1 (kept) or 9 (nothing changes)."""
        try:
            return self._retrieve(key)
        except Exception as exc:  # pragma: no cover - defensive: never raise
            return ERROR, 0, f"retrieve failed unexpectedly: {type(exc).__name__}: {exc}"

    def wait(self, key: int, timeout: Optional[float] = None) -> Tuple[int, int, str]:
        """Block up to ``timeout`` seconds for ``key`` to finish, then answer as ``retrieve``.

        ``timeout=None`` or ``+inf``: no limit (returns when the task finishes or the
        driver is finalized). ``timeout <= 0`` or NaN: do not block. A timeout that is
        not a number answers flag 9. The driver's lock is not held while blocking.
        """
        try:
            return self._wait(key, timeout)
        except Exception as exc:  # pragma: no cover - defensive: never raise
            return ERROR, 0, f"wait failed unexpectedly: {type(exc).__name__}: {exc}"

    def worker_pids(self) -> List[int]:
        """The pids of the current worker processes (empty before initialize / after finalize).

        A worker that was killed or timed out stays listed until the driver notices
        its exit and replaces it.
        """
        pool = self._pool
        if pool is None:
            return []
        with pool.lock:
            return [w.pid for w in pool.workers]

    def held_tasks(self) -> int:
        """How many tasks the driver holds (queued, running, or finished not retrieved)."""
        pool = self._pool
        if pool is None:
            return 0
        with pool.lock:
            return len(pool.tasks)

    # -- internals --------------------------------------------------------------------

    def _submit(self, float_features: Any, str_features: Any, int_feature: Any) -> Tuple[int, int, str]:
        pool = self._pool
        if pool is None:
            if self._finalized:
                return ERROR, 0, "the driver is finalized; submit is no longer accepted"
            return ERROR, 0, "the driver is not initialized; call initialize() first"
        if pool.closed:
            return ERROR, 0, "the driver is finalized; submit is no longer accepted"
        problem, payload = self._validate(float_features, str_features, int_feature)
        if problem is not None:
            return ERROR, 0, problem
        size = _wire_size(payload)
        with pool.lock:
            if pool.closed:
                return ERROR, 0, "the driver is finalized; submit is no longer accepted"
            if pool.broken is not None:
                return ERROR, 0, f"the driver has no working worker process: {pool.broken}"
            if len(pool.tasks) >= pool.max_tasks:
                return AT_CAPACITY, 0, CAPACITY_MESSAGE
            key = pool.next_key
            pool.next_key += 1
            task = _Task(key, payload, size)
            pool.tasks[key] = task
            pool.pending.append(task)
            if pool.dispatch():
                pool.wake()  # the dispatcher must learn the new deadline
            return OK, key, ""

    def _validate(self, float_features: Any, str_features: Any,
                  int_feature: Any) -> Tuple[Optional[str], Any]:
        if not isinstance(float_features, (list, tuple)):
            return (f"float_features must be a list of floats, got {_describe(float_features)}", None)
        if not isinstance(str_features, (list, tuple)):
            return (f"str_features must be a list of str, got {_describe(str_features)}", None)
        n_float = len(self.float_feature_names)
        if len(float_features) != n_float:
            return (f"wrong number of float features: expected {n_float} "
                    f"({', '.join(self.float_feature_names)}), got {len(float_features)}", None)
        n_str = len(self.str_feature_names)
        if len(str_features) != n_str:
            return (f"wrong number of str features: expected {n_str} "
                    f"({', '.join(self.str_feature_names)}), got {len(str_features)}", None)
        floats: List[float] = []
        for i, v in enumerate(float_features):
            if not _is_real(v):
                return (f"float feature {i} ({self.float_feature_names[i]}) must be a real "
                        f"number, got {_describe(v)}", None)
            try:
                floats.append(float(v))
            except (OverflowError, ValueError, TypeError) as exc:
                return (f"float feature {i} ({self.float_feature_names[i]}) cannot be "
                        f"converted to float: {exc}", None)
        strs: List[str] = []
        for i, s in enumerate(str_features):
            if not isinstance(s, str):
                return (f"str feature {i} ({self.str_feature_names[i]}) must be a str, "
                        f"got {_describe(s)}", None)
            strs.append(str(s))
        if not _is_int(int_feature):
            return (f"int_feature must be an int, got {_describe(int_feature)}", None)
        return None, (floats, strs, int(int_feature))

    def _lookup_error(self, key: Any) -> str:
        return (f"unknown key {_short_repr(key)}: it was never issued, was already retrieved, "
                f"or is not a positive int")

    def _retrieve(self, key: Any) -> Tuple[int, int, str]:
        pool = self._pool
        if pool is None:
            if self._finalized:
                return ERROR, 0, f"unknown key {_short_repr(key)}: the driver is finalized and holds no tasks"
            return ERROR, 0, f"unknown key {_short_repr(key)}: the driver is not initialized"
        if not _is_int(key) or key <= 0:
            return ERROR, 0, self._lookup_error(key)
        with pool.lock:
            return self._answer(pool, int(key))

    def _answer(self, pool: _Pool, key: int) -> Tuple[int, int, str]:
        """The retrieve answer for ``key``; called with pool.lock held."""
        task = pool.tasks.get(key)
        if task is None:
            return ERROR, 0, self._lookup_error(key)
        if not task.done:
            return NOT_FINISHED, 0, NOT_FINISHED_MESSAGE
        del pool.tasks[key]
        return task.flag, task.value, task.message

    def _wait(self, key: Any, timeout: Any) -> Tuple[int, int, str]:
        pool = self._pool
        if pool is None or not _is_int(key) or key <= 0:
            return self._retrieve(key)
        if timeout is not None and not _is_real(timeout):
            return ERROR, 0, f"wait: timeout must be a number of seconds or None, got {_describe(timeout)}"
        limit: Optional[float]
        if timeout is None:
            limit = None
        else:
            try:
                limit = float(timeout)
            except OverflowError:  # an int beyond float's range: no limit, or none at all
                limit = math.inf if timeout > 0 else -math.inf
            if math.isnan(limit) or limit <= 0:
                return self._retrieve(key)
            if math.isinf(limit):
                limit = None
        key = int(key)
        with pool.lock:
            task = pool.tasks.get(key)
            if task is None or task.done:
                return self._answer(pool, key)
            if task.event is None:
                task.event = threading.Event()
            event = task.event
        if limit is None:
            while not event.wait(threading.TIMEOUT_MAX):
                pass
        else:
            event.wait(min(limit, threading.TIMEOUT_MAX))
        with pool.lock:
            return self._answer(pool, key)

    # -- option checks (initialize only) --------------------------------------------------

    @staticmethod
    def _parse_config(config_json: Any) -> Any:
        if not isinstance(config_json, (str, bytes, bytearray)):
            raise TypeError(f"config_json must be a JSON text (str), got {_describe(config_json)}")
        try:
            return json.loads(config_json)
        except ValueError as exc:
            raise ValueError(f"config_json is not valid JSON: {exc}") from None

    @staticmethod
    def _check_names(what: str, names: Any) -> List[str]:
        if not isinstance(names, (list, tuple)):
            raise TypeError(f"{what} must be a list of str, got {_describe(names)}")
        for i, name in enumerate(names):
            if not isinstance(name, str):
                raise TypeError(f"{what}[{i}] must be a str, got {_describe(name)}")
        return [str(n) for n in names]

    @staticmethod
    def _check_start_method(method: Any) -> str:
        valid = multiprocessing.get_all_start_methods()
        if not isinstance(method, str) or method not in valid:
            raise ValueError(f"start_method must be one of {', '.join(map(repr, valid))}; got {method!r}")
        return method

    @staticmethod
    def _check_int_at_least(name: str, value: Any, minimum: int) -> int:
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, got {_short_repr(value)}")
        return int(value)

    @staticmethod
    def _check_workers(value: Any) -> int:
        if not _is_int(value):
            raise ValueError(f"n_subprocesses must be an int (<= 0 means one per CPU), got {value!r}")
        value = int(value)
        if value > MAX_WORKERS:
            # A typo (or usize::MAX from Rust) would otherwise fork until the system refuses.
            raise ValueError(f"n_subprocesses must be at most {MAX_WORKERS}, got {_short_repr(value)}")
        if value <= 0:
            value = os.cpu_count() or 1
        return value

    @staticmethod
    def _check_timeout(name: str, value: Any) -> Optional[float]:
        if value is None:
            return None
        problem = ValueError(f"{name} must be None or a positive, finite number of seconds, "
                             f"got {_short_repr(value)}")
        if not _is_real(value):
            raise problem
        try:
            seconds = float(value)
        except (OverflowError, ValueError, TypeError):  # e.g. an int beyond float's range
            raise problem from None
        if not (seconds > 0) or math.isinf(seconds):
            raise problem
        return seconds

    @staticmethod
    def _check_engine(engine: Any) -> str:
        if not isinstance(engine, str):
            raise ValueError(f"engine must be a 'module:Class' string, got {_describe(engine)}")
        module_name, sep, class_name = engine.partition(":")
        parts_ok = all(p.isidentifier() for p in module_name.split(".")) and all(
            p.isidentifier() for p in class_name.split("."))
        if not sep or ":" in class_name or not parts_ok:
            raise ValueError(f"engine must be named 'module:Class' (e.g. {DEFAULT_ENGINE!r}), got {engine!r}")
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError) as exc:
            raise ImportError(f"engine module {module_name!r} cannot be imported: {exc}") from exc
        if spec is None:
            raise ImportError(f"engine module {module_name!r} was not found on sys.path")
        return engine
