"""The Ray backend's supervisor and probe threads, and its stats (a part of
:class:`py4cc.ray_backend.RayBackend`).

The supervisor does what may block or must wait: it sorts out a dead actor's calls, enforces
``task_timeout`` and ``init_timeout`` (the actor is killed), drops expired results, and
starts actors. The probe asks the cluster every second whether this process's node is
alive; after ``LOST_AFTER_S`` without a yes the connection is lost for good.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

from .protocol import FAILED
from .ray_answers import RayAnswers
from .ray_connect import node_checker
from .stats import task_stats

PROBE_INTERVAL_S = 1.0
"""How often the probe thread asks the cluster whether this process's node is alive."""
LOST_AFTER_S = 10.0
"""After this long without a yes, the connection to the cluster is lost for good."""


class RaySupervisor(RayAnswers):
    """The supervisor's and the probe's work (the attributes are set by
    :class:`py4cc.ray_backend.RayBackend`)."""

    stop_requested: threading.Event  # ends the probe's sleep

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
            if a.queue and a.queue[0][0].deadline is not None:
                deadlines.append(a.queue[0][0].deadline)
            if self.options.init_timeout is not None and not a.ready and not a.dead:
                deadlines.append(a.started + self.options.init_timeout)
        if self.expiring:
            deadlines.append(next(iter(self.expiring.values())))
        if self.lost is None:
            deadlines += [s.restart_at for s in self.slots if s.actor is None and s.restart_at is not None]
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
                head = actor.queue[0][0] if actor.queue else None
                if head is not None and head.deadline is not None and head.deadline <= now:
                    unstarted = [task for task, _ in list(actor.queue)[1:] if not task.cancelled]
                    for task in unstarted:
                        task.deadline = None
                    self.pending.extendleft(reversed(unstarted))
                    actor.queue.clear()
                    actor.timed_out = True
                    self.counters.tasks_timed_out += 1
                    limit = self.options.task_timeout
                    self.event(actor.pid, f"task {head.key} ran past task_timeout ({limit:g} s): killing the actor")
                    self.complete(
                        head,
                        FAILED,
                        -1,
                        f"the task timed out after {limit:g} s; its Ray actor ({actor.describe()}) "
                        f"was killed and is being replaced",
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
            for task in self.tasks.values():
                self.complete(task, FAILED, -1, message)
            self.pending.clear()
            for actor in self.actors:
                actor.queue.clear()
            self.event(0, message)

    def snapshot(self, state: str) -> dict[str, Any]:
        """The stats (lock held): the keys of the local pool's, the same meanings."""
        running = queued_in_actors = alive = ready = 0
        for a in self.actors:
            for position, (task, _) in enumerate(a.queue):
                if not task.cancelled:
                    if position == 0:
                        running += 1
                    else:
                        queued_in_actors += 1
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
            last_worker_failure=self.last_worker_failure,
            cluster=self.where,
            cluster_lost=self.lost,
        )
