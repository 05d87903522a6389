"""Worker processes seen from the parent: a handle on each, starting them, waiting until
they are ready, and stopping them.

A worker is tracked by its own process, not by what ``multiprocessing`` says of it: with
"forkserver" the ``Process`` object learns of an exit from the forkserver's pipe, so a
killed forkserver makes every worker look dead (exit code 255) while it still runs. Where
the system has them (Linux 5.3+), each worker is watched through a pidfd, which becomes
readable only once that very process has exited, and is signalled through it (no pid
reuse race); elsewhere through its ``Process`` sentinel, checked against its pid.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ..lifeline import Lifeline, host_read_end
from ..protocol import STOP, STOP_GRACE_S, InitFailed, Ready, decode_report, encode_call, exit_text
from ..worker import WorkerSetup, worker_main

if TYPE_CHECKING:
    from ..core.slots import Slot
    from ..core.tasks import Task


class Worker:
    """One worker process, seen from the parent.

    ``queue`` holds the tasks sent to it, in order: a worker runs them one at a time in
    that order and answers each before reading the next, so ``queue[0]`` is the one it
    is running (or about to run) and the others have not started. With batching it holds
    one batch, sent as one message when the worker was free: all of it is running.
    """

    __slots__ = (
        "conn", "dead", "doomed", "eof", "failure", "forkserver_pid", "head_started", "init_timed_out",
        "outbox", "output_fds", "pid", "pidfd", "process", "queue", "ready", "slot", "stalled", "started",
        "timed_out", "write_progress",
    )  # fmt: skip

    def __init__(self, process: Any, conn: Any, output_fds: tuple[int, int] | None = None) -> None:
        self.process = process
        self.conn = conn
        self.output_fds = output_fds  # the read ends of its stdout and stderr pipes, until handed on
        self.pid: int = process.pid
        self.pidfd = open_pidfd(self.pid)
        self.forkserver_pid = _forkserver_pid() if process._popen.method == "forkserver" else None
        self.slot: Slot | None = None  # the pool's slot this worker fills
        self.ready = False  # reported Ready (its Engine is initialised)
        self.started = time.monotonic()  # when its process was started (for init_timeout)
        self.queue: deque[Task] = deque()
        self.head_started = 0.0  # when queue[0] was sent (or its predecessor answered)
        self.dead = False  # must not be given tasks (killed, broken pipe, exited)
        self.eof = False  # its pipe reported EOF: stop watching it
        self.timed_out = False
        self.failure: str | None = None  # its InitFailed traceback (Engine.initialize raised)
        self.init_timed_out = False  # killed for not being ready within init_timeout
        self.doomed: tuple[list[Task], str] | None = None  # the tasks it is killed for, failed once it is dead
        self.outbox: deque[memoryview] = deque()  # bytes for its pipe that it has not taken in yet
        self.write_progress = 0.0  # when its pipe last took in bytes (or the outbox filled)
        self.stalled = False  # killed because its pipe took in nothing of its outbox for too long

    def make_nonblocking(self) -> None:
        """From now on writes to its pipe never block (the pool's outbox keeps the rest),
        and reads are made only when it is readable. Called once it is ready."""
        os.set_blocking(self.conn.fileno(), False)

    def watch(self) -> Any:
        """What becomes readable once this worker's process has exited."""
        return self.process.sentinel if self.pidfd is None else self.pidfd

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this worker's process (not to whatever may reuse its pid)."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif self.process.exitcode is None or self.forkserver_pid is not None:
                os.kill(self.pid, signum)
        except (OSError, ValueError):
            pass  # exited already (or its handle is closed)

    def has_exited(self) -> bool:
        """True once this worker's process has exited; without a pidfd, once its sentinel
        says so and its pid is gone too."""
        if self.pidfd is not None:
            return bool(multiprocessing.connection.wait([self.pidfd], 0))
        try:
            if self.process.exitcode is None:
                return False
        except ValueError:  # closed
            return True
        return self.forkserver_pid is None or not pid_exists(self.pid)

    def exit_code(self) -> int | None:
        """The exit code, once it has exited (None: unknown, its forkserver is gone)."""
        try:
            # A child of ours is reaped at once; a forkserver's reports it on its pipe.
            self.process.join(1.0)
            code = self.process.exitcode
        except ValueError:
            return None
        if code == 255 and self.forkserver_pid is not None and not pid_exists(self.forkserver_pid):
            return None  # the status pipe's EOF, not an exit code
        return code

    def death_cause(self, exitcode: int | None, task_timeout: float | None, init_timeout: float | None) -> str:
        """How this worker died, in words, for stats and events."""
        how = f"exited with {exit_text(exitcode)}"
        if self.timed_out and task_timeout is not None:
            return f"{how}, killed because its task ran past task_timeout ({task_timeout:g} s)"
        if self.init_timed_out and init_timeout is not None:
            return f"{how}, killed because it was not ready within init_timeout ({init_timeout:g} s)"
        if self.stalled:
            return f"{how}, killed because its pipe did not drain"
        if self.failure is not None:
            return f"{how} after its engine failed to initialise"
        return how

    def release(self) -> None:
        """Close this worker's pipe end, pidfd and process handle (it has exited); never raises."""
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
            self.pidfd = None
        for close in (self.conn.close, self.process.close):
            try:
                close()
            except Exception:
                pass
        for fd in self.output_fds or ():
            try:
                os.close(fd)
            except OSError:
                pass
        self.output_fds = None

    def usable(self) -> bool:
        return self.ready and not self.dead


def open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or None (no pidfd on this system, or the process is gone:
    then its sentinel tells)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError:
        return None
    os.set_inheritable(fd, False)
    return fd


def pid_exists(pid: int) -> bool:
    """True if ``pid`` names a process that has not exited (a zombie has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]


def start_worker(ctx: Any, setup: WorkerSetup, inherited_fds: list[int] | None, engine: Any = None) -> Worker:
    """Start one worker process (not yet ready) in the ``multiprocessing`` context ``ctx``,
    its stdout and stderr going to two new pipes whose read ends are ``output_fds``.

    ``engine`` (with "fork" only, else None): an Engine built here that the child inherits
    and uses instead of building its own (``preload="engine"``).

    ``inherited_fds`` (with "fork", else None): the parent's descriptors that the child
    inherits and must close, so that it sees EOF when the parent goes away; the parent's
    end of the child's own pipe is added here. Raises on failure.
    """
    parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    writers = (Connection(out_write, readable=False), Connection(err_write, readable=False))
    close_fds = [] if inherited_fds is None else [*inherited_fds, parent_conn.fileno(), out_read, err_read]
    lifeline = Lifeline(host_read_end())
    process = ctx.Process(
        target=worker_main,
        args=(child_conn, setup, close_fds, writers, engine, lifeline),
        name="py4cc-worker",
        daemon=False,
    )
    try:
        process.start()
    except BaseException:
        parent_conn.close()
        os.close(out_read)
        os.close(err_read)
        raise
    finally:
        # Only the child may hold the write ends: its pipes end when it does.
        child_conn.close()
        for writer in writers:
            writer.close()
    return Worker(process, parent_conn, (out_read, err_read))


def wait_ready(
    workers: list[Worker], engine: str, init_timeout: float | None, start_stderr: Callable[[int], str]
) -> None:
    """Block until every worker has reported ready; raise RuntimeError if one fails
    or (``init_timeout``) is not ready within ``init_timeout`` seconds of its start.
    ``start_stderr(pid)``: what a worker that died before it reported wrote to stderr."""
    waiting = {w.conn: w for w in workers}
    exits = {w.watch(): w for w in workers}
    while waiting:
        timeout = None
        if init_timeout is not None:
            now = time.monotonic()
            late = [w for w in waiting.values() if now >= w.started + init_timeout and not w.conn.poll()]
            if late:
                pids = ", ".join(str(w.pid) for w in late)
                raise RuntimeError(
                    f"Driver.initialize: {len(late)} of {len(workers)} worker processes "
                    f"(pid {pids}) did not become ready within {init_timeout:g} s "
                    f"(init_timeout): the engine {engine!r} was not "
                    f"initialised yet; every worker process was stopped"
                )
            timeout = max(0.0, min(w.started for w in waiting.values()) + init_timeout - now)
        for obj in multiprocessing.connection.wait(list(waiting) + list(exits), timeout):
            if obj in waiting:
                w = waiting[obj]
                try:
                    report = decode_report(w.conn.recv_bytes())
                except (EOFError, OSError):
                    report = None
                if isinstance(report, Ready):
                    w.ready = True
                    del waiting[obj]
                    exits.pop(w.watch(), None)
                    continue
                if isinstance(report, InitFailed):
                    raise RuntimeError(
                        f"worker process (pid {w.pid}) failed to build and initialise the "
                        f"engine {engine!r}:\n{report.traceback}"
                    )
            elif obj in exits:
                w = exits[obj]
                if w.conn.poll():  # its last words may still be in the pipe
                    continue
            else:
                continue  # the exit of a worker that reported ready just now
            # Its pipe closed, or its process exited: whichever, it is dead once killed.
            w.signal(signal.SIGKILL)
            wait_exited([w], 5.0)
            raise RuntimeError(
                f"worker process (pid {w.pid}) exited before its engine "
                f"{engine!r} was ready, with {exit_text(w.exit_code())}" + last_stderr_text(start_stderr(w.pid))
            )


def last_stderr_text(stderr: str) -> str:
    """What a failed start's message adds for the last lines its worker wrote to stderr."""
    return f"; its last lines on stderr:\n{stderr}" if stderr else ""


def wait_exited(workers: list[Worker], timeout: float) -> None:
    """Block until every one of ``workers`` has exited, or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        running = [w for w in workers if not w.has_exited()]
        remaining = deadline - time.monotonic()
        if not running or remaining <= 0:
            return
        multiprocessing.connection.wait([w.watch() for w in running], min(remaining, 0.1))


def stop_workers(workers: list[Worker]) -> None:
    """Stop idle workers politely and busy ones at once; kill stragglers, by their own
    process whether or not their forkserver lives; release each. Never raises an
    Exception; may be called again on the same workers."""
    for w in workers:
        try:
            if not w.queue and w.ready and not w.dead:
                w.conn.send_bytes(encode_call(STOP))
            else:
                w.signal(signal.SIGTERM)
        except Exception:
            w.signal(signal.SIGTERM)
    try:
        wait_exited(workers, STOP_GRACE_S)
        stragglers = [w for w in workers if not w.has_exited()]
        for w in stragglers:
            w.signal(signal.SIGKILL)
        wait_exited(stragglers, 5.0)
    except Exception:
        pass
    for w in workers:
        if w.has_exited():
            w.exit_code()  # reap it, or read its forkserver's report
        w.release()
