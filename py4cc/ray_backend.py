"""The Ray backend: the Driver's Engines as actors on a Ray cluster (``Driver(backend="ray")``).

It takes the place of :class:`py4cc.pool.Pool` behind the :class:`py4cc.pool.Backend`
interface, so the Driver's calls, answers, capacity, timeouts and retry policy stay the
same. Each Engine is one actor (:class:`py4cc.ray_actor.EngineActor`, one CPU, Ray's own
restarts and task retries off, so nothing runs twice behind the Driver's back); this
backend keeps the queue and hands each actor one task at a time (plus ``prefetch`` queued
behind it).

How a task travels::

    submit --> tasks[key], pending --dispatch--> actor.run.remote(...) -- Ray --> the actor
                                                        |
    retrieve / wait <-- complete(task) <-- the ObjectRef's future callback (a Ray thread)

Nothing is polled: an answer arrives through the ObjectRef's future callback, and each
actor's death through a call (``watch``) that only ends when the actor does. The
supervisor thread handles what may block: an actor's death (its running task fails, those
queued behind it go back to the queue, a replacement actor starts), ``task_timeout`` and
``init_timeout`` (the actor is killed and replaced). The probe thread asks the cluster
every second whether this process's node is still alive; once it has not answered for
``LOST_AFTER_S``, the connection counts as lost: unfinished tasks fail and ``submit``
refuses, saying so.

Ray is imported only here, and only when this backend starts. The Engine's module and
py4cc itself travel to the cluster in the actors' runtime environment (``py_modules``):
the cluster's nodes need ``ray`` (the same version as here) and the Engine's own
dependencies, nothing else.
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib
import importlib.util
import os
import signal
import socket
import sys
import sysconfig
import threading
import time
import traceback
from collections import deque
from typing import Any

from .options import Options
from .pool import FlagAnswer, Task
from .protocol import (
    AT_CAPACITY,
    CAPACITY_MESSAGE,
    ERROR,
    FAILED,
    FINALIZED_MESSAGE,
    NOT_FINISHED,
    NOT_FINISHED_MESSAGE,
    OK,
    STARTUP_RETRIES,
    Call,
    unknown_key,
    wire_size,
)
from .ray_actor import WATCH_GROUP, EngineActor

CONNECT_TIMEOUT_S = 5.0
"""How long ``initialize`` tries to open a TCP connection to the cluster's address."""
GCS_CHECK_TIMEOUT_S = 10.0
"""How long ``initialize`` waits for the address to answer as a Ray cluster."""
PROBE_INTERVAL_S = 1.0
"""How often the probe thread asks the cluster whether this process's node is alive."""
PROBE_TIMEOUT_S = 2.0
"""How long one such question may take."""
LOST_AFTER_S = 10.0
"""After this long without an answer (or once the node is reported dead), the connection
to the cluster is lost for good: unfinished tasks fail and ``submit`` refuses."""
RESOLVE_S = 30.0
"""How long the supervisor waits for the calls of a dead actor to resolve (they do at once:
Ray fails them when it notices the death)."""
STOP_WAIT_S = 5.0
"""How long ``stop`` waits for the killed actors' deaths to be confirmed."""


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
                    if address is None:
                        # "local": a new instance, even if RAY_ADDRESS or a `ray start` on
                        # this machine names another cluster.
                        ray.init(address="local", num_cpus=n_cpus or None, include_dashboard=False)
                    else:
                        ray.init(address=address)
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
            if not self.exit_hook:
                # Registered after ray.init registered its own: atexit runs ours first.
                atexit.register(stop_all_backends)
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
    try:
        inner.standalone(address, None, int(GCS_CHECK_TIMEOUT_S * 1000))
    except Exception as exc:
        raise RuntimeError(
            f"Driver.initialize: {address} accepts connections but did not answer as a Ray cluster "
            f"within {GCS_CHECK_TIMEOUT_S:g} s: {type(exc).__name__}: {exc}"
        ) from exc


# -- what the actors are started with --------------------------------------------------------


def modules_to_ship(engine: str) -> list[str]:
    """The paths for the actors' ``py_modules``: the py4cc package, and the Engine's
    top-level module or package unless it is py4cc's, installed (site-packages) or the
    standard library's (the cluster has those already, or must)."""
    py4cc_dir = os.path.dirname(os.path.abspath(__file__))
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


def build_runtime_env(ray: Any, engine: str) -> dict[str, Any]:
    """The actors' runtime environment, its local paths uploaded to the cluster (a runtime
    environment given to one actor must name packages the cluster holds, not paths)."""
    env: dict[str, Any] = {"py_modules": modules_to_ship(engine)}
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


# -- the backend ------------------------------------------------------------------------------


class Slot:
    """One actor of the backend, seen from this process.

    ``queue`` holds ``(task, ref)`` for the calls sent to it, in order: the actor runs
    them one at a time, so ``queue[0]`` is the one it runs (or is about to).
    """

    __slots__ = (
        "actor", "dead", "head_started", "host", "init_failed", "init_timed_out", "node", "pid",
        "queue", "ready", "started", "watch",
    )  # fmt: skip

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.pid = 0
        self.node = ""
        self.host = ""
        self.ready = False
        self.dead = False
        self.started = time.monotonic()  # for init_timeout
        self.queue: deque[tuple[Task, Any]] = deque()
        self.head_started = 0.0
        self.watch: Any = None
        self.init_failed = False
        self.init_timed_out = False

    def usable(self) -> bool:
        return self.ready and not self.dead

    def describe(self) -> str:
        node = self.node[:12] if self.node else "?"
        return f"pid {self.pid} on node {node} ({self.host or '?'})"


class RayBackend:
    """The Driver's tasks run by Engine actors on a Ray cluster; one per Driver.

    Everything below ``lock`` is read and written with it held. Ray's calls that may
    block (creating and killing actors, reading a dead actor's outcomes) are made without
    it, on the supervisor thread or in ``start``/``stop``.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ray: Any = None
        self.actor_class: Any = None
        self.runtime_env: dict[str, Any] = {}
        self.where = ""
        self.acquired = False  # holds one use of CONNECTION
        self.lock = threading.Lock()
        self.wakeup = threading.Condition(self.lock)  # the supervisor waits on it
        self.stop_lock = threading.Lock()
        self.tasks: dict[int, Task] = {}
        self.pending: deque[Task] = deque()
        self.slots: list[Slot] = []
        self.events: list[tuple[str, Slot, Any]] = []  # for the supervisor
        self.replacements = 0  # to start, for the supervisor
        self.next_key = 1
        self.avg_run_s: float | None = None
        self.closed = False
        self.finished = False
        self.broken: str | None = None
        self.lost: str | None = None
        self.startup_deaths = 0
        self.n_actors = options.n_subprocesses
        self.supervisor: threading.Thread | None = None
        self.probe: threading.Thread | None = None
        self.stop_requested = threading.Event()  # ends the probe thread's sleep
        self.owner_pid = os.getpid()

    # -- the Backend interface ------------------------------------------------------------

    def start(self) -> None:
        ray = import_ray()
        _LIVE_BACKENDS.add(self)
        try:
            self.where = CONNECTION.acquire(ray, self.options.ray_address, self.options.n_subprocesses)
            self.ray = ray
            self.acquired = True
            self.n_actors = self.count_actors()
            self.options = dataclasses.replace(self.options, n_subprocesses=self.n_actors)
            self.runtime_env = build_runtime_env(ray, self.options.setup.engine)
            self.actor_class = ray.remote(concurrency_groups={WATCH_GROUP: 1})(EngineActor)
            slots = []
            for _ in range(self.n_actors):
                slot = self.new_slot()
                slots.append(slot)
                with self.lock:
                    self.slots.append(slot)
            self.wait_ready(slots)
        except BaseException:
            self.stop()
            raise
        for slot in slots:
            self.watch_slot(slot)
        self.supervisor = threading.Thread(target=self.supervise, name="py4cc-ray-supervisor", daemon=True)
        self.supervisor.start()
        self.probe = threading.Thread(target=self.probe_connection, name="py4cc-ray-probe", daemon=True)
        self.probe.start()

    def submit(self, float_features: list[float], str_features: list[str], int_feature: int) -> FlagAnswer:
        size = wire_size(float_features, str_features, int_feature)
        with self.lock:
            if self.closed:
                return ERROR, 0, FINALIZED_MESSAGE
            if self.lost is not None:
                return ERROR, 0, self.lost
            if self.broken is not None:
                return ERROR, 0, f"the driver has no working Ray actor: {self.broken}"
            if len(self.tasks) >= self.options.max_tasks:
                return AT_CAPACITY, 0, CAPACITY_MESSAGE
            key = self.next_key
            self.next_key += 1
            task = Task(Call(key, float_features, str_features, int_feature), size)
            self.tasks[key] = task
            self.pending.append(task)
            launched = self.dispatch()
        self.arm(launched)
        return OK, key, ""

    def collect(self, key: int) -> FlagAnswer:
        with self.lock:
            return self._collect(key)

    def _collect(self, key: int) -> FlagAnswer:
        task = self.tasks.get(key)
        if task is None:
            return ERROR, 0, unknown_key(key)
        if not task.done:
            return NOT_FINISHED, 0, NOT_FINISHED_MESSAGE
        del self.tasks[key]
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

    def worker_pids(self) -> list[int]:
        """The pids of the ready actors' processes (on their own nodes)."""
        with self.lock:
            return [s.pid for s in self.slots if s.ready]

    def held_tasks(self) -> int:
        with self.lock:
            return len(self.tasks)

    # -- starting actors --------------------------------------------------------------------

    def count_actors(self) -> int:
        """``n_subprocesses``, or the cluster's CPUs for 0; RuntimeError if the cluster has
        fewer CPUs than actors (each asks for one: the rest would wait for ever)."""
        try:
            cpus = int(self.ray.cluster_resources().get("CPU", 0))
        except Exception:
            cpus = 0
        wanted = self.options.n_subprocesses or max(1, cpus)
        if cpus < wanted:
            raise RuntimeError(
                f"Driver.initialize: {wanted} Engine actors need a CPU each, and {self.where} has "
                f"{cpus} CPUs: lower n_subprocesses or add nodes"
            )
        return wanted

    def new_slot(self) -> Slot:
        """Create one actor and send it ``initialize`` (without waiting). Raises on failure."""
        actor = self.actor_class.options(
            num_cpus=1, max_restarts=0, max_task_retries=0, runtime_env=self.runtime_env
        ).remote()
        slot = Slot(actor)
        slot.watch = actor.initialize.remote(self.options.setup)  # the init call, until ready
        return slot

    def wait_ready(self, slots: list[Slot]) -> None:
        """Block until every actor is ready; RuntimeError if one fails or (``init_timeout``)
        is not ready in time."""
        ray = self.ray
        engine = self.options.setup.engine
        limit = self.options.init_timeout
        waiting = {slot.watch: slot for slot in slots}
        deadline = None if limit is None else time.monotonic() + limit
        while waiting:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=timeout)
            if not ready:
                raise RuntimeError(
                    f"Driver.initialize: {len(waiting)} of {len(slots)} Ray actors did not become ready "
                    f"within {limit:g} s (init_timeout): the engine {engine!r} was not initialised yet "
                    f"(or no node had a free CPU for it); every actor was stopped"
                )
            for ref in ready:
                slot = waiting.pop(ref)
                try:
                    ok, pid, node, detail = ray.get(ref)
                except Exception as exc:
                    raise RuntimeError(
                        f"Driver.initialize: a Ray actor for the engine {engine!r} could not start: {death_reason(exc)}"
                    ) from None
                slot.pid, slot.node = pid, node
                if not ok:
                    raise RuntimeError(
                        f"Ray actor ({slot.describe()}) failed to build and initialise the engine {engine!r}:\n{detail}"
                    )
                slot.host = detail
                slot.ready = True

    def watch_slot(self, slot: Slot) -> None:
        """Start the call that ends only with the actor, and hear of its end."""
        ref = slot.actor.watch.options(concurrency_group=WATCH_GROUP).remote()
        slot.watch = ref
        ref.future().add_done_callback(lambda fut: self.post("died", slot, fut))

    def post(self, kind: str, slot: Slot, detail: Any) -> None:
        """Hand an event to the supervisor (from a Ray callback thread)."""
        with self.lock:
            if self.closed:
                return
            self.events.append((kind, slot, detail))
            self.wakeup.notify()

    # -- tasks (dispatch and complete are called with self.lock held) ------------------------

    def complete(self, task: Task, flag: int, value: int, message: str) -> None:
        """Record a task's answer and wake its waiters (once; later answers are ignored)."""
        if task.done:
            return
        task.done = True
        task.flag = flag
        task.value = value
        task.message = message
        task.deadline = None
        task.call = None
        if task.event is not None:
            task.event.set()

    def dispatch(self) -> list[tuple[Slot, Task, Any]]:
        """Send pending tasks, oldest first, to idle actors, else (``prefetch``) behind a busy
        one's current task. Returns the calls made, for :meth:`arm` once the lock is let go
        (a callback must not run, or be registered, under it)."""
        launched: list[tuple[Slot, Task, Any]] = []
        if self.closed or self.lost is not None:
            return launched
        now = time.monotonic()
        while self.pending:
            slot = next((s for s in self.slots if s.usable() and not s.queue), None)
            if slot is None:
                slot = self.prefetch_target(now)
                if slot is None:
                    break
            task = self.pending.popleft()
            call = task.call
            assert call is not None  # only a done task has none, and it is never pending
            try:
                ref = slot.actor.run.remote(call.key, call.float_features, call.str_features, call.int_feature)
            except Exception as exc:
                self.pending.appendleft(task)
                slot.dead = True  # the supervisor replaces it
                self.events.append(("broken", slot, exc))
                self.wakeup.notify()
                continue
            slot.queue.append((task, ref))
            if len(slot.queue) == 1:
                self.start_head(slot, now)
            launched.append((slot, task, ref))
        return launched

    def prefetch_target(self, now: float) -> Slot | None:
        """The busy actor that should get the next task queued behind its current one:
        holding at most ``prefetch`` tasks, its current one not running much longer than
        usual; among those, the one whose current task started first."""
        prefetch = self.options.prefetch
        if not prefetch:
            return None
        typical = self.avg_run_s if self.avg_run_s is not None else 0.0
        limit = max(0.002, 4.0 * typical)
        best = None
        for s in self.slots:
            if not s.usable() or not s.queue or len(s.queue) > prefetch or now - s.head_started > limit:
                continue
            if best is None or s.head_started < best.head_started:
                best = s
        return best

    def start_head(self, slot: Slot, now: float) -> None:
        slot.head_started = now
        if self.options.task_timeout is not None:
            slot.queue[0][0].deadline = now + self.options.task_timeout
            self.wakeup.notify()  # the supervisor must learn the new deadline

    def arm(self, launched: list[tuple[Slot, Task, Any]]) -> None:
        for slot, task, ref in launched:
            ref.future().add_done_callback(lambda fut, slot=slot, task=task: self.on_answer(slot, task, fut))

    def on_answer(self, slot: Slot, task: Task, fut: Any) -> None:
        """A call has ended (on a Ray thread): record the answer, send the next task. An
        actor's death is the supervisor's to sort out."""
        try:
            try:
                flag, value, message = fut.result()
            except self.ray.exceptions.RayActorError:
                self.post("died", slot, fut)
                return
            except BaseException as exc:  # the call itself failed: only this task is concerned
                flag, value, message = FAILED, -1, f"the Ray actor could not run this task: {death_reason(exc)}"
            with self.lock:
                self.take_off(slot, task)
                if not self.closed:
                    self.complete(task, flag, value, message)
                launched = self.dispatch()
            self.arm(launched)
        except BaseException:  # a callback must not raise into Ray
            pass

    def take_off(self, slot: Slot, task: Task) -> None:
        """Remove ``task`` from ``slot``'s queue; if it was the head, the next one starts."""
        for i, (queued, _) in enumerate(slot.queue):
            if queued is task:
                del slot.queue[i]
                if i == 0:
                    now = time.monotonic()
                    run = now - slot.head_started
                    self.avg_run_s = run if self.avg_run_s is None else self.avg_run_s + 0.1 * (run - self.avg_run_s)
                    if slot.queue:
                        self.start_head(slot, now)
                return

    def stopping(self) -> bool:
        """Stop has begun or the connection is lost: no task is sent, no actor started."""
        return self.closed or self.lost is not None

    def fail_all_pending(self, message: str) -> None:
        while self.pending:
            self.complete(self.pending.popleft(), FAILED, -1, message)

    def note_replacement_failure(self, message: str) -> None:
        """A replacement actor could not start; if no live actor is left, the backend is
        broken: queued tasks fail and submit refuses, both saying why."""
        if not any(not s.dead for s in self.slots) and not self.replacements:
            self.broken = message
            self.fail_all_pending(f"no Ray actor is left to run this task: {message}")

    # -- the supervisor thread --------------------------------------------------------------

    def supervise(self) -> None:
        try:
            self._supervise()
        except BaseException:
            traceback.print_exc()

    def _supervise(self) -> None:
        while True:
            with self.lock:
                while not self.closed and not self.events and not self.replacements:
                    timeout = self.next_deadline()
                    if timeout is not None and timeout <= 0:
                        break
                    self.wakeup.wait(timeout)
                if self.closed:
                    return
                events, self.events = self.events, []
                replacements, self.replacements = self.replacements, 0
                if self.lost is not None:
                    replacements = 0
            for kind, slot, detail in events:
                if kind == "died" or kind == "broken":
                    self.on_death(slot, detail)
                elif kind == "init":
                    self.on_init(slot, detail)
            self.expire()
            for _ in range(replacements):
                self.replace()

    def next_deadline(self) -> float | None:
        """Seconds until the nearest task or start-up deadline (None: none)."""
        deadlines = []
        if self.options.task_timeout is not None:
            deadlines = [s.queue[0][0].deadline for s in self.slots if s.queue and s.queue[0][0].deadline is not None]
        if self.options.init_timeout is not None:
            deadlines += [s.started + self.options.init_timeout for s in self.slots if not s.ready and not s.dead]
        if not deadlines:
            return None
        return min(deadlines) - time.monotonic()

    def on_death(self, slot: Slot, detail: Any) -> None:
        """An actor has died (its watch or a call failed): fail its running task, put those
        queued behind it back, and replace it."""
        with self.lock:
            if self.stopping() or slot not in self.slots:
                return  # handled already (timed out, or a second notice), or moot
            slot.dead = True
            self.slots.remove(slot)
            outstanding = list(slot.queue)
            was_ready = slot.ready
        self.kill(slot)  # if only unreachable for now: its calls must end, and now
        reason = "it died"
        if isinstance(detail, BaseException):
            reason = death_reason(detail)
        elif detail is not None:
            try:
                detail.result()
            except BaseException as exc:
                reason = death_reason(exc)
        # Each call's own outcome: the first one the death cut short was running; the ones
        # after it had not started. A call that answered before the death keeps its answer.
        outcomes = []
        for _, ref in outstanding:
            try:
                outcomes.append(("answer", self.ray.get(ref, timeout=RESOLVE_S)))
            except self.ray.exceptions.RayActorError:
                outcomes.append(("died", None))
            except BaseException as exc:
                outcomes.append(("failed", exc))
        with self.lock:
            if self.stopping():
                return
            running_failed = False
            requeue = []
            for (task, _), (kind, value) in zip(outstanding, outcomes):
                if task.done:
                    continue
                if kind == "answer":
                    self.complete(task, *value)
                elif kind == "failed":
                    self.complete(task, FAILED, -1, f"the Ray actor could not run this task: {death_reason(value)}")
                elif not running_failed:
                    running_failed = True
                    self.complete(
                        task,
                        FAILED,
                        -1,
                        f"the Ray actor running this task ({slot.describe()}) died; it is being replaced. "
                        f"Ray says: {reason}",
                    )
                else:
                    task.deadline = None
                    requeue.append(task)
            self.pending.extendleft(reversed(requeue))
            slot.queue.clear()
            self.count_start_failure(slot, was_ready, f"it died before it was ready: {reason}")
            launched = self.dispatch()
        self.arm(launched)

    def count_start_failure(self, slot: Slot, was_ready: bool, why: str) -> None:
        """Decide on a replacement for a dead actor (with the lock held): always for one that
        was ready; for one that died starting, up to STARTUP_RETRIES times in a row."""
        if was_ready:
            self.replacements += 1
            return
        if slot.init_failed:
            return  # noted already
        self.startup_deaths += 1
        if self.startup_deaths <= STARTUP_RETRIES:
            self.replacements += 1
        elif slot.init_timed_out:
            self.note_replacement_failure(
                f"replacement Ray actors could not start within the {self.options.init_timeout:g} s "
                f"start-up limit (init_timeout) ({self.startup_deaths} in a row)"
            )
        else:
            self.note_replacement_failure(
                f"a replacement Ray actor ({slot.describe()}) could not start: {why} ({self.startup_deaths} in a row)"
            )

    def replace(self) -> None:
        """Start one replacement actor; it joins once its ``initialize`` answers."""
        try:
            slot = self.new_slot()
        except Exception as exc:
            with self.lock:
                self.note_replacement_failure(f"a replacement Ray actor could not be created: {death_reason(exc)}")
            return
        with self.lock:
            stop = self.closed or self.lost is not None
            if not stop:
                self.slots.append(slot)
        if stop:
            self.kill(slot)
            return
        slot.watch.future().add_done_callback(lambda fut: self.post("init", slot, fut))

    def on_init(self, slot: Slot, fut: Any) -> None:
        """A replacement's ``initialize`` has answered (or it died starting)."""
        try:
            ok, pid, node, detail = fut.result()
        except BaseException as exc:
            self.on_death(slot, exc)
            return
        with self.lock:
            if self.closed or slot not in self.slots:
                return
            slot.pid, slot.node = pid, node
            if not ok:
                slot.dead = True
                slot.init_failed = True
                self.slots.remove(slot)
                self.note_replacement_failure(
                    f"a replacement Ray actor ({slot.describe()}) failed to initialise its engine:\n{detail}"
                )
                dead = True
            else:
                slot.host = detail
                slot.ready = True
                self.startup_deaths = 0
                dead = False
        if dead:
            self.kill(slot)
            return
        self.watch_slot(slot)
        with self.lock:
            launched = self.dispatch()
        self.arm(launched)

    def expire(self) -> None:
        """Fail each task that has run past ``task_timeout`` and kill its actor; kill the
        replacement actors not ready within ``init_timeout``."""
        now = time.monotonic()
        killed = []
        with self.lock:
            if self.closed:
                return
            for slot in list(self.slots):
                head = slot.queue[0][0] if slot.queue else None
                if head is not None and head.deadline is not None and head.deadline <= now:
                    slot.dead = True
                    self.slots.remove(slot)
                    unstarted = [task for task, _ in list(slot.queue)[1:]]
                    for task in unstarted:
                        task.deadline = None
                    self.pending.extendleft(reversed(unstarted))
                    slot.queue.clear()
                    self.complete(
                        head,
                        FAILED,
                        -1,
                        f"the task timed out after {self.options.task_timeout:g} s; its Ray actor "
                        f"({slot.describe()}) was killed and is being replaced",
                    )
                    self.replacements += 1
                    killed.append(slot)
                elif (
                    self.options.init_timeout is not None
                    and not slot.ready
                    and now >= slot.started + self.options.init_timeout
                ):
                    slot.dead = True
                    slot.init_timed_out = True
                    self.slots.remove(slot)
                    self.count_start_failure(slot, False, "it was not ready within init_timeout")
                    killed.append(slot)
            launched = self.dispatch()
        self.arm(launched)
        for slot in killed:
            self.kill(slot)

    def kill(self, slot: Slot) -> None:
        try:
            self.ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass

    # -- the connection ---------------------------------------------------------------------

    def probe_connection(self) -> None:
        """Ask the cluster, every PROBE_INTERVAL_S, whether this process's node is alive;
        after LOST_AFTER_S without a yes, the connection is lost."""
        check = node_checker(self.ray)
        if check is None:
            return  # this Ray offers no way to ask: losses show as actor deaths only
        last_ok = time.monotonic()
        problem = ""
        while True:
            if self.closed:
                return
            try:
                alive = check()
                if alive:
                    last_ok = time.monotonic()
                else:
                    problem = "the cluster reports this process's node as dead"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - last_ok >= LOST_AFTER_S or problem.startswith("the cluster reports"):
                self.lose(f"lost the connection to {self.where}: {problem}")
                return
            if self.stop_requested.wait(PROBE_INTERVAL_S):
                return

    def lose(self, message: str) -> None:
        """The connection is gone for good: fail every unfinished task, refuse new ones."""
        with self.lock:
            if self.closed:
                return
            self.lost = message
            for task in self.tasks.values():
                self.complete(task, FAILED, -1, message)
            self.pending.clear()
            for slot in self.slots:
                slot.dead = True
                slot.queue.clear()

    # -- stopping -------------------------------------------------------------------------

    def stop(self) -> None:
        """Fail the unfinished tasks, kill every actor, let go of the connection (the last
        Driver's stop ends a local Ray instance); never raises an Exception; safe to call
        many times and from many threads. Does nothing in a forked child."""
        if os.getpid() != self.owner_pid:
            return
        try:
            self._stop()
        except Exception:
            pass

    def _stop(self) -> None:
        with self.stop_lock:
            if self.finished:
                return
            with self.lock:
                self.closed = True
                for task in self.tasks.values():
                    if not task.done:
                        self.complete(task, FAILED, -1, "the driver was finalized before this task finished")
                self.pending.clear()
                self.wakeup.notify_all()
                slots = list(self.slots)
            self.stop_requested.set()
            for thread in (self.supervisor, self.probe):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(10.0)
            if self.ray is not None:
                for slot in slots:
                    self.kill(slot)
                watches = [s.watch for s in slots if s.watch is not None]
                if watches and self.lost is None:
                    try:  # each watch fails once its actor is dead
                        self.ray.wait(watches, num_returns=len(watches), timeout=STOP_WAIT_S)
                    except Exception:
                        pass
            with self.lock:
                self.slots.clear()
            if self.acquired:
                self.acquired = False
                CONNECTION.release(self.ray)
            self.finished = True
            _LIVE_BACKENDS.discard(self)

    def stop_when_collected(self) -> None:
        """The Driver's garbage-collection finalizer: a collection may run it on a Ray
        callback thread or the supervisor, where stopping would deadlock; a new thread does it."""
        if self.stop_lock.locked():
            return
        current = threading.current_thread()
        if current in (self.supervisor, self.probe) or isinstance(current, threading._DummyThread):
            try:
                threading.Thread(target=self.stop, name="py4cc-collect", daemon=True).start()
            except RuntimeError:
                pass
            return
        self.stop()


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


_LIVE_BACKENDS: set[RayBackend] = set()
"""The Ray backends started and not stopped yet, for the exit hook."""


def stop_all_backends() -> None:
    """The exit hook: stop every Ray backend still running (before Ray's own exit hook)."""
    for backend in list(_LIVE_BACKENDS):
        backend.stop()
