"""The Ray backend: the Driver's Engines as actors on a Ray cluster (``Driver(backend="ray")``).

It takes the place of :class:`py4cc.local.pool.Pool`: both are a
:class:`py4cc.core.tasks.TaskBook`, whose rules (admission, capacity, keys, answers, waits,
cancel, expiry, drain, the stop path, the slots' backoff) are written once there, so the
Driver's calls and answers stay the same. Each Engine is one actor
(:class:`py4cc.ray.actor.EngineActor`, one CPU, Ray's own restarts and task retries off, so
that nothing runs twice behind the Driver's back); this backend keeps the queue and hands
each actor its calls, as :func:`py4cc.core.scheduling.pick_runner` says: to an idle actor
first, else behind a busy one's running call, up to ``CALLS_AHEAD`` calls, so that an actor
does not idle for a host round trip between two calls (with ``batching``, one batch per
actor: a batch goes to a free actor).

How a task travels::

    submit --> tasks[key], pending --dispatch--> actor.call.remote(encode_call(call)) --Ray--> the actor
                                                                                                 |
    the host <-- announce_finished <-- complete(task) <-- the answer thread <-- arrived <--------+
    (one deliver per wake)           (one lock hold per wake; dispatch)   (the done-callback,
                                                                           on Ray's I/O thread)

Nothing is polled: a call's end reaches its ref's done-callback, on Ray's one I/O thread,
which only appends it to ``arrived`` (and wakes the answer thread if it sleeps); the
answer thread takes everything that has arrived at once: the answers recorded under one hold
of the lock, the next calls sent, the host told in one ``announce_finished``. An actor's
death arrives through a call (``watch``) that ends only with the actor. The supervisor
thread does what may block or must wait: it sorts out a dead actor's calls (the one it was
running fails, those queued behind it go back to the queue), enforces ``task_timeout`` and
``init_timeout`` (the actor is killed; a call's clock starts when it becomes its actor's
first, that is when the answer thread has taken the call ahead of it: never before it can
run, at most that round trip after), drops expired results, and starts actors. Each
actor has a slot, which restarts it as the local pool's slots restart their workers
(:mod:`py4cc.core.slots`'s rule and backoff): at once after a death, after a doubling wait
after a failed start, for ever. The probe thread asks the cluster every second whether this
process's node is alive; after ``LOST_AFTER_S`` without a yes the connection is lost for
good: unfinished tasks fail, ``submit`` refuses, and ``stats()`` says why.

Ray is imported only when this backend starts (:mod:`py4cc.ray.connect`).

:class:`RayBackend` is one class, in parts: what the task book asks of it and the stop; the queue
(which actor runs which task); the actors (start, death, restart); the answers (the
callbacks, a dead actor's calls); the supervisor (timeouts, the probe, the stats).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import traceback
from collections import deque
from typing import Any

from ..core.scheduling import batch_to_form, free_runner, moving_average, pick_runner
from ..core.sink import SinkThread
from ..core.slots import Slot
from ..core.stats import task_stats
from ..core.tasks import Task, TaskBook, stop_all
from ..options import Options
from ..protocol import FAILED, OK, OUTPUT_GRACE_S, Answer, encode_call, unpickle_answer
from .actor import WATCH_GROUP, EngineActor
from .connect import CONNECTION, LogTap, build_runtime_env, death_reason, import_ray, node_checker, when_done

NODE_ID_LABEL = "ray.io/node-id"
"""The label every Ray node carries with its id."""

STOP_WAIT_S = 5.0
"""How long ``stop`` waits for Ray to confirm the killed actors' deaths."""


RESOLVE_S = 30.0
"""How long the supervisor waits for a dead actor's calls to end (Ray ends them as soon as
it knows of the death; a merely unreachable actor is killed first)."""


AVOID_NODE_S = 30.0
"""For this long after a node lost an actor, replacements are placed on other nodes if any
has room (a soft preference): Ray may not know yet that the node is dying, and an actor it
placed there would be lost too, costing a whole failure detection (about 13 s) more."""
NEVER_STARTED = "cancelled before it started running"
"""What Ray says of an actor that never ran (placed on a node that was dying, typically)."""
NEVER_STARTED_RETRY_S = 0.5
"""How soon a slot tries again after such an actor: not a failed start (no backoff)."""


PROBE_INTERVAL_S = 1.0
"""How often the probe thread asks the cluster whether this process's node is alive."""
LOST_AFTER_S = 10.0
"""After this long without a yes, the connection to the cluster is lost for good."""

CALLS_AHEAD = 4
"""Without batching, how many calls an actor may hold behind the one it runs (its pipeline)
when ``prefetch`` > 0 (``prefetch`` itself if larger; 0 keeps one call per actor). A Ray
round trip through the host (the answer back through Ray's I/O thread and the answer
thread, the next call out) costs an actor several short tasks' worth of time, where a
local worker's pipe costs about one: on the loopback bench (2 actors, no-op tasks) 1, 3, 4
and 7 calls ahead gave about 1,070, 1,290, 1,330 and 1,320-1,390 tasks/s at 16 threads, so 4 is
where the gain ends. The calls still go to an idle actor first, and never behind a call that
has run much longer than usual (:func:`~py4cc.core.scheduling.pick_runner`'s age rule), so
few tasks wait behind a long one."""


class Sent:
    """One actor call in flight: its actor, its tasks (one, or with ``batching`` a batch) and
    its ref."""

    __slots__ = ("actor", "batched", "ref", "tasks")

    def __init__(self, actor: Actor, tasks: list[Task], ref: Any, batched: bool) -> None:
        self.actor = actor
        self.tasks = tasks
        self.ref = ref
        self.batched = batched


class Actor:
    """One Engine actor, seen from this process.

    ``queue`` holds the calls sent to it (:class:`Sent`), in order: the actor runs them one
    at a time, so ``queue[0]`` is the one it runs (or is about to), and the calls behind it
    are its pipeline (:data:`CALLS_AHEAD`; with ``batching``, one batch and no pipeline).
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
        self.queue: deque[Sent] = deque()
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


class RayBackend(TaskBook):
    """The Driver's tasks run by Engine actors on a Ray cluster; one per Driver.

    Everything below ``lock`` is read and written with it held. Ray's calls that may block
    (creating and killing actors, reading a dead actor's calls) are made without it. Holds
    no reference to its Driver, so that a Driver nobody uses is collected.
    """

    RUNNER = "Ray actor"
    RUNNERS = "Engine actors"
    SLOT = "actor slot"

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        self.ray: Any = None
        self.actor_class: Any = None
        self.runtime_env: dict[str, Any] = {}
        self.where = ""
        self.acquired = False  # holds one use of the process's connection
        self.wakeup = threading.Condition(self.lock)  # the supervisor waits on it
        self.stop_requested = threading.Event()  # ends the probe's sleep
        self.actors: list[Actor] = []  # ready or starting
        self.events: list[tuple[str, Actor, Any]] = []  # for the supervisor
        self.lost: str | None = None  # why the connection to the cluster is gone
        self.relay = SinkThread(options.worker_output, "py4cc-ray-output")
        self.tap = LogTap(self.relay.put)
        self.wake_at: float | None = 0.0  # when the supervisor means to wake (None: not before told)
        self.supervisor: threading.Thread | None = None
        self.probe: threading.Thread | None = None
        self.answerer: threading.Thread | None = None
        self.arrived: deque[tuple[Sent, Any]] = deque()  # ended calls, for the answer thread
        self.answers_idle = False  # the answer thread sleeps or is about to: arrive wakes it
        self.answers_wake = threading.Event()
        # Calls an actor may hold behind its running one, without batching (CALLS_AHEAD).
        self.calls_ahead = max(options.prefetch, CALLS_AHEAD) if options.prefetch else 0
        self.avoid: dict[str, float] = {}  # node id (hex) -> until when replacements avoid it

    # -- what the task book asks of a backend ---------------------------------------------

    def start(self) -> None:
        ray = import_ray()
        self.went_live()
        CONNECTION.on_exit = stop_all_backends
        try:
            self.where = CONNECTION.acquire(ray, self.options.ray_address, self.options.n_subprocesses)
            self.ray = ray
            self.acquired = True
            n = self.count_actors()
            self.options = dataclasses.replace(self.options, n_subprocesses=n)
            self.runtime_env = build_runtime_env(ray, self.options.setup.engine, self.options.setup.env)
            self.actor_class = ray.remote(concurrency_groups={WATCH_GROUP: 1})(EngineActor)
            self.relay.start()
            # Ray's output goes through this Driver's sink (the host's stderr by default,
            # as py4cc's own lines) when py4cc made the connection, or the host asked for it.
            if self.options.worker_output is not None or CONNECTION.owned:
                self.tap.start(own_all=CONNECTION.owned)
            self.slots = [Slot(i) for i in range(n)]
            first = [self.start_actor(slot) for slot in self.slots]
            self.wait_ready(first)
        except BaseException:
            self.stop()
            raise
        for actor in first:
            self.watch(actor)
        self.answerer = threading.Thread(target=self.take_answers, name="py4cc-ray-answers", daemon=True)
        self.answerer.start()
        self.supervisor = threading.Thread(target=self.supervise, name="py4cc-ray-supervisor", daemon=True)
        self.supervisor.start()
        self.probe = threading.Thread(target=self.probe_connection, name="py4cc-ray-probe", daemon=True)
        self.probe.start()

    def runners(self) -> list[Actor]:
        return self.actors

    def out_of_order(self) -> str | None:
        return self.lost

    def on_admitted(self) -> list[Sent]:
        launched = self.dispatch()
        due = self.batch_due()
        if due is not None:
            self.tell_supervisor(due)  # it forms the batch once its oldest task has waited max_wait
        return launched

    def after_admit(self, sent: list[Sent]) -> None:
        self.arm(sent)

    def result_expires(self, when: float) -> None:
        if self.deliver.callback is not None:
            # Handed to the host before the lock is let go (every path that completes a task
            # announces it), and the host keeps result_ttl itself: waking the supervisor for
            # it cost a wake-up per answer batch.
            return
        self.tell_supervisor(when)  # it drops the result when its time comes

    def worker_pids(self) -> list[int]:
        """The pids of the actors' processes, ready or starting (on their own nodes)."""
        with self.lock:
            return [a.pid for a in self.actors if a.pid]

    # -- stopping -------------------------------------------------------------------------

    def wake_for_stop(self) -> None:
        self.wakeup.notify_all()

    def shut_down(self) -> None:
        with self.lock:
            actors = list(self.actors)
        self.stop_requested.set()
        self.answers_wake.set()
        for thread in (self.supervisor, self.probe, self.answerer):
            if thread is not None and thread is not threading.current_thread():
                thread.join(10.0)
        if self.ray is not None:
            for actor in actors:
                self.kill(actor)
            ends = [a.watch or a.init_ref for a in actors if (a.watch or a.init_ref) is not None]
            if ends and self.lost is None:
                try:  # each fails once its actor is dead
                    self.ray.wait(ends, num_returns=len(ends), timeout=STOP_WAIT_S)
                except Exception:
                    pass
        with self.lock:
            self.actors.clear()
        self.tap.stop()
        self.relay.stop(OUTPUT_GRACE_S)
        if self.acquired:
            self.acquired = False
            CONNECTION.release(self.ray)

    def on_own_thread(self) -> bool:
        """The supervisor, the probe, the answer thread, or a Ray callback thread (a dummy
        thread to Python)."""
        current = threading.current_thread()
        return current in (self.supervisor, self.probe, self.answerer) or isinstance(current, threading._DummyThread)

    # -- the queue: which actor runs which task ------------------------------------------

    def dispatch(self) -> list[Sent]:
        """Send pending tasks, oldest first, to idle actors, else (``prefetch``) behind a busy
        one's current call; with ``batching``, batches (:meth:`dispatch_batches`). Returns the
        calls made, for :meth:`arm` once the lock is let go (a callback must not be registered
        under it: it may run at once)."""
        if self.closed or self.lost is not None:
            return []
        now = time.monotonic()
        if self.options.batching is not None:
            return self.dispatch_batches(now)
        launched: list[Sent] = []
        while self.pending:
            actor = pick_runner(self.actors, self.options, now, self.avg_run_s, lambda _: True, ahead=self.calls_ahead)
            if actor is None:
                break
            task = self.pending.popleft()
            call = task.call
            assert call is not None  # only a finished task has none, and none is pending
            sent = self.send(actor, [task], False, now)
            if sent is not None:
                launched.append(sent)
        return launched

    def dispatch_batches(self, now: float) -> list[Sent]:
        """With ``batching``: one actor call per batch, to each free actor, once
        :func:`~py4cc.core.scheduling.batch_to_form` says a batch is due (lock held). No
        pipeline here: a batch sent behind a running one would form before it is full (at
        ``max_wait``), and a batch already spreads one round trip over its tasks; on the
        loopback bench (64 threads, batches of 32, 2 ms) one batch behind the running one
        gave 11,500-14,300 tasks/s against 14,000-16,600 without."""
        batching = self.options.batching
        assert batching is not None
        launched: list[Sent] = []
        while self.pending:
            actor = free_runner(self.actors)
            if actor is None:
                break
            size, _ = batch_to_form(self.pending, batching, now)
            if not size:
                break
            batch = [self.pending.popleft() for _ in range(size)]
            sent = self.send(actor, batch, True, now)
            if sent is not None:
                self.note_batch(batch, now)
                launched.append(sent)
        return launched

    def send(self, actor: Actor, tasks: list[Task], batched: bool, now: float) -> Sent | None:
        """Make the actor call for ``tasks`` (lock held); if Ray refuses, they go back to the
        head of the queue and the actor is dead to the supervisor."""
        try:
            if batched:
                ref = actor.handle.call_batch.remote([task.call[:] for task in tasks])  # type: ignore[index]
            else:
                ref = actor.handle.call.remote(encode_call(tasks[0].call))
        except Exception as exc:
            self.pending.extendleft(reversed(tasks))
            actor.dead = True  # the supervisor sorts it out
            self.events.append(("died", actor, exc))
            self.wakeup.notify()
            return None
        sent = Sent(actor, tasks, ref, batched)
        actor.queue.append(sent)
        if len(actor.queue) == 1:
            self.start_head(actor, now)
        return sent

    def start_head(self, actor: Actor, now: float) -> None:
        """``actor``'s first call starts running now, as far as this process can tell: its
        ``task_timeout`` clock starts (for a batch, the batch's whole run)."""
        actor.head_started = now
        if self.options.task_timeout is not None:
            deadline = now + self.options.task_timeout
            for task in actor.queue[0].tasks:
                task.deadline = deadline
            self.tell_supervisor(deadline)

    def tell_supervisor(self, deadline: float) -> None:
        """Wake the supervisor if it would sleep past ``deadline`` (lock held)."""
        if self.wake_at is None or deadline < self.wake_at:
            self.wake_at = deadline
            self.wakeup.notify()

    def take_off(self, sent: Sent, now: float) -> bool:
        """Remove the answered call ``sent`` from its actor's queue; if it was the head, the
        next one starts (its clock with it). False if the actor no longer holds it: the
        supervisor has dealt with its tasks (failed, or back in the queue), so its answers
        are not to be recorded."""
        actor = sent.actor
        for i, queued in enumerate(actor.queue):
            if queued is sent:
                del actor.queue[i]
                if i == 0:
                    self.avg_run_s = moving_average(self.avg_run_s, now - actor.head_started)
                    if actor.queue:
                        self.start_head(actor, now)
                return True
        return False

    # -- the actors: start, death, restart -----------------------------------------------

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
            num_cpus=1,
            max_restarts=0,
            max_task_retries=0,
            runtime_env=self.runtime_env,
            **self.placement(),
        ).remote()
        actor = Actor(handle, slot)
        actor.init_ref = handle.initialize.remote(self.options.setup)
        with self.lock:
            self.counters.worker_starts += 1
            slot.worker = actor
            slot.restart_at = None
            self.actors.append(actor)
        return actor

    def placement(self) -> dict[str, Any]:
        """The scheduling option of a new actor: away from the nodes that lost an actor in the
        last ``AVOID_NODE_S`` (a soft preference: still there if no other node has room)."""
        now = time.monotonic()
        with self.lock:
            self.avoid = {node: until for node, until in self.avoid.items() if until > now}
            nodes = sorted(self.avoid)
        if not nodes:
            return {}
        try:
            from ray.util.scheduling_strategies import NodeLabelSchedulingStrategy, NotIn
        except ImportError:
            return {}  # another Ray version: Ray places it where it likes
        return {"scheduling_strategy": NodeLabelSchedulingStrategy(hard={}, soft={NODE_ID_LABEL: NotIn(*nodes)})}

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

    def event(self, pid: int, text: str) -> None:
        """Report what happened to an actor to the output sink, as an "event" line."""
        self.relay.event(pid, text)

    def kill(self, actor: Actor) -> None:
        try:
            self.ray.kill(actor.handle, no_restart=True)
        except Exception:
            pass

    def lose_actor(self, actor: Actor, cause: str) -> None:
        """``actor`` is gone (its calls dealt with): count it, and have its slot start another,
        at once if it had been ready, else after the backoff."""
        actor.dead = True
        if actor in self.actors:
            self.actors.remove(actor)
        self.tap.pids = frozenset(a.pid for a in self.actors if a.pid)
        slot = actor.slot
        if not actor.ready and actor.pid == 0 and NEVER_STARTED in cause and not actor.init_timed_out:
            # Placed on a node that was dying: no Engine ran, nothing about it is worth a
            # death, a failed start or the place of the last cause; its slot tries again soon.
            if slot.worker is actor:
                slot.worker = None
                slot.restart_at = time.monotonic() + NEVER_STARTED_RETRY_S
            return
        self.counters.worker_deaths += 1
        self.counters.last_death_cause = f"Ray actor {actor.describe()} {cause}"
        if actor.node:
            self.avoid[actor.node] = time.monotonic() + AVOID_NODE_S
        if slot.worker is not actor:
            return
        slot.worker = None
        if actor.ready:
            slot.restart_at = time.monotonic()
        elif actor.failure is not None:
            self.note_failed_start(
                slot, f"a Ray actor ({actor.describe()}) failed to initialise its engine:\n{actor.failure}"
            )
        elif actor.init_timed_out:
            self.note_failed_start(
                slot,
                f"a Ray actor ({actor.describe()}) did not become ready within the "
                f"{self.options.init_timeout:g} s start-up limit (init_timeout) and was killed",
            )
        else:
            self.note_failed_start(slot, f"a Ray actor ({actor.describe()}) {cause} before it was ready")
        self.wakeup.notify()

    def restart_due(self) -> None:
        """Start an actor in every slot whose time has come (a failed start backs off)."""
        with self.lock:
            now = time.monotonic()
            if self.stopping():
                return
            due = [s for s in self.slots if s.worker is None and s.restart_at is not None and s.restart_at <= now]
            for slot in due:
                slot.restart_at = None
        for slot in due:
            try:
                actor = self.start_actor(slot)
            except Exception as exc:
                with self.lock:
                    if not self.stopping():
                        self.note_failed_start(slot, f"a Ray actor could not be created: {death_reason(exc)}")
                        self.announce_finished()
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

    # -- the answers: callbacks, a dead actor's calls ------------------------------------

    def arm(self, launched: list[Sent]) -> None:
        """Hear of each call's end: its ref's done-callback, run by Ray's I/O thread, only
        hands it to the answer thread (:meth:`arrive`)."""
        for sent in launched:
            when_done(sent.ref, functools.partial(self.arrive, sent))

    def arrive(self, sent: Sent, outcome: Any) -> None:
        """A call has ended (on Ray's I/O thread): queue it for the answer thread and wake it
        if it sleeps. No lock: Ray's I/O thread never waits for py4cc's bookkeeping."""
        self.arrived.append((sent, outcome))
        if self.answers_idle:
            self.answers_wake.set()

    def take_answers(self) -> None:
        """The answer thread: wait for ended calls, then take all that have arrived at once
        (:meth:`on_answers`), until stop."""
        arrived = self.arrived
        wake = self.answers_wake
        while not self.stop_requested.is_set():
            if not arrived:
                self.answers_idle = True
                if not arrived:  # checked again once idle shows: arrive sets wake from now on
                    wake.wait()
                self.answers_idle = False
                wake.clear()
                continue
            ended = []
            while arrived:
                ended.append(arrived.popleft())
            try:
                self.on_answers(ended)
            except BaseException:  # a bug: say so, and keep taking answers
                traceback.print_exc()

    def on_answers(self, ended: list[tuple[Sent, Any]]) -> None:
        """Calls have ended: record each task's answer, send the next tasks, and hand the
        answers to the host in one go (``announce_finished``). An actor's death is the
        supervisor's to sort out."""
        answered: list[tuple[Sent, list[tuple]]] = []
        for sent, outcome in ended:
            tasks = sent.tasks
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                answers = [
                    self.answer_of(task, one) for task, one in zip(tasks, outcome if sent.batched else [outcome])
                ]
            except self.ray.exceptions.RayActorError:
                self.post("died", sent.actor, outcome)
                continue
            except BaseException as exc:  # the call itself failed: only these tasks are concerned
                what = f"this task's batch of {len(tasks)} tasks" if sent.batched else "this task"
                answers = [(FAILED, -1, f"the Ray actor could not run {what}: {death_reason(exc)}", 0.0)] * len(tasks)
            answered.append((sent, answers))
        with self.lock:
            now = time.monotonic()
            for sent, answers in answered:
                if not self.take_off(sent, now):
                    continue
                for task, (flag, value, message, run_s) in zip(sent.tasks, answers):
                    if not task.done:
                        self.run_times.add(run_s)
                        self.complete(task, flag, value, message)
            launched = self.dispatch()
            self.announce_finished()
        self.arm(launched)

    def answer_of(self, task: Task, result: tuple) -> tuple:
        """``(flag, value, message, run_s)`` of a call's result; a general task's value
        unpickled here, outside the lock (an answer that cannot be unpickled fails its task),
        unless a host that keeps the answers unpickles them itself."""
        flag, value, message, run_s = result
        call = task.call
        if flag == OK and call is not None and not call.demo and self.deliver.callback is None:
            answer = unpickle_answer(Answer(task.key, flag, value, message, run_s, True))
            return answer.flag, answer.value, answer.message, answer.run_s
        return flag, value, message, run_s

    def on_death(self, actor: Actor, detail: Any) -> None:
        """An actor has died (its watch or a call failed): the call it was running fails (its
        task, or its batch), the calls queued behind it go back to the queue, its slot starts
        another."""
        with self.lock:
            if self.stopping() or actor not in self.actors:
                return  # dealt with already (timed out, a second notice), or moot
            actor.dead = True
            outstanding = list(actor.queue)
        self.kill(actor)  # if only unreachable for now: its calls must end, and now
        reason = death_reason(detail) if isinstance(detail, BaseException) else "it died"
        if not isinstance(detail, BaseException) and detail is not None:
            try:
                detail.result()
            except BaseException as exc:
                reason = death_reason(exc)
        # Each call's own outcome: the first one the death cut short was running, the ones
        # after it had not started; one answered before the death keeps its answers.
        outcomes: list[tuple[str, Any]] = []
        for sent in outstanding:
            try:
                result = self.ray.get(sent.ref, timeout=RESOLVE_S)
                answers = result if sent.batched else [result]
                outcomes.append(("answer", [self.answer_of(task, one) for task, one in zip(sent.tasks, answers)]))
            except self.ray.exceptions.RayActorError:
                outcomes.append(("died", None))
            except BaseException as exc:
                outcomes.append(("failed", exc))
        with self.lock:
            if self.stopping():
                return
            running: Sent | None = None
            requeue: list[Task] = []
            for sent, (kind, value) in zip(outstanding, outcomes):
                live = [task for task in sent.tasks if not task.done]
                if kind == "answer":
                    for task, answer in zip(sent.tasks, value):
                        if not task.done:
                            self.run_times.add(answer[3])
                            self.complete(task, *answer[:3])
                elif kind == "failed":
                    self.fail_all(live, f"the Ray actor could not run this task: {death_reason(value)}")
                elif running is None:
                    running = sent
                    what = f"this task's batch of {len(sent.tasks)} tasks" if sent.batched else "this task"
                    self.fail_all(
                        live,
                        f"the Ray actor running {what} ({actor.describe()}) died; it is being replaced. "
                        f"Ray says: {reason}",
                    )
                else:
                    for task in live:
                        task.deadline = None
                    requeue += live
            self.pending.extendleft(reversed(requeue))
            actor.queue.clear()
            if running is not None:
                what, _ = self.run_names(running.tasks)
                self.event(actor.pid, f"died while running {what}: {reason}")
            else:
                self.event(actor.pid, f"died {'while idle' if actor.ready else 'before it was ready'}: {reason}")
            self.lose_actor(actor, f"died: {reason}")
            launched = self.dispatch()
            self.announce_finished()
        self.arm(launched)

    def on_init(self, actor: Actor, fut: Any) -> None:
        """A new actor's ``initialize`` has answered (or it died starting)."""
        try:
            ok, pid, node, detail = fut.result()
        except BaseException as exc:
            self.on_death(actor, exc)
            return
        self.note_identity(actor, pid, node)
        with self.lock:
            if self.stopping() or actor not in self.actors:
                return
            actor.init_ref = None
            if ok:
                actor.host = detail
                actor.ready = True
                actor.slot.failures = 0
            else:
                actor.failure = detail
                self.event(pid, f"failed to initialise its engine:\n{detail}")
                self.lose_actor(actor, "failed to initialise its engine")
                self.announce_finished()  # tasks that no actor can run now failed
        if not ok:
            self.kill(actor)
            return
        self.watch(actor)
        with self.lock:
            launched = self.dispatch()
        self.arm(launched)

    # -- the supervisor's timeouts, the probe, the stats ---------------------------------

    def supervise(self) -> None:
        try:
            while self.supervise_once():
                pass
        except BaseException:
            traceback.print_exc()

    def supervise_once(self) -> bool:
        """One turn: wait for something to do, do it; False once stop has begun."""
        with self.lock:
            while not self.closed and not self.events:
                timeout = self.next_deadline()
                if timeout is not None and timeout <= 0:
                    break
                self.wake_at = None if timeout is None else time.monotonic() + timeout
                self.wakeup.wait(timeout)
            self.wake_at = 0.0  # awake: nobody needs to wake it
            if self.closed:
                return False
            events, self.events = self.events, []
        for kind, actor, detail in events:
            if kind == "died":
                self.on_death(actor, detail)
            elif kind == "init":
                self.on_init(actor, detail)
        self.expire()
        self.restart_due()
        return True

    def next_deadline(self) -> float | None:
        """Seconds until the nearest deadline (task, start-up, result, restart), or None."""
        deadlines: list[float] = []
        for a in self.actors:
            if a.queue and a.queue[0].tasks[0].deadline is not None:
                deadlines.append(a.queue[0].tasks[0].deadline)
            if self.options.init_timeout is not None and not a.ready and not a.dead:
                deadlines.append(a.started + self.options.init_timeout)
        if self.expiring:
            deadlines.append(next(iter(self.expiring.values())))
        if self.lost is None:
            deadlines += [s.restart_at for s in self.slots if s.worker is None and s.restart_at is not None]
        due = self.batch_due()
        if due is not None:
            deadlines.append(due)
        if not deadlines:
            return None
        return min(deadlines) - time.monotonic()

    def expire(self) -> None:
        """Fail each task that has run past ``task_timeout`` and kill its actor; kill the actors
        not ready within ``init_timeout``; drop the expired results."""
        now = time.monotonic()
        killed = []
        with self.lock:
            if self.closed:
                return
            if self.options.result_ttl is not None:
                self.expire_results(now)
            for actor in list(self.actors):
                head = actor.queue[0].tasks[0] if actor.queue else None
                if head is not None and head.deadline is not None and head.deadline <= now:
                    doomed = actor.queue[0].tasks
                    unstarted = [task for sent in list(actor.queue)[1:] for task in sent.tasks if not task.cancelled]
                    for task in unstarted:
                        task.deadline = None
                    self.pending.extendleft(reversed(unstarted))
                    actor.queue.clear()
                    actor.timed_out = True
                    self.counters.tasks_timed_out += sum(1 for task in doomed if not task.cancelled)
                    limit = self.options.task_timeout
                    what, whose = self.run_names(doomed)
                    self.event(actor.pid, f"{what} ran past task_timeout ({limit:g} s): killing the actor")
                    self.fail_all(
                        doomed,
                        f"{whose} timed out after {limit:g} s; its Ray actor ({actor.describe()}) "
                        "was killed and is being replaced",
                    )
                    self.lose_actor(actor, f"was killed: its task ran past task_timeout ({limit:g} s)")
                    killed.append(actor)
                elif (
                    self.options.init_timeout is not None
                    and not actor.ready
                    and now >= actor.started + self.options.init_timeout
                ):
                    actor.init_timed_out = True
                    self.event(
                        actor.pid, f"not ready within init_timeout ({self.options.init_timeout:g} s): killing it"
                    )
                    self.lose_actor(actor, "was killed: not ready within init_timeout")
                    killed.append(actor)
            launched = self.dispatch()
            self.announce_finished()
        self.arm(launched)
        for actor in killed:
            self.kill(actor)

    def probe_connection(self) -> None:
        """Ask the cluster, every PROBE_INTERVAL_S, whether this process's node is alive;
        after LOST_AFTER_S without a yes, the connection is lost."""
        check = node_checker(self.ray)
        if check is None:
            return  # this Ray offers no way to ask: a loss shows as the actors' deaths
        last_ok = time.monotonic()
        problem = "no answer"
        while not self.stop_requested.wait(PROBE_INTERVAL_S):
            try:
                if check():
                    last_ok = time.monotonic()
                    continue
                problem = "the cluster reports this process's node as dead"
                last_ok = 0.0
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - last_ok >= LOST_AFTER_S:
                self.lose(
                    f"lost the connection to {self.where}: {problem} (for {LOST_AFTER_S:g} s); "
                    f"the tasks it held failed; a new Driver in a new process is needed"
                )
                return

    def lose(self, message: str) -> None:
        """The connection is gone for good: fail every unfinished task, refuse new ones."""
        with self.lock:
            if self.closed:
                return
            self.lost = message
            self.fail_all(self.tasks.values(), message)
            self.pending.clear()
            for actor in self.actors:
                actor.queue.clear()
            self.announce_finished()
            self.event(0, message)

    def snapshot(self, state: str) -> dict[str, Any]:
        """The stats (lock held): the keys of the local pool's, the same meanings."""
        running = queued_in_actors = alive = ready = 0
        for a in self.actors:
            for position, sent in enumerate(a.queue):
                live = sum(1 for task in sent.tasks if not task.cancelled)
                if position == 0:
                    running += live
                else:
                    queued_in_actors += live
            if not a.dead:
                alive += 1
                ready += a.ready
        return task_stats(
            self,
            state,
            queued_in_workers=queued_in_actors,
            running=running,
            alive=alive,
            ready=ready,
            workers_degraded=sum(slot.degraded for slot in self.slots),
            last_worker_failure=self.last_worker_failure or "",
            cluster=self.where,
            cluster_lost=self.lost,
        )


def stop_all_backends() -> None:
    """The exit hook: stop every Ray backend still running (before Ray's own exit hook)."""
    stop_all(RayBackend)
