"""The Ray backend's link to the cluster: importing Ray, connecting (once per process),
what the actors are started with, and how to tell that the connection is gone.

Nothing here runs unless a Driver chooses ``backend="ray"``; :mod:`py4cc.ray.backend` is the
backend itself. The few Ray internals used (the upload of ``py_modules`` for one actor, the
GCS client that answers whether a node is alive, the stream of the workers' output lines)
are each used in one function here, which says what it does when they are missing.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import sysconfig
import threading
from typing import Any, Callable

CONNECT_TIMEOUT_S = 5.0
"""How long ``initialize`` tries to open a TCP connection to the cluster's address."""
GCS_CHECK_TIMEOUT_S = 10.0
"""How long ``initialize`` waits for the address to answer as a Ray cluster (``ray.init``
itself would retry for many minutes)."""
PROBE_TIMEOUT_S = 2.0
"""How long one question to the cluster (is this process's node alive?) may take."""


def import_ray() -> Any:
    """The ``ray`` module, or ImportError naming the interpreter to install it into."""
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(
            f"Driver.initialize: backend='ray' needs the ray package, which this Python "
            f"({sys.executable}) cannot import ({exc}); install it into that interpreter: "
            f"{sys.executable} -m pip install ray (the version the cluster runs)"
        ) from exc


# -- the process's connection to Ray ------------------------------------------------------


class Connection:
    """This process's connection to Ray, shared by its Ray-backed Drivers (``ray.init`` is
    once per process). The first Driver connects (or starts a local instance); the last one
    to stop disconnects, unless the program had connected before any Driver did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.owned = False  # ray.init was ours: ray.shutdown is ours too
        self.where = ""
        self.exit_hook = False
        self.on_exit: Callable[[], None] | None = None  # stops the backends, before Ray's own exit hook

    def acquire(self, ray: Any, address: str | None, n_cpus: int) -> str:
        """Connect (once), count one more user; answer where: "the Ray cluster at X" or "a
        local Ray instance". Raises RuntimeError when the cluster cannot be reached."""
        with self.lock:
            if ray.is_initialized():
                current = gcs_address(ray)
                if address not in (None, "auto") and not same_address(address, current):
                    raise RuntimeError(
                        f"Driver.initialize: this process is already connected to the Ray cluster at "
                        f"{current}, not {address}: a process talks to one Ray cluster"
                    )
                if self.users == 0:
                    self.where = f"the Ray cluster at {current}"
                self.users += 1
                return self.where
            if address is not None and address != "auto":
                check_reachable(ray, address)
            try:
                with host_signals_kept():
                    # Ray's INFO lines ("Connecting to existing Ray cluster...", uploads)
                    # would go to the host's stderr at every start: warnings only.
                    quiet = {"logging_level": logging.WARNING}
                    if address is None:
                        # "local": a new instance, even if RAY_ADDRESS or a `ray start` on
                        # this machine names another cluster.
                        ray.init(address="local", num_cpus=n_cpus or None, include_dashboard=False, **quiet)
                    else:
                        ray.init(address=address, **quiet)
            except Exception as exc:
                try:
                    ray.shutdown()
                except Exception:
                    pass
                what = "start a local Ray instance" if address is None else f"connect to the Ray cluster at {address}"
                raise RuntimeError(f"Driver.initialize: could not {what}: {type(exc).__name__}: {exc}") from exc
            self.owned = True
            self.users = 1
            self.where = "a local Ray instance" if address is None else f"the Ray cluster at {gcs_address(ray)}"
            if not self.exit_hook and self.on_exit is not None:
                # Registered after ray.init registered its own: atexit runs ours first.
                atexit.register(self.on_exit)
                self.exit_hook = True
            return self.where

    def release(self, ray: Any) -> None:
        """One user fewer; the last one disconnects (and stops a local instance) if ours."""
        with self.lock:
            self.users = max(0, self.users - 1)
            if self.users or not self.owned:
                return
            self.owned = False
            try:
                ray.shutdown()
            except Exception:
                pass


CONNECTION = Connection()


class host_signals_kept:
    """Puts back the SIGTERM handler that ``ray.init`` replaces when called from the main
    thread: the Driver must not change how the host program reacts to signals."""

    def __enter__(self) -> None:
        self.saved: Any = None
        if threading.current_thread() is threading.main_thread():
            self.saved = signal.getsignal(signal.SIGTERM)

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            try:
                signal.signal(signal.SIGTERM, self.saved)
            except (ValueError, OSError, TypeError):
                pass


def gcs_address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return "?"


def split_address(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``"host:port"`` (or ``"[v6]:port"``), else None."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def same_address(a: str, b: str) -> bool:
    pa, pb = split_address(a), split_address(b)
    if pa is None or pb is None:
        return a == b
    if pa[1] != pb[1]:
        return False
    try:
        return socket.gethostbyname(pa[0]) == socket.gethostbyname(pb[0])
    except OSError:
        return pa[0] == pb[0]


def check_reachable(ray: Any, address: str) -> None:
    """Raise RuntimeError unless ``address`` answers as a Ray cluster, within seconds:
    ``ray.init`` itself would retry for many minutes."""
    if address.startswith("ray://"):
        raise RuntimeError(
            f"Driver.initialize: {address!r} is a Ray Client address, which the Ray backend does not "
            f"use: give the cluster's GCS address ('host:port', port 6379 by default) and run this "
            f"program on a node of the cluster"
        )
    parts = split_address(address)
    if parts is None:
        raise RuntimeError(f"Driver.initialize: the Ray address {address!r} is not 'host:port' (or 'auto')")
    try:
        socket.create_connection(parts, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise RuntimeError(
            f"Driver.initialize: cannot reach the Ray cluster at {address}: {exc} (is its head node "
            f"running? `ray start --head` starts one)"
        ) from exc
    try:
        inner = importlib.import_module("ray._raylet").InnerGcsClient
    except (ImportError, AttributeError):
        return  # another Ray version: let ray.init find out
    # Ray's client waits about 10 s more than the timeout it is given (two 5 s connection
    # attempts of its own): it runs on a daemon thread, and this waits GCS_CHECK_TIMEOUT_S.
    failure: list[BaseException] = []
    answered = threading.Event()

    def ask() -> None:
        try:
            inner.standalone(address, None, int(GCS_CHECK_TIMEOUT_S * 1000))
        except BaseException as exc:
            failure.append(exc)
        answered.set()

    threading.Thread(target=ask, name="py4cc-ray-gcs-check", daemon=True).start()
    if not answered.wait(GCS_CHECK_TIMEOUT_S):
        raise RuntimeError(
            f"Driver.initialize: {address} accepts connections but did not answer as a Ray cluster "
            f"within {GCS_CHECK_TIMEOUT_S:g} s"
        )
    if failure:
        raise RuntimeError(
            f"Driver.initialize: {address} accepts connections but did not answer as a Ray cluster: "
            f"{type(failure[0]).__name__}: {failure[0]}"
        ) from failure[0]


# -- what the actors are started with --------------------------------------------------------


def modules_to_ship(engine: str) -> list[str]:
    """The paths for the actors' ``py_modules``: the py4cc package, and the Engine's
    top-level module or package unless it is py4cc's, installed (site-packages) or the
    standard library's (the cluster has those already, or must)."""
    py4cc_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # py4cc/ray/.. is py4cc
    paths = [py4cc_dir]
    top = engine.partition(":")[0].split(".")[0]
    if top == "py4cc":
        return paths
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return paths
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        if len(locations) != 1:
            return paths  # a namespace package spread over directories: not shippable as one
        path = os.path.abspath(locations[0])
    else:
        path = os.path.abspath(spec.origin)
        if not path.endswith(".py"):
            return paths  # an extension module: it must be installed on the nodes
    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    if any(path.startswith(os.path.abspath(d) + os.sep) for d in installed if d):
        return paths
    return [*paths, path]


def build_runtime_env(ray: Any, engine: str, env_vars: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The actors' runtime environment: py4cc and the Engine's module (uploaded to the
    cluster: a runtime environment given to one actor must name packages the cluster
    holds, not paths), and ``worker_env`` as its environment variables."""
    env: dict[str, Any] = {"py_modules": modules_to_ship(engine)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    try:
        upload = importlib.import_module("ray._private.runtime_env.py_modules").upload_py_modules_if_needed
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(
            f"Driver.initialize: this Ray ({getattr(ray, '__version__', '?')}) does not offer the "
            f"upload of py_modules that the Ray backend uses to ship py4cc and the Engine: {exc}"
        ) from exc
    result: dict[str, Any] = upload(env, include_gitignore=False)
    return result


def death_reason(exc: BaseException) -> str:
    """Ray's explanation of an actor's death, on one line (its field lines left out)."""
    try:
        text = str(exc)
    except Exception:
        text = type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("\t")]
    reason = " ".join(lines) or type(exc).__name__
    return reason if len(reason) <= 600 else reason[:600] + "..."


def when_done(ref: Any, callback: Callable[[Any], object]) -> None:
    """Call ``callback(outcome)`` on Ray's I/O thread once the call behind ``ref`` has ended:
    ``outcome`` is its value, or the exception that ended it. Through ``_on_completed`` where
    this Ray has it (what ``ref.future()`` is built on, without a ``concurrent.futures.Future``
    and its locks per call: 793 -> 697 µs of host CPU per task in one pair of runs of
    the loopback bench), else through the public ``future()``."""
    on_completed = getattr(ref, "_on_completed", None)
    if on_completed is not None:
        on_completed(callback)
        return

    def settled(future: Any) -> None:
        try:
            outcome = future.result()
        except BaseException as exc:
            outcome = exc
        callback(outcome)

    ref.future().add_done_callback(settled)


def node_checker(ray: Any) -> Any:
    """A function answering whether this process's node is alive (raising if the cluster
    does not answer within PROBE_TIMEOUT_S), or None if this Ray offers no way to ask."""
    try:
        worker = importlib.import_module("ray._private.worker").global_worker
        node_id = importlib.import_module("ray._raylet").NodeID.from_hex(ray.get_runtime_context().get_node_id())
        client = worker.gcs_client
    except Exception:
        return None

    def check() -> bool:
        return bool(client.check_alive([node_id], timeout=PROBE_TIMEOUT_S)[0])

    return check


RAY_PRINTER = "ray_print_logs"
"""The name of Ray's own handler of its output stream, which prints every line to stderr."""


class LogTap:
    """Hands the output lines of some Ray workers (by pid) to ``deliver(pid, stream, line)``,
    from Ray's stream of worker output to this process (on when ``ray.init`` had
    ``log_to_driver``, its default).

    With ``own_all`` (this process's connection is py4cc's), Ray's own printer of that
    stream is removed, and so is its printing of the cluster's error messages (the raylet's
    "A worker died...", which Ray's error thread prints through ``print_to_stdstream``):
    every line (those, the raylet's ``[state-dump]``, other workers' output) is handed on
    too, under pid 0 and led by its source, instead of going to the host's stderr."""

    def __init__(self, deliver: Callable[[int, str, str], None]) -> None:
        self.deliver = deliver
        self.own_all = False
        self.printer: tuple[Any, Any] | None = None  # (Ray's worker module, its own print_to_stdstream)
        self.pids: frozenset[int] = frozenset()  # replaced, never changed: read without a lock
        self.name = f"py4cc-output-{id(self)}"
        self.dispatcher: Any = None

    def start(self, own_all: bool) -> None:
        try:
            dispatcher = importlib.import_module("ray._private.ray_logging").global_worker_stdstream_dispatcher
            dispatcher.add_handler(self.name, self.on_batch)
        except Exception:
            return  # another Ray version: the lines stay in Ray's own output only
        self.dispatcher = dispatcher
        if own_all:
            try:
                dispatcher.remove_handler(RAY_PRINTER)
                worker_module: Any = importlib.import_module("ray._private.worker")
                self.printer = (worker_module, worker_module.print_to_stdstream)
                worker_module.print_to_stdstream = self.on_printed
            except Exception:
                return  # another Ray version: Ray keeps printing what this could not take
            self.own_all = True

    def stop(self) -> None:
        if self.printer is not None:
            worker_module, printer = self.printer
            if getattr(worker_module, "print_to_stdstream", None) == self.on_printed:
                worker_module.print_to_stdstream = printer
            self.printer = None
        if self.dispatcher is not None:
            try:
                self.dispatcher.remove_handler(self.name)
            except Exception:
                pass
            self.dispatcher = None

    def on_printed(self, data: Any, ignore_prefix: bool = False) -> None:
        """In place of Ray's ``print_to_stdstream``: the line goes where the tap's go."""
        self.on_batch(data)

    def on_batch(self, data: Any) -> None:
        """One batch of lines from one worker (on Ray's log thread); never raises."""
        try:
            source = str(data.get("pid"))  # Ray gives it as text: a pid, "raylet", "autoscaler"
            pid = int(source) if source.isdigit() else 0
            stream = "stderr" if data.get("is_err") else "stdout"
            if pid not in self.pids:
                if not self.own_all:
                    return
                pid, prefix = 0, f"({source}) "
            else:
                prefix = ""
            for line in data.get("lines", ()):
                self.deliver(pid, stream, prefix + str(line))
        except Exception:
            pass
