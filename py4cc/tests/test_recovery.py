"""A pool never gives up: each worker slot restarts on its own, with a capped exponential
backoff, for as long as the Driver lives; engines that exit, fail or hang."""

from __future__ import annotations

import json
import os
import random
import signal
import tempfile
import time
import unittest

from py4cc.core.slots import backoff_delay
from py4cc.driver import Driver

from .support import FLOAT_NAMES, STR_NAMES, DriverTestCase, add_engines_dir, pid_running, ready_workers, wait_until

ENGINES = "py4cc_user_engines"
TASK = ([0.0, 0.0], ["a", "b", "c"])


def submit_until_accepted(d, n, timeout=60.0):
    """Submit until the driver accepts (it refuses while no worker is ready); the answer."""
    answers = []
    accepted = wait_until(lambda: answers.append(d.submit(*TASK, n)) or answers[-1][0] == 0, timeout, step=0.05)
    return accepted, answers


class BackoffTest(unittest.TestCase):
    def test_doubles_from_a_tenth_of_a_second_up_to_thirty(self):
        self.assertEqual([backoff_delay(n) for n in (1, 2, 3, 4)], [0.1, 0.2, 0.4, 0.8])
        self.assertEqual(backoff_delay(9), 25.6)
        self.assertEqual(backoff_delay(10), 30.0)
        self.assertEqual(backoff_delay(10_000), 30.0)


class KillStormTest(DriverTestCase):
    """A worker killed every 50 ms for 6 s (an OOM killer, a flaky node), with an Engine
    that takes 1 s to initialise: the pool must come back to full strength by itself.
    Before per-slot recovery it gave up after 3 deaths in a row (shared by all slots)."""

    def storm(self, method):
        events = []
        d = self.make_driver(
            worker_output=lambda pid, stream, line: events.append(line) if stream == "event" else None,
            n_subprocesses=2,
            start_method=method,
            engine=f"{ENGINES}:SlowInitEngine",
            config='{"init_s": 1.0}',
            max_tasks=100,
        )
        rng = random.Random(7)
        killed = set()
        end = time.monotonic() + 6.0
        while time.monotonic() < end:
            pids = d.worker_pids()
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        self.assertGreater(len(killed), 4)
        calm = time.monotonic()
        self.assertTrue(wait_until(lambda: ready_workers(d) == 2, timeout=90), d._pool.last_worker_failure)
        back = time.monotonic() - calm
        pool = d._pool
        self.assertGreater(pool.counters.replacement_failures, 0)
        self.assertIn("exited before it was ready, with exit code -9 (killed by SIGKILL)", pool.last_worker_failure)
        self.assertFalse(any(slot.degraded for slot in pool.slots))
        # Each failed start was told as an event, with its cause and the next attempt.
        told = [line for line in events if "start failed" in line]
        self.assertTrue(told, events)
        self.assertIn("next attempt in", told[-1])
        self.assertIn("exited before it was ready", told[-1])
        answers = [d.submit(*TASK, n) for n in range(100)]
        self.assertEqual([flag for flag, _, _ in answers], [0] * 100)
        results = [d.wait(key, 30) for _, key, _ in answers]
        self.assertEqual(results, [(0, 1 + 2 * n, "") for n in range(100)])
        self.assertTrue(wait_until(lambda: not any(map(pid_running, killed)), timeout=10))
        failed = pool.counters.replacement_failures
        print(f"\n{method}: {len(killed)} kills, {failed} failed starts, full strength {back:.1f} s after", end=" ")

    def test_storm_with_forkserver(self):
        self.storm("forkserver")

    def test_storm_with_spawn(self):
        self.storm("spawn")


class FailingRestartTest(DriverTestCase):
    def test_an_engine_failing_at_every_restart_is_retried_and_its_traceback_kept(self):
        # Before: a replacement whose Engine.initialize raised was never retried; with one
        # worker the driver refused every task for good.
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.make_driver(config=json.dumps({"marker": marker}), engine=f"{ENGINES}:FragileInitEngine")
            pool = d._pool
            [pid] = d.worker_pids()
            _, running, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 1)
            _, queued, _ = d.submit(*TASK, 2)
            open(marker, "w").close()
            os.kill(pid, signal.SIGKILL)
            flag, _, message = d.wait(running, 10)
            self.assertEqual(flag, 2)
            self.assertIn("died", message)
            flag, _, message = d.wait(queued, 20)
            self.assertEqual(flag, 2)
            self.assertIn("no worker process is ready to run this task", message)
            self.assertIn("the marker file exists", message)
            # Several restarts fail, each with the Engine's traceback.
            self.assertTrue(wait_until(lambda: pool.counters.replacement_failures >= 3, timeout=30))
            flag, key, message = d.submit(*TASK, 3)
            self.assertEqual((flag, key), (9, 0))
            self.assertIn("no worker process is ready", message)
            self.assertIn("RuntimeError: the marker file exists: refusing to start", message)
            self.assertIn("Traceback", pool.last_worker_failure)
            self.assertIn("the marker file exists", pool.last_worker_failure)
            self.assertTrue(pool.slots[0].degraded)
            # The cause goes away: the driver accepts again, nobody calling anything.
            os.remove(marker)
            accepted, answers = submit_until_accepted(d, 4)
            self.assertTrue(accepted, answers[-1])
            self.assertEqual(d.wait(answers[-1][1], 20), (0, 4, ""))
            self.assertFalse(pool.slots[0].degraded)

    def test_one_failing_slot_does_not_stop_the_others(self):
        # Before: deaths before ready were counted for the whole pool, and a slot past the
        # count was abandoned: the driver silently ran on fewer workers for good.
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.make_driver(
                n_subprocesses=2,
                config=json.dumps({"marker": marker}),
                engine=f"{ENGINES}:StartupTroubleEngine",
            )
            pool = d._pool
            victim = d.worker_pids()[0]
            with open(marker, "w") as handle:
                handle.write("exit")  # Engine.initialize: os._exit(4)
            os.kill(victim, signal.SIGKILL)
            self.assertTrue(wait_until(lambda: pool.counters.replacement_failures >= 5, timeout=30))
            self.assertIn("exited before it was ready, with exit code 4", pool.last_worker_failure)
            self.assertEqual(sum(slot.degraded for slot in pool.slots), 1)
            # The other worker serves meanwhile: submit accepts.
            for n in range(5):
                flag, key, message = d.submit(*TASK, n + 1)
                self.assertEqual(flag, 0, message)
                self.assertEqual(d.wait(key, 20), (0, n + 1, ""))
            os.remove(marker)
            self.assertTrue(wait_until(lambda: ready_workers(d) == 2, timeout=60))
            self.assertFalse(any(slot.degraded for slot in pool.slots))


class ExitingEngineTest(DriverTestCase):
    def test_os_exit_in_initialize_at_the_first_start_fails_initialize(self):
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            with open(marker, "w") as handle:
                handle.write("exit")  # Engine.initialize: os._exit(4)
            d = Driver(n_subprocesses=2, engine=f"{ENGINES}:StartupTroubleEngine")
            self.addCleanup(d.finalize)
            add_engines_dir()
            with self.assertRaises(RuntimeError) as caught:
                d.initialize(json.dumps({"marker": marker}), FLOAT_NAMES, STR_NAMES)
        self.assertIn(
            "exited before its engine 'py4cc_user_engines:StartupTroubleEngine' was ready", str(caught.exception)
        )
        self.assertIn("with exit code 4", str(caught.exception))
        self.assertEqual(d.worker_pids(), [])

    def test_os_exit_in_run_fails_that_task_and_the_worker_is_replaced(self):
        d = self.make_driver(engine=f"{ENGINES}:ExitingEngine")
        [pid] = d.worker_pids()
        _, key, _ = d.submit(*TASK, 3)  # ExitingEngine: os._exit(3) for 3
        flag, _, message = d.wait(key, 20)
        self.assertEqual(flag, 2)
        self.assertIn(f"(pid {pid}) running this task died with exit code 3", message)
        self.assertFalse(pid_running(pid))
        _, key, _ = d.submit(*TASK, 5)
        self.assertEqual(d.wait(key, 20), (0, 5, ""))


class DeadAtImportTest(DriverTestCase):
    """A worker killed while it imports the Engine's module (before it can report) leaves
    its reason on stderr only: the failed start's message quotes it."""

    CAUSE = "ImportError: libmodelstore.so.3: cannot open shared object file"

    def dying_driver(self, marker: str, lines: list) -> Driver:
        add_engines_dir()
        d = Driver(
            n_subprocesses=1,
            engine="py4cc_dying_import_engine:QuietEngine",
            worker_env={"PY4CC_TEST_DIE_AT_IMPORT": marker},
            worker_output=lambda pid, stream, line: lines.append((stream, line)),
        )
        self.addCleanup(d.finalize)
        return d

    def test_initialize_s_error_quotes_the_worker_s_stderr(self):
        lines: list = []
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            open(marker, "w").close()
            d = self.dying_driver(marker, lines)
            with self.assertRaises(RuntimeError) as caught:
                d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        message = str(caught.exception)
        self.assertIn("exited before its engine 'py4cc_dying_import_engine:QuietEngine' was ready", message)
        self.assertIn("with exit code 1; its last lines on stderr:\nTraceback (most recent call last):", message)
        self.assertTrue(message.endswith(self.CAUSE), message)
        self.assertIn(("stderr", self.CAUSE), lines)  # still relayed as output too

    def test_a_failed_replacement_quotes_the_worker_s_stderr(self):
        lines: list = []
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.dying_driver(marker, lines)
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)
            pool = d._pool
            [pid] = d.worker_pids()
            open(marker, "w").close()
            os.kill(pid, signal.SIGKILL)
            self.assertTrue(wait_until(lambda: pool.counters.replacement_failures >= 1, timeout=30))
            failure = pool.last_worker_failure
            self.assertIn("exited before it was ready, with exit code 1; its last lines on stderr:\n", failure)
            self.assertTrue(failure.endswith(self.CAUSE), failure)
            flag, key, message = d.submit(*TASK, 1)
            self.assertEqual((flag, key), (9, 0))
            self.assertIn("no worker process is ready", message)
            self.assertIn(self.CAUSE, message)


class HangingEngineTest(DriverTestCase):
    def test_hang_in_a_c_call_with_task_timeout(self):
        d = self.make_driver(engine=f"{ENGINES}:GilHoldingEngine", task_timeout=0.5, config="{}")
        [pid] = d.worker_pids()
        _, key, _ = d.submit([3600.0, 0.0], ["a", "b", "c"], 1)
        flag, _, message = d.wait(key, 20)
        self.assertEqual(flag, 2, message)
        self.assertIn("timed out after 0.5 s", message)
        self.assertFalse(pid_running(pid))  # reported only once its worker is dead
        _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 2)
        self.assertEqual(d.wait(key, 20), (0, 2, "held"))

    def test_hang_without_task_timeout_until_finalize(self):
        d = self.make_driver(n_subprocesses=2, engine=f"{ENGINES}:GilHoldingEngine", config="{}")
        pids = d.worker_pids()
        _, hung, _ = d.submit([3600.0, 0.0], ["a", "b", "c"], 1)
        # The other worker serves meanwhile; the hung task stays unfinished.
        for n in range(3):
            _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], n + 2)
            self.assertEqual(d.wait(key, 20), (0, n + 2, "held"))
        self.assertEqual(d.wait(hung, 0.5)[0], 1)
        d.finalize()
        flag, _, message = d.retrieve(hung)
        self.assertEqual(flag, 2)
        self.assertIn("finalized before this task finished", message)
        self.assertTrue(wait_until(lambda: not any(map(pid_running, pids)), timeout=10))


if __name__ == "__main__":
    unittest.main()
