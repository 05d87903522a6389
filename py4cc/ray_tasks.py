"""The Ray backend's tasks: their queue and which actor runs which (a part of
:class:`py4cc.ray_backend.RayBackend`).

Collecting, waiting for and expiring answers are :class:`py4cc.tasks.TaskBook`'s, as in the
local pool; here an answer wakes its waiters at once (no dispatcher batches them) and its
``result_ttl`` wakes the supervisor, a cancelled task an actor holds runs on unheard, and a
pending task goes to an idle actor, else (``prefetch``) behind a busy one's current task.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .completion import CANCELLED
from .protocol import GeneralCall
from .tasks import Task, TaskBook

if TYPE_CHECKING:
    from .ray_actors import Actor


class RayTasks(TaskBook):
    """The tasks and their queue (everything here with ``lock`` held; the attributes are
    set by :class:`py4cc.ray_backend.RayBackend`)."""

    wakeup: threading.Condition  # the supervisor waits on it
    actors: list[Actor]  # ready or starting
    events: list[tuple[str, Actor, Any]]  # for the supervisor
    avg_run_s: float | None
    lost: str | None  # why the connection to the cluster is gone
    wake_at: float | None  # when the supervisor means to wake (None: not before told)

    def cancel(self, key: int) -> bool:
        with self.lock:
            task = self.tasks.pop(key, None)
            if task is None:
                return False
            self.expiring.pop(key, None)
            if task.done:
                self.finished_held -= 1
            else:
                try:
                    self.pending.remove(task)
                except ValueError:
                    # An actor has it: let it run (task_timeout still bounds it) and discard
                    # its answer; stopping it would cost a new actor.
                    task.cancelled = True
                    task.done = True
                    task.call = None
                if task.event is not None:
                    task.event.set()
            self.cancelled += 1
            self.gone.remember(key, CANCELLED)
            self.notify(key, False)
            if self.draining:
                self.drained.notify_all()
            return True

    def complete(self, task: Task, flag: int, value: object, message: str) -> None:
        """Record a task's answer and wake its waiters (once; later answers are ignored)."""
        if not self.record_answer(task, flag, value, message):
            return
        if task.event is not None:
            task.event.set()
        if self.options.result_ttl is not None and not self.closed:
            when = time.monotonic() + self.options.result_ttl
            self.expiring[task.key] = when
            self.tell_supervisor(when)  # it drops the result when its time comes
        self.notify(task.key, True)
        if self.draining:
            self.drained.notify_all()

    def dispatch(self) -> list[tuple[Actor, Task, Any]]:
        """Send pending tasks, oldest first, to idle actors, else (``prefetch``) behind a busy
        one's current task. Returns the calls made, for :meth:`arm` once the lock is let go
        (a callback must not be registered under it: it may run at once)."""
        launched: list[tuple[Actor, Task, Any]] = []
        if self.closed or self.lost is not None:
            return launched
        now = time.monotonic()
        while self.pending:
            actor = next((a for a in self.actors if a.usable() and not a.queue), None)
            if actor is None:
                actor = self.prefetch_target(now)
                if actor is None:
                    break
            task = self.pending.popleft()
            call = task.call
            assert call is not None  # only a finished task has none, and none is pending
            try:
                if isinstance(call, GeneralCall):
                    ref = actor.handle.call.remote(call.key, call.payload)
                else:
                    ref = actor.handle.run.remote(call.key, call.float_features, call.str_features, call.int_feature)
            except Exception as exc:
                self.pending.appendleft(task)
                actor.dead = True  # the supervisor sorts it out
                self.events.append(("died", actor, exc))
                self.wakeup.notify()
                continue
            actor.queue.append((task, ref))
            if len(actor.queue) == 1:
                self.start_head(actor, now)
            launched.append((actor, task, ref))
        return launched

    def prefetch_target(self, now: float) -> Actor | None:
        """The busy actor that should get the next task queued behind its current one:
        holding at most ``prefetch`` tasks, its current one not running much longer than
        usual; among those, the one whose current task started first."""
        prefetch = self.options.prefetch
        if not prefetch:
            return None
        typical = self.avg_run_s if self.avg_run_s is not None else 0.0
        limit = max(0.002, 4.0 * typical)
        best = None
        for a in self.actors:
            if not a.usable() or not a.queue or len(a.queue) > prefetch or now - a.head_started > limit:
                continue
            if best is None or a.head_started < best.head_started:
                best = a
        return best

    def start_head(self, actor: Actor, now: float) -> None:
        actor.head_started = now
        if self.options.task_timeout is not None:
            deadline = now + self.options.task_timeout
            actor.queue[0][0].deadline = deadline
            self.tell_supervisor(deadline)

    def tell_supervisor(self, deadline: float) -> None:
        """Wake the supervisor if it would sleep past ``deadline`` (lock held)."""
        if self.wake_at is None or deadline < self.wake_at:
            self.wake_at = deadline
            self.wakeup.notify()

    def take_off(self, actor: Actor, task: Task) -> None:
        """Remove ``task`` from ``actor``'s queue; if it was the head, the next one starts."""
        for i, (queued, _) in enumerate(actor.queue):
            if queued is task:
                del actor.queue[i]
                if i == 0:
                    now = time.monotonic()
                    run = now - actor.head_started
                    self.avg_run_s = run if self.avg_run_s is None else self.avg_run_s + 0.1 * (run - self.avg_run_s)
                    if actor.queue:
                        self.start_head(actor, now)
                return
