"""Recovery: each worker slot restarts its worker on its own, for as long as the pool lives.

A pool has one :class:`Slot` per worker process it should run. When a slot's worker dies
after it was ready, the slot starts a new one at once. When a worker dies before it is
ready (killed, crashed, ``os._exit``, ``Engine.initialize`` raised, or not ready within
``init_timeout``), or cannot even be started, that is a failed start: the slot waits
:func:`backoff_delay` (0.1 s, doubling, capped at 30 s) and tries again, for ever. A
slot's count of failures in a row goes back to zero when its worker becomes ready.

While no worker is ready and a slot has failed to start one, the pool is unavailable:
``submit`` answers ERROR with the last cause, and the tasks that were waiting fail with
it. As soon as a worker is ready again, ``submit`` accepts: nobody has to call anything.

For monitoring (``Driver.stats()``), the pool keeps ``last_worker_failure`` (the text of
the last failed start, an Engine's traceback included), ``counters.replacement_failures``
(how many starts failed since ``initialize``), and each slot's ``degraded`` state; each
failed start and each restart is also an event of the workers' output.

Functions named ``note_*`` and ``unavailable`` are called with the pool's lock held.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .processes import stop_workers
from .protocol import FAILED, RESTART_BACKOFF_FIRST_S, RESTART_BACKOFF_MAX_S, exit_text

if TYPE_CHECKING:
    from .pool import Pool
    from .processes import Worker


class Degradable(Protocol):
    """What :func:`unavailable_reason` reads of a worker slot, local or Ray."""

    @property
    def degraded(self) -> bool: ...
    @property
    def restart_at(self) -> float | None: ...


class Slot:
    """One of the pool's places for a worker process."""

    __slots__ = ("failures", "index", "last_failure", "last_pid", "restart_at", "worker")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: Worker | None = None  # its current worker process, ready or starting
        self.failures = 0  # failed starts in a row
        self.restart_at: float | None = None  # when to start a worker (monotonic), if due
        self.last_failure: str | None = None  # why its last start failed
        self.last_pid = 0  # the pid of its latest worker

    @property
    def degraded(self) -> bool:
        """True while its last start failed and no worker of it has been ready since."""
        return self.failures > 0


def backoff_delay(failures: int) -> float:
    """How long a slot waits before its next start, after ``failures`` failed ones in a row."""
    if failures >= 16:
        return RESTART_BACKOFF_MAX_S
    return min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_FIRST_S * 2 ** (failures - 1))


def attach(pool: Pool, slot: Slot, worker: Worker) -> None:
    """``worker`` (just started) fills ``slot``."""
    slot.worker = worker
    slot.restart_at = None
    slot.last_pid = worker.pid
    worker.slot = slot
    pool.workers.append(worker)


def note_ready(worker: Worker) -> None:
    """``worker`` reported ready: its slot's failures are over."""
    if worker.slot is not None:
        worker.slot.failures = 0


def failure_text(pool: Pool, w: Worker, exitcode: int | None) -> str:
    """Why ``w``, which died before it was ready, could not start."""
    if w.failure is not None:
        return f"a worker process (pid {w.pid}) failed to initialise its engine:\n{w.failure}"
    if w.init_timed_out:
        return (
            f"a worker process (pid {w.pid}) did not become ready within the "
            f"{pool.options.init_timeout:g} s start-up limit (init_timeout) and was killed"
        )
    return f"a worker process (pid {w.pid}) exited before it was ready, with {exit_text(exitcode)}"


def note_lost(pool: Pool, w: Worker, exitcode: int | None) -> None:
    """``w`` has exited (and its tasks have been dealt with): its slot starts another one,
    at once if ``w`` had been ready, else after the backoff."""
    slot = w.slot
    if slot is None or slot.worker is not w:
        return
    slot.worker = None
    if w.ready:
        slot.restart_at = time.monotonic()
    else:
        note_failed_start(pool, slot, failure_text(pool, w, exitcode))


def note_failed_start(pool: Pool, slot: Slot, cause: str) -> None:
    """A start failed: back off, remember why, and if no worker is ready, fail the tasks
    waiting for one."""
    slot.failures += 1
    delay = backoff_delay(slot.failures)
    slot.restart_at = time.monotonic() + delay
    slot.last_failure = cause
    pool.last_worker_failure = cause
    pool.counters.replacement_failures += 1
    pool.event(
        0, f"worker slot {slot.index}: start failed ({slot.failures} in a row), next attempt in {delay:g} s: {cause}"
    )
    if not any(w.usable() for w in pool.workers):
        message = f"no worker process is ready to run this task: {cause}"
        while pool.pending:
            pool.complete(pool.pending.popleft(), FAILED, -1, message)


def unavailable(pool: Pool) -> str | None:
    """Why ``submit`` must refuse, or None: no worker is ready and a slot failed to start
    one (a worker merely being replaced after a death does not count)."""
    return unavailable_reason(
        any(w.usable() for w in pool.workers),
        pool.slots,
        pool.last_worker_failure,
        "no worker process is ready",
        "worker processes",
    )


def unavailable_reason(
    any_ready: bool, slots: Sequence[Degradable], last_failure: str | None, not_ready: str, what: str
) -> str | None:
    """For any backend: None while a worker is ready or no slot failed a start; else
    ``"<not_ready>: <last_failure>"`` and when the next restart of its ``what`` is due."""
    if any_ready:
        return None
    failed = [slot for slot in slots if slot.degraded]
    if not failed:
        return None
    due = [slot.restart_at for slot in failed if slot.restart_at is not None]
    when = f"; next attempt in {max(0.0, min(due) - time.monotonic()):.1f} s" if due else ""
    return f"{not_ready}: {last_failure}\n(the driver keeps restarting its {what}{when})"


def next_restart(pool: Pool) -> float | None:
    """When the next slot without a worker is due to start one (monotonic), if any."""
    due = [slot.restart_at for slot in pool.slots if slot.worker is None and slot.restart_at is not None]
    return min(due) if due else None


def restart_due(pool: Pool) -> None:
    """Start a worker in every slot whose time has come; called without the lock, by the
    dispatcher (a start that fails is noted and backed off)."""
    with pool.lock:
        now = time.monotonic()
        due = [s for s in pool.slots if s.worker is None and s.restart_at is not None and s.restart_at <= now]
        if pool.closed:
            due = []
        for slot in due:
            slot.restart_at = None
    for slot in due:
        try:
            new = pool.start_worker()
        except Exception:
            with pool.lock:
                if not pool.closed:
                    note_failed_start(pool, slot, "a worker process could not be started:\n" + traceback.format_exc())
            continue
        with pool.lock:
            stop = pool.closed
            if not stop:
                replaced = slot.last_pid
                attach(pool, slot, new)
                again = f" (after {slot.failures} failed starts)" if slot.failures else ""
                pool.event(new.pid, f"started, replacing worker process {replaced}{again}")
        if stop:
            stop_workers([new])
