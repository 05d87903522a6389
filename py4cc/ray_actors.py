"""The Ray backend's actors: starting them, hearing of their deaths, restarting them (a part
of :class:`py4cc.ray_backend.RayBackend`).

Each :class:`Actor` has a :class:`Slot`, which restarts it as the local pool's slots restart
their workers (:mod:`py4cc.recovery`'s rule and backoff): at once after a death, after a
doubling wait after a failed start, for ever. :class:`Relay` hands the actors' output and
the backend's events to the ``worker_output`` sink.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from typing import Any

from .output import stderr_sink
from .protocol import FAILED
from .ray_actor import WATCH_GROUP
from .ray_connect import LogTap, death_reason
from .ray_tasks import RayTasks
from .recovery import backoff_delay, unavailable_reason
from .tasks import Task


class Actor:
    """One Engine actor, seen from this process.

    ``queue`` holds ``(task, ref)`` for the calls sent to it, in order: the actor runs them
    one at a time, so ``queue[0]`` is the one it runs (or is about to).
    """

    __slots__ = (
        "dead", "failure", "handle", "head_started", "host", "init_ref", "init_timed_out", "node", "pid",
        "queue", "ready", "slot", "started", "timed_out", "watch",
    )  # fmt: skip

    def __init__(self, handle: Any, slot: Slot) -> None:
        self.handle = handle
        self.slot = slot
        self.pid = 0
        self.node = ""
        self.host = ""
        self.ready = False
        self.dead = False
        self.started = time.monotonic()  # for init_timeout
        self.queue: deque[tuple[Task, Any]] = deque()
        self.head_started = 0.0
        self.init_ref: Any = None  # the initialize call, until it answers
        self.watch: Any = None  # the call that ends with the actor
        self.failure: str | None = None  # its Engine's initialize raised: the traceback
        self.timed_out = False
        self.init_timed_out = False

    def usable(self) -> bool:
        return self.ready and not self.dead

    def describe(self) -> str:
        node = self.node[:12] if self.node else "?"
        return f"pid {self.pid} on node {node} ({self.host or '?'})"


class Slot:
    """One of the backend's places for an actor, restarting it as needed."""

    __slots__ = ("actor", "failures", "index", "last_pid", "restart_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.actor: Actor | None = None  # ready or starting
        self.failures = 0  # failed starts in a row
        self.restart_at: float | None = None  # when to start an actor (monotonic), if due
        self.last_pid = 0

    @property
    def degraded(self) -> bool:
        return self.failures > 0


class Relay(threading.Thread):
    """Hands the actors' output lines and the backend's events to the ``worker_output`` sink,
    on a thread of its own: neither Ray's threads nor the backend's lock wait for the sink."""

    def __init__(self, sink: Any) -> None:
        super().__init__(name="py4cc-ray-output", daemon=True)
        self.sink = stderr_sink if sink is None else sink
        self.cond = threading.Condition()
        self.lines: deque[tuple[int, str, str]] = deque()
        self.stopping = False
        self.sink_failed = False

    def put(self, pid: int, stream: str, line: str) -> None:
        with self.cond:
            self.lines.append((pid, stream, line))
            self.cond.notify()

    def event(self, pid: int, text: str) -> None:
        self.put(pid, "event", text)

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.lines and not self.stopping:
                    self.cond.wait()
                if not self.lines:
                    return
                pid, stream, line = self.lines.popleft()
            try:
                self.sink(pid, stream, line)
            except Exception:
                if not self.sink_failed:
                    self.sink_failed = True
                    stderr_sink(
                        pid, "event", "the worker_output callback raised (told once):\n" + traceback.format_exc()
                    )
                stderr_sink(pid, stream, line)

    def stop(self, grace: float) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.is_alive() and self is not threading.current_thread():
            self.join(grace)


class RayActors(RayTasks):
    """The actors' lifecycle (the attributes are set by :class:`py4cc.ray_backend.RayBackend`)."""

    ray: Any
    actor_class: Any
    runtime_env: dict[str, Any]
    where: str
    slots: list[Slot]
    relay: Relay
    tap: LogTap
    last_worker_failure: str

    def count_actors(self) -> int:
        """``n_subprocesses``, or the cluster's CPUs for 0; RuntimeError if the cluster has
        fewer CPUs than actors (each asks for one: the others would wait for ever)."""
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

    def start_actor(self, slot: Slot) -> Actor:
        """Create an actor for ``slot`` and send it ``initialize`` (without waiting)."""
        handle = self.actor_class.options(
            num_cpus=1, max_restarts=0, max_task_retries=0, runtime_env=self.runtime_env
        ).remote()
        actor = Actor(handle, slot)
        actor.init_ref = handle.initialize.remote(self.options.setup)
        with self.lock:
            self.counters.worker_starts += 1
            slot.actor = actor
            slot.restart_at = None
            self.actors.append(actor)
        return actor

    def wait_ready(self, actors: list[Actor]) -> None:
        """Block until every actor is ready; RuntimeError if one fails or (``init_timeout``)
        is not ready in time."""
        ray = self.ray
        engine = self.options.setup.engine
        limit = self.options.init_timeout
        waiting = {a.init_ref: a for a in actors}
        deadline = None if limit is None else time.monotonic() + limit
        while waiting:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = ray.wait(list(waiting), num_returns=1, timeout=timeout)
            if not ready:
                raise RuntimeError(
                    f"Driver.initialize: {len(waiting)} of {len(actors)} Ray actors did not become ready "
                    f"within {limit:g} s (init_timeout): the engine {engine!r} was not initialised yet "
                    f"(or no node had a free CPU for it); every actor was stopped"
                )
            for ref in ready:
                actor = waiting.pop(ref)
                try:
                    ok, pid, node, detail = ray.get(ref)
                except Exception as exc:
                    raise RuntimeError(
                        f"Driver.initialize: a Ray actor for the engine {engine!r} could not start: {death_reason(exc)}"
                    ) from None
                self.note_identity(actor, pid, node)
                if not ok:
                    raise RuntimeError(
                        f"Ray actor ({actor.describe()}) failed to build and initialise the engine "
                        f"{engine!r}:\n{detail}"
                    )
                with self.lock:
                    actor.host = detail
                    actor.ready = True
                    actor.init_ref = None

    def note_identity(self, actor: Actor, pid: int, node: str) -> None:
        with self.lock:
            actor.pid, actor.node = pid, node
            actor.slot.last_pid = pid
            self.tap.pids = frozenset(a.pid for a in self.actors if a.pid)

    def watch(self, actor: Actor) -> None:
        """Start the call that ends only with the actor, and hear of its end."""
        ref = actor.handle.watch.options(concurrency_group=WATCH_GROUP).remote()
        actor.watch = ref
        ref.future().add_done_callback(lambda fut: self.post("died", actor, fut))

    def post(self, kind: str, actor: Actor, detail: Any) -> None:
        """Hand an event to the supervisor (from a Ray callback thread)."""
        with self.lock:
            if self.closed:
                return
            self.events.append((kind, actor, detail))
            self.wakeup.notify()

    def kill(self, actor: Actor) -> None:
        try:
            self.ray.kill(actor.handle, no_restart=True)
        except Exception:
            pass

    def event(self, pid: int, text: str) -> None:
        """Report what happened to an actor to the output sink, as an "event" line."""
        self.relay.event(pid, text)

    def unavailable(self) -> str | None:
        """Why submit must refuse, or None: no actor is ready and a slot failed to start one
        (an actor merely being replaced after a death does not count)."""
        return unavailable_reason(
            any(a.usable() for a in self.actors),
            self.slots,
            self.last_worker_failure,
            "no Ray actor is ready",
            "Engine actors",
        )

    def failed_start(self, slot: Slot, cause: str) -> None:
        """A start failed: back off, remember why, and if no actor is ready, fail the tasks
        waiting for one."""
        slot.failures += 1
        delay = backoff_delay(slot.failures)
        slot.restart_at = time.monotonic() + delay
        self.last_worker_failure = cause
        self.counters.replacement_failures += 1
        self.event(0, f"actor slot {slot.index}: start failed ({slot.failures} in a row), next attempt in {delay:g} s")
        if not any(a.usable() for a in self.actors):
            message = f"no Ray actor is ready to run this task: {cause}"
            while self.pending:
                self.complete(self.pending.popleft(), FAILED, -1, message)

    def lose_actor(self, actor: Actor, cause: str) -> None:
        """``actor`` is gone (its calls dealt with): count it, and have its slot start another,
        at once if it had been ready, else after the backoff."""
        actor.dead = True
        if actor in self.actors:
            self.actors.remove(actor)
        self.tap.pids = frozenset(a.pid for a in self.actors if a.pid)
        self.counters.worker_deaths += 1
        self.counters.last_death_cause = f"Ray actor {actor.describe()} {cause}"
        slot = actor.slot
        if slot.actor is not actor:
            return
        slot.actor = None
        if actor.ready:
            slot.restart_at = time.monotonic()
        elif actor.failure is not None:
            self.failed_start(
                slot, f"a Ray actor ({actor.describe()}) failed to initialise its engine:\n{actor.failure}"
            )
        elif actor.init_timed_out:
            self.failed_start(
                slot,
                f"a Ray actor ({actor.describe()}) did not become ready within the "
                f"{self.options.init_timeout:g} s start-up limit (init_timeout) and was killed",
            )
        else:
            self.failed_start(slot, f"a Ray actor ({actor.describe()}) {cause} before it was ready")
        self.wakeup.notify()

    def restart_due(self) -> None:
        """Start an actor in every slot whose time has come (a failed start backs off)."""
        with self.lock:
            now = time.monotonic()
            if self.stopping():
                return
            due = [s for s in self.slots if s.actor is None and s.restart_at is not None and s.restart_at <= now]
            for slot in due:
                slot.restart_at = None
        for slot in due:
            try:
                actor = self.start_actor(slot)
            except Exception as exc:
                with self.lock:
                    if not self.stopping():
                        self.failed_start(slot, f"a Ray actor could not be created: {death_reason(exc)}")
                continue
            with self.lock:
                stop = self.stopping()
                if not stop:
                    again = f" (after {slot.failures} failed starts)" if slot.failures else ""
                    self.event(0, f"actor slot {slot.index}: started a Ray actor{again}")
            if stop:
                self.kill(actor)
                continue
            actor.init_ref.future().add_done_callback(lambda fut, actor=actor: self.post("init", actor, fut))

    def stopping(self) -> bool:
        """Stop has begun or the connection is lost: no task is sent, no actor started."""
        return self.closed or self.lost is not None
