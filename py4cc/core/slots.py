"""Recovery's parts: a backend's slots, each restarting its worker on its own, and their backoff.

A backend has one :class:`Slot` per worker (process or actor) it should run. When a slot's
worker dies after it was ready, the slot starts a new one at once. When a worker dies before
it is ready (killed, crashed, ``os._exit``, ``Engine.initialize`` raised, or not ready
within ``init_timeout``), or cannot even be started, that is a failed start: the slot waits
:func:`backoff_delay` (0.1 s, doubling, capped at 30 s) and tries again, for ever. A slot's
count of failures in a row goes back to zero when its worker becomes ready.

While no worker is ready and a slot has failed to start one, the backend is unavailable
(:meth:`py4cc.core.tasks.TaskBook.unavailable`): ``submit`` answers ERROR with the last
cause, and the tasks that were waiting fail with it
(:meth:`py4cc.core.tasks.TaskBook.note_failed_start`). As soon as a worker is ready again,
``submit`` accepts: nobody has to call anything.
"""

from __future__ import annotations

from typing import Any

from ..protocol import RESTART_BACKOFF_FIRST_S, RESTART_BACKOFF_MAX_S


class Slot:
    """One of a backend's places for a worker (a local process or a Ray actor), which
    restarts it as needed; the one slot class of both backends."""

    __slots__ = ("failures", "index", "last_failure", "last_pid", "restart_at", "worker")

    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: Any = None  # its current worker (process or actor), ready or starting
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
