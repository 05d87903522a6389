"""The lifeline: every worker process dies with the host process, however the host dies.

The host (the process that runs the Driver) creates one pipe and keeps its write end to
itself: nobody ever writes to it, and the kernel closes it when the host process ends,
by ``exit``, a crash or SIGKILL. Each worker gets the read end and arms it as the first
thing it does:

* On Linux the worker opens the pipe anew (its own open file description, through
  ``/proc/self/fd``) and asks the kernel for a signal when the pipe changes state
  (``O_ASYNC``), that signal being SIGKILL (``F_SETSIG``) and sent to itself
  (``F_SETOWN``). When the last write end closes, the kernel kills the worker at once:
  no thread, no Python code, no GIL is involved, so a worker stuck in a long C call that
  holds the GIL dies just the same. An Engine can close that descriptor (it is listed
  in ``/proc/self/fd``), which cancels the signal: so a daemon thread also checks, twice
  a second, that the host process is still there (same pid, same start time, not a
  zombie), and kills the worker when it is not. That check holds no descriptor to close.
* Elsewhere a daemon thread blocks on the pipe and kills its process on EOF; it needs the
  GIL to do so, so a worker inside a C call that holds it dies when that call returns.

Unlike ``prctl(PR_SET_PDEATHSIG)``, this follows the host *process*, not the thread that
forked the worker (a Rust thread that calls ``initialize`` and ends does not take the
workers with it), and a worker whose forkserver dies lives on (the host still needs it).

The forkserver process and multiprocessing's resource tracker need no lifeline: they
exit when every holder of their own pipes (the host and the workers) is gone. A forkserver
that py4cc started imports this module first (see :mod:`py4cc.local.forkserver`), and then removes
its socket and multiprocessing's ``pymp-*`` directory as it exits, which the host cannot
do when it dies (or when, embedded, it exits without finalizing its interpreter).

Only the host holds the write end: it is not inheritable (exec closes it) and is closed in
every child that ``os.fork`` makes (the "fork" start method among them). A child made by
a raw ``fork()`` outside Python keeps it, and the workers live as long as that child.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
from typing import Any

_F_SETSIG = 10
"""Linux's fcntl command that picks the signal O_ASYNC sends (``fcntl.F_SETSIG`` is not
exposed by every Python version)."""

_state_lock = threading.Lock()
_host: tuple[int, int, int] | None = None
"""``(owner pid, read end, write end)`` of this process's lifeline, made on first use."""


def host_read_end() -> int:
    """The read end of this process's lifeline (created on first use), to give to workers."""
    global _host
    with _state_lock:
        if _host is None or _host[0] != os.getpid():
            read_fd, write_fd = os.pipe()  # both close on exec
            _host = (os.getpid(), read_fd, write_fd)
        return _host[1]


def _close_write_end_in_child() -> None:
    """After ``os.fork``, in the child: the write end is the host's alone. (The read end
    stays open: a "fork" worker arms it; elsewhere it keeps nothing alive.)"""
    global _host
    if _host is not None:
        try:
            os.close(_host[2])
        except OSError:
            pass
        _host = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_write_end_in_child)


class Lifeline:
    """The read end of the host's lifeline, as a worker process receives it.

    Pickled for a "spawn" or "forkserver" child, it travels as a file descriptor passed to
    that child (``multiprocessing.reduction.DupFd``); a "fork" child inherits the number.
    """

    def __init__(self, fd: int, host_pid: int | None = None) -> None:
        self.fd = fd
        self.host_pid = os.getpid() if host_pid is None else host_pid

    def __reduce__(self) -> Any:
        from multiprocessing import reduction

        return _rebuild, (reduction.DupFd(self.fd), self.host_pid)


def _rebuild(dup: Any, host_pid: int) -> Lifeline:
    return Lifeline(dup.detach(), host_pid)


def arm(lifeline: Lifeline | None) -> str:
    """In a worker process: die when the host process dies. Returns how ("kernel",
    "thread" or "none"). If the host is gone already, does not return."""
    if lifeline is None:
        return "none"
    fd = lifeline.fd
    own = _kernel_watch(fd)
    how = "kernel"
    if own is None:
        own = os.dup(fd)
        how = "thread"
    try:
        os.close(fd)
    except OSError:
        pass
    os.set_blocking(own, False)
    try:
        gone = os.read(own, 1) == b""  # EOF: every write end closed before we armed
    except BlockingIOError:
        gone = False
    if gone:
        _die()
    if how == "thread":
        threading.Thread(target=_watch, args=(own,), name="py4cc-lifeline", daemon=True).start()
    else:
        started = _start_time(lifeline.host_pid)
        if started is not None:
            args = (lifeline.host_pid, started)
            threading.Thread(target=_watch_host, args=args, name="py4cc-lifeline-host", daemon=True).start()
    return how


def _kernel_watch(fd: int) -> int | None:
    """A new open file description of the pipe that SIGKILLs this process once the pipe
    has no writer left; None where the kernel cannot do that."""
    if not sys.platform.startswith("linux"):
        return None
    import fcntl

    try:
        own = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(own, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(own, getattr(fcntl, "F_SETSIG", _F_SETSIG), signal.SIGKILL)
        fcntl.fcntl(own, fcntl.F_SETFL, fcntl.fcntl(own, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError:
        os.close(own)
        return None
    return own


def _watch(fd: int) -> None:
    """The fallback watcher thread: block until EOF, then die."""
    import select

    while True:
        try:
            select.select([fd], [], [])
            if os.read(fd, 1) == b"":
                break
        except BlockingIOError:
            continue
        except OSError:
            break
    _die()


def _start_time(pid: int) -> int | None:
    """When the process ``pid`` started (in clock ticks since boot, from ``/proc``); None
    if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _watch_host(pid: int, started: int) -> None:
    """The check an Engine cannot close: die once the host process is no longer there (a
    reused pid has another start time)."""
    while _start_time(pid) == started:
        time.sleep(0.5)
    _die()


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    os._exit(1)  # pragma: no cover - SIGKILL cannot be caught


# -- in the forkserver ----------------------------------------------------------------


def _in_forkserver_main() -> bool:
    """True while ``multiprocessing.forkserver.main`` imports this module (its preload)."""
    module = sys.modules.get("multiprocessing.forkserver")
    code = getattr(getattr(module, "main", None), "__code__", None)
    frame: Any = sys._getframe()
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _remove_forkserver_files() -> None:
    """At the forkserver's exit: remove its socket, then its ``pymp-*`` directory if
    nothing else is in it."""
    from multiprocessing import forkserver

    address = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_address", None)
    if not isinstance(address, str) or not address or address[0] == "\0":
        return
    try:
        os.unlink(address)
    except OSError:
        pass
    directory = os.path.dirname(address)
    if os.path.basename(directory).startswith("pymp-"):
        try:
            os.rmdir(directory)
        except OSError:
            pass


if _in_forkserver_main():
    atexit.register(_remove_forkserver_files)
