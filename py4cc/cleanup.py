"""What pools leave in the host process besides their workers: the forkserver, and the
``pymp-*`` temporary directory that ``multiprocessing`` makes for its socket.

``multiprocessing`` removes that directory in an exit hook that an embedding host never
runs (rs4py never finalizes its interpreter), and keeps one forkserver per process for
ever. So when py4cc started the forkserver, it owns it:

* it adds :mod:`py4cc.lifeline` to the forkserver's preloaded modules, which makes the
  forkserver remove its socket and the directory as it exits, whenever that is (its host
  gone, however it went);
* when the last pool using it stops (every Driver finalized or dropped), it stops the
  forkserver and removes the directory, unless some other process started through the
  forkserver (not a py4cc worker) still runs. The next pool starts a new one.

A forkserver started by someone else (the host's own code, before any pool) is left alone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

PRELOAD = "py4cc.lifeline"
"""The module a forkserver that py4cc starts imports first."""

_lock = threading.Lock()
_users = 0
"""How many pools that use the forkserver are running."""
_owned = False
"""True while the forkserver was started by py4cc (and not stopped since)."""
_addresses: set[str] = set()
"""The sockets of py4cc's forkservers, a killed one's among them (its restart leaves it)."""


def acquire_forkserver() -> None:
    """A pool with the "forkserver" start method is starting: if no forkserver runs,
    the one about to start is py4cc's."""
    global _users, _owned
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    with _lock:
        _users += 1
        if server._forkserver_pid is None and not _owned:
            modules = list(server._preload_modules)
            if PRELOAD not in modules:
                server.set_forkserver_preload([*modules, PRELOAD])
            _owned = True


def note_forkserver() -> None:
    """A worker was started through the forkserver: remember its socket, if py4cc's."""
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    address = server._forkserver_address
    if _owned and isinstance(address, str) and address not in _addresses:
        with _lock:
            _addresses.add(address)


def release_forkserver() -> None:
    """A pool that used the forkserver has stopped (its workers are gone): if it was the
    last one and the forkserver is py4cc's, stop it and remove the temporary directory."""
    global _users, _owned
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    with _lock:
        _users -= 1
        if _users > 0 or not _owned or _others_use_forkserver():
            return
        with server._lock:
            pid = server._forkserver_pid
            if pid is not None:
                _stop_forkserver(server, pid)
            for address in _addresses:
                _unlink_socket(address)
            _addresses.clear()
            _remove_temp_dir()
        _owned = False


def _others_use_forkserver() -> bool:
    """True if a process started through the forkserver by this process still runs."""
    import multiprocessing

    for process in multiprocessing.active_children():
        if getattr(getattr(process, "_popen", None), "method", None) == "forkserver":
            return True
    return False


def _stop_forkserver(server: Any, pid: int) -> None:
    """Close the forkserver's "alive" pipe (it exits on EOF), reap it, remove its socket;
    called with its lock held."""
    alive_fd = server._forkserver_alive_fd
    address = server._forkserver_address
    server._forkserver_alive_fd = None
    server._forkserver_pid = None
    server._forkserver_address = None
    try:
        os.close(alive_fd)
    except (OSError, TypeError):
        pass
    deadline = time.monotonic() + 5.0
    try:
        while os.waitpid(pid, os.WNOHANG)[0] == 0:
            if time.monotonic() > deadline:  # cannot happen with its users gone; be sure
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.005)
    except OSError:
        pass  # reaped already
    _unlink_socket(address)


def _unlink_socket(address: object) -> None:
    if isinstance(address, str) and address and address[0] != "\0":
        try:
            os.unlink(address)
        except OSError:
            pass  # the forkserver removed it as it exited


def _remove_temp_dir() -> None:
    """Remove ``multiprocessing``'s temporary directory if it is empty, and forget it (a
    later forkserver makes a new one); its own exit hook has nothing left to do."""
    from multiprocessing import process, util

    config = process.current_process()._config  # type: ignore[attr-defined]
    tempdir = config.get("tempdir")
    if not tempdir:
        return
    try:
        os.rmdir(tempdir)
    except FileNotFoundError:
        pass
    except OSError:
        return  # something else lives there: multiprocessing's exit hook removes it
    config["tempdir"] = None
    for finalizer in list(util._finalizer_registry.values()):  # type: ignore[attr-defined]
        if tempdir in (getattr(finalizer, "_args", None) or ()):
            finalizer.cancel()
