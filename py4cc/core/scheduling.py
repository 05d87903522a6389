"""The scheduling rule: which worker a queued task goes to, the same for both backends.

A queued task goes to an idle worker if there is one, else (``prefetch`` > 0) behind a busy
worker's current task, so that the worker starts it without a round trip through the host.
:func:`pick_runner` is that rule, written once: the local pool's and the Ray backend's
dispatch loops call it for the task at the head of the queue (the Ray backend with a deeper
``ahead``: its round trip is longer). With ``batching``, :func:`free_runner` and
:func:`batch_to_form` are the rule instead: a free worker takes up to ``max_size`` of the
queue's head as one batch, once the batch is full or its oldest task has waited
``max_wait`` (prefetch does not apply).

A worker here is anything with ``usable()``, ``queue`` (its calls, the running one first)
and ``head_started`` (when that one started).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Callable, Protocol, TypeVar

from ..options import Batching, Options


class Runner(Protocol):
    """What the rule reads of a worker process or an actor."""

    head_started: float

    @property
    def queue(self) -> Any: ...
    def usable(self) -> bool: ...


R = TypeVar("R", bound=Runner)

SHORT_QUEUE_S = 0.002
"""A busy worker takes tasks beyond ``prefetch`` while those it holds would take at most this
long in all at the typical run time: for tasks this short the host's round trip per task is
the cost, and one more task in the pipe saves it; a long task never waits behind more than
``prefetch`` others."""


def pick_runner(
    runners: Iterable[R],
    options: Options,
    now: float,
    avg_run_s: float | None,
    room: Callable[[R], bool],
    ahead: int | None = None,
) -> R | None:
    """The worker that should get the next queued task (or call), or None (it waits).

    An idle usable worker if there is one. Else, with ``prefetch`` > 0 (``ahead`` instead
    when given: the Ray backend's pipeline), a busy one: holding at most that many calls
    behind its current one, or more while they would all have run within
    :data:`SHORT_QUEUE_S` at the typical run time ``avg_run_s``; with ``room(worker)`` for
    this task (the local pool's pipe budget), and not one whose current task has already
    run much longer than usual (it may be a long one: a task queued behind it could not move
    to a worker that frees up sooner); among those, the one whose current task started
    first.
    """
    busy: list[R] = []
    for runner in runners:
        if runner.usable():
            if not runner.queue:
                return runner
            busy.append(runner)
    prefetch = options.prefetch if ahead is None else ahead
    if not prefetch:
        return None
    limit = max(0.002, 4.0 * (avg_run_s if avg_run_s is not None else 0.0))
    best = None
    for runner in busy:
        held = len(runner.queue)
        short = avg_run_s is not None and held * avg_run_s <= SHORT_QUEUE_S
        if (held > prefetch and not short) or now - runner.head_started > limit or not room(runner):
            continue
        if best is None or runner.head_started < best.head_started:
            best = runner
    return best


def moving_average(average: float | None, sample: float) -> float:
    """The typical run time after one more ``sample`` (the prefetch rule's yardstick)."""
    return sample if average is None else average + 0.1 * (sample - average)


class Queued(Protocol):
    """What the batching rule reads of a queued task."""

    queued_at: float


def free_runner(runners: Iterable[R]) -> R | None:
    """A usable worker that holds no task (a batch goes only to a free one), or None."""
    for runner in runners:
        if runner.usable() and not runner.queue:
            return runner
    return None


def batch_to_form(pending: Sequence[Queued], batching: Batching, now: float) -> tuple[int, float | None]:
    """How many of ``pending``'s head a free worker takes as one batch now, and if none yet,
    when to look again: ``max_size`` if that many are queued (never a wait when the batch is
    full); else all that are queued once the oldest has waited ``max_wait``; else
    ``(0, when the oldest will have waited max_wait)``. ``(0, None)``: nothing is queued."""
    queued = len(pending)
    if not queued:
        return 0, None
    if queued >= batching.max_size:
        return batching.max_size, None
    due = pending[0].queued_at + batching.max_wait
    if now >= due:
        return queued, None
    return 0, due
