"""Driver.drain(timeout): refuse new tasks, let the held ones finish, then finalize."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import unittest

from py4cc.driver import Driver
from py4cc.protocol import DRAINING_MESSAGE, FINALIZED_MESSAGE

from .support import FLOAT_NAMES, STR_NAMES, TASK, DriverTestCase, pid_alive, wait_until

ENGINES = "py4cc_user_engines"
FAILED_BY_FINALIZE = "the driver was finalized before this task finished"


class DrainTest(DriverTestCase):
    def gated_driver(self, **options) -> tuple[Driver, str]:
        directory = tempfile.mkdtemp(prefix="py4cc-gate-")
        self.addCleanup(shutil.rmtree, directory, True)
        gate = os.path.join(directory, "open")
        options.setdefault("n_subprocesses", 1)
        d = self.make_driver(config=f'{{"gate": "{gate}"}}', engine=f"{ENGINES}:GateEngine", prefetch=0, **options)
        return d, gate

    def submit(self, d: Driver, n: int) -> int:
        flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], n)
        self.assertEqual(flag, 0, message)
        return key

    def test_held_tasks_finish_and_new_ones_are_refused(self):
        d, gate = self.gated_driver(max_tasks=10)
        pids = d.worker_pids()
        keys = [self.submit(d, n) for n in (1, 2, 3, 4)]
        outcome = []
        drainer = threading.Thread(target=lambda: outcome.append(d.drain(60)))
        drainer.start()
        self.assertTrue(wait_until(lambda: d.stats()["state"] == "draining"))
        self.assertEqual(d.submit(*TASK), (9, 0, DRAINING_MESSAGE))
        self.assertIn("draining", DRAINING_MESSAGE)
        self.assertEqual(d.retrieve(keys[0]), (1, 0, "The requested task is not finished"))  # calls still work
        open(gate, "w").close()
        self.assertEqual(d.wait(keys[0], 30), (0, 1, ""))
        drainer.join(60)
        self.assertEqual(outcome, [0])
        # Finished tasks keep their answers after the drain's finalize.
        self.assertEqual([d.retrieve(k) for k in keys[1:]], [(0, n, "") for n in (2, 3, 4)])
        self.assertEqual(d.submit(*TASK), (9, 0, FINALIZED_MESSAGE))
        self.assertEqual(d.stats()["state"], "finalized")
        self.assertTrue(wait_until(lambda: not any(pid_alive(p) for p in pids)))

    def test_what_is_unfinished_at_the_timeout_fails(self):
        d, _ = self.gated_driver(max_tasks=10)
        keys = [self.submit(d, n) for n in (1, 2, 3)]
        self.assertEqual(d.drain(0.3), 3)
        self.assertEqual(d.drain(0.3), 0)  # they were failed by the first one
        for key in keys:
            self.assertEqual(d.retrieve(key), (2, -1, FAILED_BY_FINALIZE))
        self.assertEqual(d.stats()["tasks_failed"], 3)

    def test_a_cancelled_task_is_not_waited_for(self):
        d, _ = self.gated_driver()
        key = self.submit(d, 1)
        outcome = []
        drainer = threading.Thread(target=lambda: outcome.append(d.drain(None)))
        drainer.start()
        self.assertTrue(wait_until(lambda: d.stats()["state"] == "draining"))
        self.assertTrue(d.cancel(key))
        drainer.join(30)
        self.assertFalse(drainer.is_alive(), "drain still waits for a cancelled task")
        self.assertEqual(outcome, [0])
        self.assertEqual(d.retrieve(key)[0], 9)

    def test_finished_tasks_do_not_count_as_unfinished(self):
        d = self.make_driver(n_subprocesses=1)
        _, key, _ = d.submit(*TASK)
        self.assertTrue(wait_until(lambda: d.stats()["tasks_finished"] == 1))
        self.assertEqual(d.drain(None), 0)
        self.assertEqual(d.retrieve(key), (0, 12, ""))

    def test_a_timeout_of_zero_or_nan_does_not_wait(self):
        for timeout in (0, -5, math.nan):
            with self.subTest(timeout=timeout):
                d, _ = self.gated_driver()
                key = self.submit(d, 1)
                self.assertEqual(d.drain(timeout), 1)
                self.assertEqual(d.retrieve(key), (2, -1, FAILED_BY_FINALIZE))

    def test_before_initialize_twice_and_after_finalize(self):
        d = Driver(n_subprocesses=1)
        self.assertEqual(d.drain(1), 0)
        self.assertEqual(d.stats()["state"], "finalized")
        with self.assertRaises(RuntimeError) as caught:
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertEqual(str(caught.exception), "Driver.initialize: the driver is finalized; create a new Driver")
        live = self.make_driver()
        self.assertEqual(live.drain(5), 0)
        self.assertEqual(live.drain(5), 0)
        live.finalize()
        self.assertEqual(live.drain(5), 0)

    def test_a_timeout_that_is_not_a_number_changes_nothing(self):
        d = self.make_driver()
        for bad in ("1", [1], True):
            with self.subTest(timeout=bad):
                with self.assertRaises(TypeError) as caught:
                    d.drain(bad)
                self.assertTrue(str(caught.exception).startswith("drain: timeout must be a number of seconds or None"))
        self.assertEqual(d.stats()["state"], "running")
        _, key, _ = d.submit(*TASK)
        self.assertEqual(d.wait(key, 30), (0, 12, ""))


if __name__ == "__main__":
    unittest.main()
