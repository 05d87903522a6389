"""The prefetch rule of py4cc.core.scheduling.pick_runner, on stand-in workers."""

from __future__ import annotations

import types
import unittest
from typing import Any

from py4cc.core.scheduling import SHORT_QUEUE_S, pick_runner


class Runner:
    def __init__(self, held: int, head_started: float = 10.0) -> None:
        self.queue = list(range(held))
        self.head_started = head_started

    def usable(self) -> bool:
        return True


def pick(runners: list[Runner], avg_run_s: float | None, prefetch: int = 1, now: float = 10.0) -> Any:
    options: Any = types.SimpleNamespace(prefetch=prefetch)
    return pick_runner(runners, options, now, avg_run_s, lambda runner: True)


class PrefetchRuleTest(unittest.TestCase):
    def test_an_idle_worker_first(self):
        busy, idle = Runner(1), Runner(0)
        self.assertIs(pick([busy, idle], None), idle)

    def test_prefetch_tasks_behind_a_busy_worker_whatever_their_length(self):
        one = Runner(1)
        self.assertIs(pick([one], None), one)
        self.assertIs(pick([one], 60.0), one, "a long task may have one queued behind it")
        self.assertIsNone(pick([Runner(2)], 60.0), "but not two")
        self.assertIsNone(pick([Runner(2)], None), "nor without a run time known")
        self.assertIsNone(pick([Runner(1)], 0.0001, prefetch=0), "prefetch 0: idle workers only")

    def test_more_behind_a_busy_worker_while_they_would_all_run_within_the_short_queue_time(self):
        short = SHORT_QUEUE_S / 20
        self.assertIsNotNone(pick([Runner(20)], short), "20 of them take SHORT_QUEUE_S in all")
        self.assertIsNone(pick([Runner(21)], short), "21 would take longer")
        # Among those that may take it, the one whose current task started first.
        early, late = Runner(5, head_started=9.9995), Runner(3, head_started=9.9999)
        self.assertIs(pick([late, early], short), early)

    def test_never_behind_a_task_that_has_run_much_longer_than_usual(self):
        short = SHORT_QUEUE_S / 20
        stuck = Runner(2, head_started=10.0)
        self.assertIsNone(pick([stuck], short, now=10.0 + max(0.002, 4 * short) + 0.001))


if __name__ == "__main__":
    unittest.main()
