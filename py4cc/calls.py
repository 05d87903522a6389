"""The Driver's calls that never raise: the tasks' (submit, submit_call, retrieve, wait,
cancel) and monitoring's (stats, worker_pids, held_tasks).

:class:`Calls` is a part of :class:`py4cc.driver.Driver`: it checks each call's arguments
(:mod:`py4cc.validate`) and hands the task on to the Driver's backend. Any failure, even a
KeyboardInterrupt raised while a call runs, comes back as flag 9 and a message
(:func:`unexpected`), never as an exception. Both kinds of submit become one kind of task
here, at the front: a :class:`py4cc.protocol.Call` of an Engine method with pickled
arguments (``submit``'s is the demo Engine's ``run``, its features by keyword, with the demo
protocol's answer rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .core import stats as stats_module
from .core.tasks import TaskBook, not_issued
from .options import is_int
from .protocol import DEMO_METHOD, ERROR, FINALIZED_MESSAGE, FlagAnswer, encode_arguments, short_repr, unknown_key
from .validate import check_features, encode_call_arguments, wait_limit


def unexpected(call: str, exc: BaseException) -> str:
    """The flag-9 message for an exception that escaped a call; never raises."""
    how = "failed unexpectedly" if isinstance(exc, Exception) else "was interrupted"
    try:
        detail = str(exc)
    except Exception:
        detail = "<str() raised>"
    return f"{call} {how}: {type(exc).__name__}: {detail}" if detail else f"{call} {how}: {type(exc).__name__}"


class Calls:
    """The flag protocol's calls, and monitoring's (a mixin of :class:`py4cc.driver.Driver`,
    which sets these attributes)."""

    n_subprocesses: int
    float_feature_names: list[str]
    str_feature_names: list[str]
    _pool: TaskBook | None
    _finalized: bool

    # -- the protocol -----------------------------------------------------------------

    def submit(self, float_features: Sequence[float], str_features: Sequence[str], int_feature: int) -> FlagAnswer:
        """Queue one task: ``(0, key, "")``, ``(1, 0, CAPACITY_MESSAGE)`` or ``(9, 0, why)``."""
        try:
            return self._submit(float_features, str_features, int_feature)
        except BaseException as exc:  # never raise, not even KeyboardInterrupt
            return ERROR, 0, unexpected("submit", exc)

    def submit_many(self, tasks: Sequence[tuple[Any, Any, Any]]) -> list[FlagAnswer]:
        """Queue several demo tasks at once, each ``(float_features, str_features,
        int_feature)``: the answers of ``submit`` for each, in order, as if submitted one
        after the other (the backend's lock is taken once; a host that combines its callers'
        submissions, as rs4py does, calls it)."""
        try:
            return self._submit_many(tasks)
        except BaseException as exc:  # never raise, not even KeyboardInterrupt
            message = unexpected("submit_many", exc)
            try:
                return [(ERROR, 0, message)] * len(tasks)
            except BaseException:
                return []

    def submit_call(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> FlagAnswer:
        """Queue one general task, ``engine.<call_method>(*args, **kwargs)``: ``(0, key,
        "")``, ``(1, 0, CAPACITY_MESSAGE)`` or ``(9, 0, why)``. ``args`` is a tuple or list,
        ``kwargs`` a dict with str keys (or None); both are pickled here, to reach the
        worker."""
        try:
            return self._submit_call(args, kwargs)
        except BaseException as exc:  # never raise, not even KeyboardInterrupt
            return ERROR, 0, unexpected("submit_call", exc)

    def retrieve(self, key: int) -> FlagAnswer:
        """Answer for ``key``: flag 0 / 2 (task removed), 1 (kept) or 9 (nothing changes)."""
        try:
            return self._retrieve(key)
        except BaseException as exc:  # never raise, not even KeyboardInterrupt
            return ERROR, 0, unexpected("retrieve", exc)

    def wait(self, key: int, timeout: float | None = None) -> FlagAnswer:
        """Block up to ``timeout`` seconds for ``key`` to finish, then answer as ``retrieve``.

        ``timeout=None`` or ``+inf``: no limit (returns when the task finishes or the
        driver is finalized). ``timeout <= 0`` or NaN: do not block. A timeout that is
        not a number answers flag 9. The driver's lock is not held while blocking. A
        KeyboardInterrupt while it blocks answers flag 9; the task is kept.
        """
        try:
            return self._wait(key, timeout)
        except BaseException as exc:  # never raise, not even KeyboardInterrupt
            return ERROR, 0, unexpected("wait", exc)

    def cancel(self, key: int) -> bool:
        """Drop the task under ``key`` whatever its state; True if the driver held it.

        A queued task never runs; a running one is left to finish (``task_timeout`` still
        bounds it) and its answer is discarded; a finished one is removed. Its place among
        ``max_tasks`` is freed at once. Never raises (a wrong key answers False).
        """
        try:
            pool = self._pool
            if pool is None or not is_int(key) or key <= 0:
                return False
            return pool.cancel(int(key))
        except BaseException:  # never raise, not even KeyboardInterrupt
            return False

    # -- monitoring -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The driver's counters, read under the pool's lock once; never raises.

        Keys (``DRIVER_CONTRACT["stats"]``, documented in :mod:`py4cc.core.stats`): ``state``
        ("new", "running", "draining", "finalized"); ``tasks_held`` = ``tasks_queued``
        (not started: in the pool's queue or behind a worker's current task) +
        ``tasks_running`` + ``tasks_finished`` (not retrieved yet); ``workers_wanted``,
        ``workers_alive`` (started, not known dead), ``workers_ready``; ``worker_starts``,
        ``worker_deaths``, ``last_death_cause`` (text, "" if none),
        ``replacement_failures``; ``tasks_done``, ``tasks_failed`` (timeouts included),
        ``tasks_timed_out``, ``tasks_cancelled``, ``tasks_expired``; ``run_time_p50``,
        ``run_time_p99`` (seconds, as the workers timed ``Engine.run``, over the latest
        ``RUN_TIME_WINDOW`` tasks; None before any) and ``run_time_samples``;
        ``workers_degraded`` (slots whose start keeps failing, retried with backoff) and
        ``last_worker_failure`` (why the latest start failed, a traceback included; "").
        """
        pool = self._pool
        if pool is None:
            workers = self.n_subprocesses if is_int(self.n_subprocesses) else 0
            return stats_module.empty("finalized" if self._finalized else "new", workers)
        return pool.stats("running")

    def worker_pids(self) -> list[int]:
        """The pids of the current worker processes (empty before initialize / after finalize).

        A worker that was killed or timed out stays listed until the driver notices
        its exit and replaces it.
        """
        pool = self._pool
        return [] if pool is None else pool.worker_pids()

    def held_tasks(self) -> int:
        """How many tasks the driver holds (queued, running, or finished not retrieved)."""
        pool = self._pool
        return 0 if pool is None else pool.held_tasks()

    # -- internals --------------------------------------------------------------------

    def _submit(self, float_features: Any, str_features: Any, int_feature: Any) -> FlagAnswer:
        pool, refusal = self._open_pool()
        if pool is None:
            return ERROR, 0, refusal
        problem, task = check_features(
            self.float_feature_names, self.str_feature_names, float_features, str_features, int_feature
        )
        if task is None:
            return ERROR, 0, problem
        # The demo call is a general call of the Engine's run, with the features by keyword;
        # the worker applies the demo protocol's answer rule to it (Call.demo).
        float_list, str_list, int_value = task
        kwargs = {"float_features": float_list, "str_features": str_list, "int_feature": int_value}
        return pool.submit(DEMO_METHOD, encode_arguments((), kwargs), True)

    def _submit_many(self, tasks: Sequence[tuple[Any, Any, Any]]) -> list[FlagAnswer]:
        pool, refusal = self._open_pool()
        if pool is None:
            return [(ERROR, 0, refusal)] * len(tasks)
        calls: list[tuple[str, bytes, bool] | FlagAnswer] = []
        for float_features, str_features, int_feature in tasks:
            problem, task = check_features(
                self.float_feature_names, self.str_feature_names, float_features, str_features, int_feature
            )
            if task is None:
                calls.append((ERROR, 0, problem))
                continue
            float_list, str_list, int_value = task
            kwargs = {"float_features": float_list, "str_features": str_list, "int_feature": int_value}
            calls.append((DEMO_METHOD, encode_arguments((), kwargs), True))
        return pool.submit_many(calls)

    def _submit_call(self, args: Any, kwargs: Any) -> FlagAnswer:
        pool, refusal = self._open_pool()
        if pool is None:
            return ERROR, 0, refusal
        problem, payload = encode_call_arguments(args, kwargs)
        if payload is None:
            return ERROR, 0, problem
        return pool.submit(pool.options.setup.call_method, payload, False)

    def _open_pool(self) -> tuple[TaskBook | None, str]:
        """The pool if it takes tasks, else None and why not."""
        pool = self._pool
        if pool is None:
            if self._finalized:
                return None, FINALIZED_MESSAGE
            return None, "the driver is not initialized; call initialize() first"
        if pool.closed:
            return None, FINALIZED_MESSAGE
        return pool, ""

    def _retrieve(self, key: Any) -> FlagAnswer:
        pool = self._pool
        if pool is None:
            if self._finalized:
                return ERROR, 0, f"unknown key {short_repr(key)}: the driver is finalized and holds no tasks"
            return ERROR, 0, f"unknown key {short_repr(key)}: this Driver did not issue it (it is not initialized)"
        if not is_int(key):
            return ERROR, 0, unknown_key(key)
        if key <= 0:
            return ERROR, 0, not_issued(key)  # no Driver issues those
        return pool.collect(int(key))  # which refuses a key it did not issue

    def _wait(self, key: Any, timeout: Any) -> FlagAnswer:
        pool = self._pool
        if pool is None or not is_int(key) or key <= 0:
            return self._retrieve(key)
        problem, limit = wait_limit(timeout)
        if problem:
            return ERROR, 0, problem
        if limit is not None and limit <= 0:
            return self._retrieve(key)
        return pool.wait(int(key), limit)
