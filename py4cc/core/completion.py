"""How a backend tells its host that a task ended, and what it remembers of tasks it dropped.

A host that waits without asking Python (rs4py's Rust Driver keeps a table of the keys it
holds) gives the Driver a ``notify(key, finished)`` callable. A backend calls it, with its
own lock held, whenever a task becomes finished (``finished=True``: answered, failed, its
worker died, it timed out, the driver was finalized) and whenever it drops a held task
that nobody retrieved (``finished=False``: its result expired, or it was cancelled). It is
never called for a task whose answer is collected: the collector knows.

A host that keeps the answers itself (rs4py's, so that its callers read them without the
GIL) gives ``deliver(answers)`` and ``host_held()`` instead (a :class:`Deliverer`): the
backend hands it every finished task's answer, a batch per call (what finished since the
last one: one call per dispatcher wake for the local pool), and forgets those tasks. Their
capacity is then the host's to count: admission adds ``host_held()``, the answers the host
holds and has not collected, cancelled or expired, to the tasks in the book.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any, Callable

from ..protocol import FAILED, I64_MAX, I64_MIN, DeliverCallback, NotifyCallback, describe

GONE_MEMORY = 10_000
"""How many dropped keys are remembered, so that retrieving one says why it is gone."""

CANCELLED = "cancelled"
EXPIRED = "expired"


class Notifier:
    """Calls the host's ``notify`` (if any) and never raises: a failing callback is counted
    (``errors``, ``last_error``) and otherwise ignored, since it runs inside the pool."""

    __slots__ = ("callback", "errors", "last_error")

    def __init__(self, callback: NotifyCallback | None) -> None:
        self.callback = callback
        self.errors = 0
        self.last_error = ""

    def __call__(self, key: int, finished: bool) -> None:
        callback = self.callback
        if callback is None:
            return
        try:
            callback(key, finished)
        except BaseException as exc:  # a KeyboardInterrupt here must not break the pool either
            self.errors += 1
            try:
                self.last_error = f"{type(exc).__name__}: {exc}"
            except Exception:
                self.last_error = type(exc).__name__


def host_answer(key: int, flag: int, value: object, message: str, demo: bool) -> tuple[int, int, Any, str]:
    """A task's answer as ``deliver`` hands it to the host: ``value`` a demo task's int in the
    i64 range, None, or bytes, a pickled value (a general task's answer is pickled already,
    by its worker; anything else is pickled here)."""
    if value is None or (type(value) is bytes and not demo):
        return key, flag, value, message
    if demo and type(value) is int and I64_MIN <= value <= I64_MAX:
        return key, flag, value, message
    try:
        return key, flag, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), message
    except Exception as exc:
        return key, FAILED, None, f"the engine's answer {describe(value)} cannot be pickled for the host: {exc}"


class Deliverer:
    """The host's ``deliver`` and ``host_held``, or neither (``callback`` None). Never raises:
    a failing call is counted (``errors``, ``last_error``), as :class:`Notifier` does."""

    __slots__ = ("callback", "count", "errors", "last_error")

    def __init__(self, callback: DeliverCallback | None, count: Callable[[], int] | None) -> None:
        self.callback = callback
        self.count = count
        self.errors = 0
        self.last_error = ""

    def __call__(self, answers: list[tuple[int, int, Any, str]]) -> None:
        if self.callback is None or not answers:
            return
        try:
            self.callback(answers)
        except BaseException as exc:
            self.failed(exc)

    def held(self) -> int:
        """How many delivered answers the host holds (0 without a host, or if it fails)."""
        if self.count is None:
            return 0
        try:
            return int(self.count())
        except BaseException as exc:
            self.failed(exc)
            return 0

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        try:
            self.last_error = f"{type(exc).__name__}: {exc}"
        except Exception:
            self.last_error = type(exc).__name__


class Gone:
    """The last :data:`GONE_MEMORY` keys dropped without being retrieved, with why."""

    __slots__ = ("keys", "limit")

    def __init__(self, limit: int = GONE_MEMORY) -> None:
        self.keys: OrderedDict[int, str] = OrderedDict()
        self.limit = limit

    def remember(self, key: int, why: str) -> None:
        self.keys[key] = why
        if len(self.keys) > self.limit:
            self.keys.popitem(last=False)

    def why(self, key: int) -> str | None:
        return self.keys.get(key)


def cancelled_message(key: int) -> str:
    """The message of retrieve/wait for a key whose task was cancelled."""
    return f"task {key} was cancelled: its result was dropped and cannot be retrieved"


def expired_message(key: int, ttl: float | None) -> str:
    """The message of retrieve/wait for a key whose result expired."""
    limit = "" if ttl is None else f" within {ttl:g} s"
    return f"task {key} expired: its result was not retrieved{limit} (result_ttl) and was dropped"
