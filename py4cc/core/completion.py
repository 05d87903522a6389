"""How a backend tells its host that a task ended, and what it remembers of tasks it dropped.

A host that waits without asking Python (rs4py's Rust Driver keeps a table of the keys it
holds) gives the Driver a ``notify(key, finished)`` callable. A backend calls it, with its
own lock held, whenever a task becomes finished (``finished=True``: answered, failed, its
worker died, it timed out, the driver was finalized) and whenever it drops a held task
that nobody retrieved (``finished=False``: its result expired, or it was cancelled). It is
never called for a task whose answer is collected: the collector knows.
"""

from __future__ import annotations

from collections import OrderedDict

from ..protocol import NotifyCallback

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
