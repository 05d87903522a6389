"""The forkserver and preloading: what pools leave in the host process besides their
workers (the forkserver, and the ``pymp-*`` temporary directory that ``multiprocessing``
makes for its socket), and what the host loads for its workers before they start.

``multiprocessing`` removes that directory in an exit hook that an embedding host never
runs (rs4py never finalizes its interpreter), and keeps one forkserver per process for
ever. So when py4cc started the forkserver, it owns it:

* it adds :mod:`py4cc.lifeline` to the forkserver's preloaded modules, which makes the
  forkserver remove its socket and the directory as it exits, whenever that is (its host
  gone, however it went);
* it starts it with this process's ``sys.path`` (CPython 3.11-3.13 pass it to the
  forkserver and ignore it there): the forkserver would otherwise import ``py4cc`` from its
  working directory (``''`` leads its ``sys.path``), ``PYTHONPATH`` or site-packages, and
  fork every worker with that copy already imported (:func:`_start_with_host_sys_path`);
* when the last pool using it stops (every Driver finalized or dropped), it stops the
  forkserver and removes the directory, unless some other process started through the
  forkserver (not a py4cc worker) still runs. The next pool starts a new one.

A forkserver started by someone else (the host's own code, before any pool) is left alone.

Preloading (:func:`preload`): the parent loads the Engine before its workers start, so that
they inherit it. An Engine's module often imports heavy libraries (numpy, scikit-learn: a second or more),
and its ``initialize`` may load a model. Each worker does that again, unless it inherits the
work from the process it is forked from:

* ``"module"`` with ``fork``: this process imports the Engine's module once; every worker
  (replacements too) is forked with it imported, sharing its pages until they are written.
* ``"engine"`` with ``fork``: this process also builds and initialises one Engine (with the
  Driver's config and extra arguments); every worker uses its inherited copy and does not
  call ``initialize`` at all. The Engine lives here until the Driver is finalized.
* ``"module"`` or ``"engine"`` with ``forkserver``: the module is added to the fork server's
  preload list (``multiprocessing``'s ``set_forkserver_preload``), so the fork server
  imports it once and forks workers with it imported. The fork server is shared by every
  Driver of the process and reads that list when it starts, so this takes effect only if it
  is not running yet (the first forkserver Driver of the process); each worker still builds
  its own Engine, the fork server knowing nothing of this Driver's config.
* ``spawn`` inherits nothing: ``preload`` is refused (ValueError at ``initialize``).

Caveats: the parent then holds the module (and, for ``"engine"``, the model) in its own
memory for as long as the Driver runs; a library that starts threads when imported (BLAS
thread pools) or in ``initialize`` has done so in the parent before the fork, and only the
forking thread exists in the child (``worker_env``, set in a worker before it imports the
module, comes too late for a module imported here: variables such as ``OMP_NUM_THREADS`` must
then be in this process's environment when it starts); and Python 3.12+ warns about forking
a process that runs threads, as ``fork`` always does here.
"""

from __future__ import annotations

import importlib
import multiprocessing.forkserver
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from typing import Any

from ..worker import WorkerSetup, build_engine

PRELOAD = "py4cc.lifeline"
"""The module a forkserver that py4cc starts imports first."""

_lock = threading.Lock()
_users = 0
"""How many pools that use the forkserver are running."""
_owned = False
"""True while the forkserver was started by py4cc (and not stopped since)."""
_addresses: set[str] = set()
"""The sockets of py4cc's forkservers, a killed one's among them (its restart leaves it)."""

_FORKSERVER_COMMAND = "from multiprocessing.forkserver import main"
"""How the ``-c`` command that starts a forkserver begins (``ForkServer.ensure_running``)."""
_spawnv_passfds = multiprocessing.util.spawnv_passfds


def _start_with_host_sys_path(path: Any, args: list[Any], passfds: Any) -> int:
    """``multiprocessing.util.spawnv_passfds``, which starts the forkserver (and the resource
    tracker), with one change while py4cc owns the forkserver: the forkserver's command first
    sets its ``sys.path`` to this process's, so that it preloads and forks with the same
    modules, the embedded py4cc among them, as this process would import."""
    if _owned:
        prefix = f"import sys; sys.path[:] = {list(sys.path)!r}; "
        args = [prefix + arg if isinstance(arg, str) and arg.startswith(_FORKSERVER_COMMAND) else arg for arg in args]
    pid: int = _spawnv_passfds(path, args, passfds)
    return pid


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
            multiprocessing.util.spawnv_passfds = _start_with_host_sys_path  # type: ignore[assignment]


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


def preload(setup: WorkerSetup, start_method: str, what: str | None) -> Any:
    """Do what ``what`` asks before the first worker starts (see the module docstring).
    Returns the Engine the workers inherit (``"engine"`` with ``fork``), else None. Raises
    what importing the module, or building and initialising the Engine, raises."""
    if what is None:
        return None
    module_name = setup.engine.partition(":")[0]
    if start_method == "forkserver":
        add_to_forkserver_preload(module_name)
        return None
    importlib.import_module(module_name)
    if what == "engine":
        return build_engine(setup)
    return None


def add_to_forkserver_preload(module_name: str) -> None:
    """Add ``module_name`` to the modules the fork server imports when it starts, keeping
    those already listed (``__main__`` by default)."""
    server = multiprocessing.forkserver._forkserver
    listed = list(getattr(server, "_preload_modules", ["__main__"]))
    if module_name not in listed:
        multiprocessing.forkserver.set_forkserver_preload([*listed, module_name])
