"""What ``Driver.stats()`` reports: a backend's counters and the Engine's recent run times.

Each backend keeps one :class:`Counters` and one :class:`RunTimes` (in its task book), both
changed and read with its lock held; :func:`task_stats` reads them, and what the backend
counted of its workers, into the plain dict that ``Driver.stats()`` answers (its keys are
``DRIVER_CONTRACT["stats"]``).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Protocol

from ..options import Options
from ..protocol import RUN_TIME_WINDOW, STAT_NAMES


class Counters:
    """Totals since the pool started; each only grows (except ``last_death_cause``)."""

    __slots__ = (
        "batches", "last_death_cause", "replacement_failures", "tasks_done", "tasks_failed", "tasks_timed_out",
        "worker_deaths", "worker_starts",
    )  # fmt: skip

    def __init__(self) -> None:
        self.worker_starts = 0
        """Worker processes started, the first ones and every replacement."""
        self.worker_deaths = 0
        """Worker processes that exited while the pool ran (crashed, killed, timed out)."""
        self.last_death_cause = ""
        """What the latest of those deaths was, in words ("" if none)."""
        self.replacement_failures = 0
        """Replacement workers that never became ready (could not start, died or were
        killed while starting, or their Engine's initialize raised)."""
        self.tasks_done = 0
        """Tasks answered with a result (flag 0)."""
        self.tasks_failed = 0
        """Tasks answered flag 2, for whatever reason (those timed out included)."""
        self.tasks_timed_out = 0
        """Tasks that ran past ``task_timeout``."""
        self.batches = 0
        """Batches sent to a worker (with ``batching``; 0 without)."""


class BatchStats:
    """The sizes of the latest batches and the queue waits of their tasks (seconds from
    admission until their batch was sent), each over a window like the run times'."""

    __slots__ = ("sizes", "waits")

    def __init__(self) -> None:
        self.sizes = RunTimes()
        self.waits = RunTimes()

    def add(self, size: int, waits: list[float]) -> None:
        """One batch of ``size`` tasks was sent; ``waits`` are its tasks' queue waits."""
        self.sizes.add(float(size))
        for wait in waits:
            self.waits.add(wait)

    def mean_size(self) -> float | None:
        ring = self.sizes.ring
        return sum(ring) / len(ring) if ring else None


class RunTimes:
    """The latest ``size`` run times, in arrival order and sorted, so that a percentile is
    one index into a list: adding costs two bisections and a short memmove, reading nothing."""

    __slots__ = ("next", "ring", "size", "sorted")

    def __init__(self, size: int = RUN_TIME_WINDOW) -> None:
        self.size = size
        self.ring: list[float] = []
        self.sorted: list[float] = []
        self.next = 0  # where the next value goes in ring, once it is full

    def add(self, seconds: float) -> None:
        if len(self.ring) < self.size:
            self.ring.append(seconds)
        else:
            oldest = self.ring[self.next]
            del self.sorted[bisect.bisect_left(self.sorted, oldest)]
            self.ring[self.next] = seconds
            self.next = (self.next + 1) % self.size
        bisect.insort(self.sorted, seconds)

    def percentile(self, p: float) -> float | None:
        """The nearest-rank ``p``-th percentile (0 < p <= 100), None while empty."""
        n = len(self.sorted)
        if n == 0:
            return None
        return self.sorted[max(0, math.ceil(p / 100.0 * n) - 1)]

    def __len__(self) -> int:
        return len(self.sorted)


class Book(Protocol):
    """What :func:`task_stats` reads of a backend's task book (:class:`py4cc.core.tasks.TaskBook`)."""

    options: Options
    tasks: dict[int, Any]
    pending: Any
    finished_held: int
    counters: Counters
    run_times: RunTimes
    cancelled: int
    expired: int
    batch_stats: BatchStats

    def held(self, settle: bool = True) -> int: ...


def task_stats(
    book: Book,
    state: str,
    *,
    queued_in_workers: int,
    running: int,
    alive: int,
    ready: int,
    workers_degraded: int,
    last_worker_failure: str,
    cluster: str,
    cluster_lost: str | None,
) -> dict[str, Any]:
    """The stats dict of any backend (lock held), in the contract's key order: what its
    tasks' book holds, plus what the backend counted of its workers."""
    counters = book.counters
    # Once, and not settled: settling now would move a task the caller counted as running
    # to the host's finished answers, counting it twice.
    held = book.held(settle=False)
    values = {
        "state": state,
        "tasks_held": held,
        "tasks_queued": len(book.pending) + queued_in_workers,
        "tasks_running": running,
        "tasks_finished": book.finished_held + held - len(book.tasks),  # the host's answers are finished
        "workers_wanted": book.options.n_subprocesses,
        "workers_alive": alive,
        "workers_ready": ready,
        "worker_starts": counters.worker_starts,
        "worker_deaths": counters.worker_deaths,
        "last_death_cause": counters.last_death_cause,
        "replacement_failures": counters.replacement_failures,
        "tasks_done": counters.tasks_done,
        "tasks_failed": counters.tasks_failed,
        "tasks_timed_out": counters.tasks_timed_out,
        "tasks_cancelled": book.cancelled,
        "tasks_expired": book.expired,
        "run_time_p50": book.run_times.percentile(50.0),
        "run_time_p99": book.run_times.percentile(99.0),
        "run_time_samples": len(book.run_times),
        "workers_degraded": workers_degraded,
        "last_worker_failure": last_worker_failure,
        "cluster": cluster,
        "cluster_lost": cluster_lost,
        "batches": counters.batches,
        "batch_size_mean": book.batch_stats.mean_size(),
        "batch_size_p50": book.batch_stats.sizes.percentile(50.0),
        "batch_size_p99": book.batch_stats.sizes.percentile(99.0),
        "queue_wait_p50_s": book.batch_stats.waits.percentile(50.0),
        "queue_wait_p99_s": book.batch_stats.waits.percentile(99.0),
    }
    return {name: values[name] for name in STAT_NAMES}


def empty(state: str, workers_wanted: int) -> dict[str, Any]:
    """The stats of a driver that has no pool (not initialized yet, or finalized before)."""
    stats: dict[str, Any] = dict.fromkeys(STAT_KEYS, 0)
    stats.update(
        state=state,
        workers_wanted=workers_wanted,
        last_death_cause="",
        last_worker_failure="",
        run_time_p50=None,
        run_time_p99=None,
        cluster="",
        cluster_lost=None,
        batch_size_mean=None,
        batch_size_p50=None,
        batch_size_p99=None,
        queue_wait_p50_s=None,
        queue_wait_p99_s=None,
    )
    return stats


STAT_KEYS = STAT_NAMES
"""Every key of the dict, in order."""
