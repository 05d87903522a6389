"""Worker processes seen from the parent: a handle on each, starting them, waiting until
they are ready, and stopping them."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .protocol import STOP, STOP_GRACE_S, InitFailed, Ready, decode_report, encode_call, exit_text
from .worker import WorkerSetup, worker_main

if TYPE_CHECKING:
    from .pool import Task


class Worker:
    """One worker process, seen from the parent.

    ``queue`` holds the tasks sent to it, in order: a worker runs them one at a time in
    that order and answers each before reading the next, so ``queue[0]`` is the one it
    is running (or about to run) and the others have not started.
    """

    __slots__ = (
        "conn", "dead", "eof", "head_started", "init_failed", "init_timed_out", "output_fds", "pid", "process",
        "queue", "ready", "started", "timed_out",
    )  # fmt: skip

    def __init__(self, process: Any, conn: Any, output_fds: tuple[int, int] | None = None) -> None:
        self.process = process
        self.conn = conn
        self.output_fds = output_fds  # the read ends of its stdout and stderr pipes, until handed on
        self.pid: int = process.pid
        self.ready = False  # reported Ready (its Engine is initialised)
        self.started = time.monotonic()  # when its process was started (for init_timeout)
        self.queue: deque[Task] = deque()
        self.head_started = 0.0  # when queue[0] was sent (or its predecessor answered)
        self.dead = False  # must not be given tasks (killed, broken pipe, exited)
        self.eof = False  # its pipe reported EOF: stop watching it
        self.timed_out = False
        self.init_failed = False  # reported InitFailed (its Engine.initialize raised)
        self.init_timed_out = False  # killed for not being ready within init_timeout

    def release(self) -> None:
        """Close this worker's pipe end and process handle (it has exited); never raises."""
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
    args: tuple[Any, ...] = (child_conn, setup, close_fds, writers)
    if engine is not None:
        args += (engine,)
    process = ctx.Process(target=worker_main, args=args, name="py4cc-worker", daemon=False)
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


def wait_ready(workers: list[Worker], engine: str, init_timeout: float | None) -> None:
    """Block until every worker has reported ready; raise RuntimeError if one fails
    or (``init_timeout``) is not ready within ``init_timeout`` seconds of its start."""
    waiting = {w.conn: w for w in workers}
    sentinels = {w.process.sentinel: w for w in workers}
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
        for obj in multiprocessing.connection.wait(list(waiting) + list(sentinels), timeout):
            if obj in waiting:
                w = waiting[obj]
                try:
                    report = decode_report(w.conn.recv_bytes())
                except (EOFError, OSError):
                    report = None
                if isinstance(report, Ready):
                    w.ready = True
                    del waiting[obj]
                    sentinels.pop(w.process.sentinel, None)
                    continue
                if isinstance(report, InitFailed):
                    raise RuntimeError(
                        f"worker process (pid {w.pid}) failed to build and initialise the "
                        f"engine {engine!r}:\n{report.traceback}"
                    )
            elif obj in sentinels:
                w = sentinels[obj]
                if w.conn.poll():  # its last words may still be in the pipe
                    continue
            else:
                continue  # the sentinel of a worker that reported ready just now
            w.process.join(5)
            raise RuntimeError(
                f"worker process (pid {w.pid}) exited before its engine "
                f"{engine!r} was ready, with {exit_text(w.process.exitcode)}"
            )


def stop_workers(workers: list[Worker]) -> None:
    """Stop idle workers politely and busy ones at once; kill stragglers; join all; release
    each. Never raises an Exception; may be called again on the same workers."""
    for w in workers:
        try:
            if not w.queue and w.ready and not w.dead:
                w.conn.send_bytes(encode_call(STOP))
            else:
                w.process.terminate()
        except Exception:
            try:
                w.process.terminate()
            except Exception:
                pass
    deadline = time.monotonic() + STOP_GRACE_S
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
