"""The seam between the Driver and whatever runs its tasks: :class:`Backend`.

The Driver reaches the tasks only through this interface. :class:`py4cc.pool.Pool` (worker
processes of this machine) implements it; another way of running tasks (a cluster's actors,
say) implements the same methods and answers, and takes its place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .options import Options

FlagAnswer = tuple[int, Any, str]
"""``(flag, key or value, message)``, as the Driver's calls answer (a general task's value
may be anything)."""


class Backend(Protocol):
    """What the Driver needs of whatever runs its tasks. Every method may be called from
    any thread; only ``start`` raises.

    * ``start()``: start the workers; return once they are ready, or raise RuntimeError
      (having stopped what it started).
    * ``submit(floats, strs, n)``: take a checked task: ``(OK, key, "")``, ``(AT_CAPACITY,
      0, CAPACITY_MESSAGE)`` or ``(ERROR, 0, why)`` (stopping, or no worker can run it).
    * ``submit_call(payload)``: the same for a general task, ``payload`` the pickled
      ``(args, kwargs)`` of ``Driver.submit_call``; same capacity, keys and answers.
    * ``collect(key)``: a task's answer without blocking, as ``Driver.retrieve`` gives it.
    * ``wait(key, limit)``: block up to ``limit`` seconds (None: no limit) until the task is
      finished or the backend stops, then answer as ``collect``.
    * ``worker_pids()``, ``held_tasks()``: for tests and monitoring.
    * ``options``: the options it runs with (``n_subprocesses`` resolved once started).
    * ``stats(state)``: the dict of ``Driver.stats()`` (``state`` as the Driver sees it).
    * ``drain(limit)``: refuse new tasks (``DRAINING_MESSAGE``), wait up to ``limit`` seconds
      (None: no limit) until every held task is finished, then ``stop``; answers how many
      tasks that stop failed.
    * ``stop()``: fail the unfinished tasks, stop every worker; idempotent. ``closed`` turns
      True when it begins. ``stop_when_collected()``: the same, from a garbage collection.
    * ``cancel(key)``: drop a held task whatever its state (a queued one never runs, a
      running one's answer is discarded, a finished one is removed); True if it was held.
      Collecting it then answers ERROR saying it was cancelled.

    And every backend honours two options: ``options.notify`` (see :mod:`py4cc.completion`),
    called with the backend's lock held when a task becomes finished (``finished=True``,
    whatever the cause, stop included) or is dropped unretrieved (``finished=False``: expired
    or cancelled), never raising into the backend; and ``options.result_ttl``: a finished
    result not collected within it is dropped (collecting it then answers ERROR, expired).
    Both keep counters: ``cancelled``, ``expired`` (ints).
    """

    closed: bool
    options: Options

    def start(self) -> None: ...
    def submit(self, float_features: list[float], str_features: list[str], int_feature: int) -> FlagAnswer: ...
    def submit_call(self, payload: bytes) -> FlagAnswer: ...
    def collect(self, key: int) -> FlagAnswer: ...
    def wait(self, key: int, limit: float | None) -> FlagAnswer: ...
    def worker_pids(self) -> list[int]: ...
    def held_tasks(self) -> int: ...
    def stats(self, state: str) -> dict[str, Any]: ...
    def drain(self, limit: float | None) -> int: ...
    def stop(self) -> None: ...
    def stop_when_collected(self) -> None: ...
    def cancel(self, key: int) -> bool: ...
