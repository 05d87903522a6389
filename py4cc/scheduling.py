"""Which worker runs which task: a part of :class:`py4cc.pool.Pool`.

A pending task goes to an idle worker if there is one, else (``prefetch`` > 0) behind a
busy worker's current task, so that the worker starts it without a round trip through this
process; the tasks queued behind a lost worker's running one go back to the head of the
queue. A task's ``task_timeout`` deadline is set when its worker starts it.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import TYPE_CHECKING

from .protocol import PREFETCH_BYTES, encode_call

if TYPE_CHECKING:
    from .options import Options
    from .processes import Worker
    from .tasks import Task


class Scheduling:
    """Handing tasks to workers (a mixin of :class:`py4cc.pool.Pool`, which sets these
    attributes). Called with ``lock`` held."""

    options: Options
    pending: deque[Task]
    workers: list[Worker]
    avg_run_s: float | None  # moving average of task run times
    closed: bool

    def assign(self, worker: Worker, task: Task) -> bool:
        """Send ``task`` to ``worker``; False (task untouched) if the pipe is broken."""
        try:
            worker.conn.send_bytes(encode_call(task.call))
        except (OSError, ValueError):
            worker.dead = True
            return False
        worker.queue.append(task)
        task.worker = worker
        if len(worker.queue) == 1:
            self.start_head(worker, time.monotonic())
        return True

    def start_head(self, worker: Worker, now: float) -> None:
        """``worker.queue[0]`` starts (about) now: note it, and set its deadline."""
        worker.head_started = now
        if self.options.task_timeout is not None:
            worker.queue[0].deadline = now + self.options.task_timeout

    def note_run_time(self, seconds: float) -> None:
        if self.avg_run_s is None:
            self.avg_run_s = seconds
        else:
            self.avg_run_s += 0.1 * (seconds - self.avg_run_s)

    def prefetch_target(self, now: float, task: Task) -> Worker | None:
        """The busy worker that should get ``task`` queued behind its current one.

        Only workers holding at most ``prefetch`` tasks qualify, whose pipe keeps room
        for ``task`` (``PREFETCH_BYTES``), and not one whose current task has already
        run much longer than usual (it may be a long one: a task queued behind it could
        not move to a worker that frees up sooner). Among the rest, the one whose
        current task started first.
        """
        prefetch = self.options.prefetch
        if not prefetch:
            return None
        typical = self.avg_run_s if self.avg_run_s is not None else 0.0
        limit = max(0.002, 4.0 * typical)
        best = None
        for w in self.workers:
            if not w.usable() or not w.queue or len(w.queue) > prefetch:
                continue
            if now - w.head_started > limit:
                continue
            if sum(t.size for t in itertools.islice(w.queue, 1, None)) + task.size > PREFETCH_BYTES:
                continue
            if best is None or w.head_started < best.head_started:
                best = w
        return best

    def dispatch(self) -> bool:
        """Give pending tasks to workers, oldest task first: to an idle worker if there
        is one, else (``prefetch`` > 0) queued behind a busy worker's current task, so that
        it starts without a round trip through this process. Returns True if a task
        started and has a deadline (the dispatcher must learn it). Once stop has begun
        nothing is sent: its tasks are failed already."""
        if self.closed:
            return False
        started = False
        now = time.monotonic()
        while self.pending:
            target = None
            for w in self.workers:
                if w.usable() and not w.queue:
                    target = w
                    break
            if target is None:
                target = self.prefetch_target(now, self.pending[0])
                if target is None:
                    break
            task = self.pending.popleft()
            if self.assign(target, task):
                started = started or len(target.queue) == 1
            else:
                self.pending.appendleft(task)
        return started and self.options.task_timeout is not None

    def requeue_unstarted(self, w: Worker) -> None:
        """Put the tasks queued behind ``w``'s running one back at the head of pending."""
        while len(w.queue) > 1:
            task = w.queue.pop()
            task.worker = None
            task.deadline = None
            if not task.cancelled:
                self.pending.appendleft(task)
