"""The demo model and the demo Engine of py4cc.

``big_model(float_features, str_features, int_feature)`` is

    z = int(sum of |v| over float_features)      (plain left-to-right float addition)
      + sum over str_features of len(s.upper())  (code points, after upper-casing)
      + max(0, int_feature)

Running one task then sleeps :func:`task_sleep_seconds` ``(z)`` = ``(z % 100 + 1) * 0.1 ms``
to emulate a costly step with a deterministic duration.

The Engine protocol (which a user's own Engine class follows too; ``Driver(engine=
"module:Class")`` names it)::

    engine = Class()                                       # once per worker process
    engine.initialize(config=<parsed JSON config>, float_feature_names=[...],
                      str_feature_names=[...], **extra)     # once, before any task
    engine.run(float_features=[...], str_features=[...], int_feature=n) -> (value, message)

``run`` answers ``(value, message)``: a value ``> 0`` is a result (the driver's flag 0);
a value ``<= 0`` means failure (flag 2) and ``message`` should say why. A user's ``run``
may also raise: the driver turns the exception into flag 2 with its traceback. The demo
Engine never raises: any exception becomes ``(-1, <traceback text>)``.

With ``Driver(batching=...)`` an Engine may also have ``run_batch(calls)``: ``calls`` is a
list of ``(args, kwargs)`` pairs, in queue order, and it answers a list of the same length
and order, each item what ``run`` would answer for that call, or an ``Exception`` instance
that fails that task alone. Without it the worker calls ``run`` once per task.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any


def big_model(float_features: Sequence[float], str_features: Sequence[str], int_feature: int) -> int:
    """The demo model (see the module docstring).

    The float sum is an explicit left-to-right loop, not ``sum()`` (Python 3.12 made
    ``sum()`` of floats compensated); the Rust side adds the same way, bit for bit.
    NaN or infinite features make ``int()`` raise (ValueError / OverflowError).
    """
    total = 0.0
    for v in float_features:
        total += abs(float(v))
    z = int(total)
    for s in str_features:
        z += len(s.upper())
    z += max(0, int_feature)
    return z


def task_sleep_seconds(z: int) -> float:
    """How long the demo Engine sleeps for a task whose model value is ``z``."""
    return (z % 100 + 1) * 0.0001


class Engine:
    """The demo Engine: ``big_model`` plus a deterministic sleep; ``run`` never raises."""

    def __init__(self) -> None:
        self.config: Any = None
        self.float_feature_names: list[str] = []
        self.str_feature_names: list[str] = []
        self.extra: dict = {}
        self.tasks_run = 0

    def initialize(
        self,
        config: Any = None,
        float_feature_names: Sequence[str] | None = None,
        str_feature_names: Sequence[str] | None = None,
        **extra: Any,
    ) -> None:
        """Keep the configuration; the demo model needs nothing else."""
        self.config = config
        self.float_feature_names = list(float_feature_names or [])
        self.str_feature_names = list(str_feature_names or [])
        self.extra = dict(extra)

    def run(
        self,
        float_features: Sequence[float] = (),
        str_features: Sequence[str] = (),
        int_feature: int = 0,
    ) -> tuple[int, str]:
        """Compute ``z``, sleep ``task_sleep_seconds(z)``, answer ``(z, "")``.

        Any exception answers ``(-1, <traceback text>)`` instead.
        """
        try:
            z = big_model(float_features, str_features, int_feature)
            time.sleep(task_sleep_seconds(z))
            self.tasks_run += 1
            return z, ""
        except Exception:
            return -1, traceback.format_exc()

    def run_batch(self, calls: Sequence[tuple[Sequence[Any], dict[str, Any]]]) -> list[tuple[int, str]]:
        """``run``'s answer for each ``(args, kwargs)`` of ``calls``, in order, with ONE sleep
        for the whole batch: the longest of its tasks' sleeps, as a vectorised model takes
        about as long for a batch as for its costliest row. Never raises."""
        answers: list[tuple[int, str]] = []
        longest = 0.0
        for args, kwargs in calls:
            try:
                z = big_model(*args, **kwargs)
                longest = max(longest, task_sleep_seconds(z))
                answers.append((z, ""))
                self.tasks_run += 1
            except Exception:
                answers.append((-1, traceback.format_exc()))
        time.sleep(longest)
        return answers
