"""User Engines, failures inside workers, timeouts, killed workers."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
import unittest
import unittest.mock
import warnings

from py4cc.driver import Driver

from .support import FLOAT_NAMES, STR_NAMES, DriverTestCase, add_engines_dir, pid_alive, wait_until

ENGINES = "py4cc_user_engines"


def task(seconds: float = 0.0, n: int = 7):
    return ([seconds, 0.0], ["a", "b", "c"], n)


class UserEngineTest(DriverTestCase):
    def test_configuration_reaches_each_worker(self):
        d = self.make_driver(
            config='{"add": 100, "nested": [1, "two"]}',
            float_names=["x", "y"],
            str_names=["p", "q", "r"],
            extra={"bonus": "yes", "level": 3},
            engine=f"{ENGINES}:EchoEngine",
            n_subprocesses=2,
        )
        seen_pids = set()
        for i in range(6):
            _, key, _ = d.submit([1.0, 2.0], ["s", "ß", ""], i)
            flag, value, message = d.wait(key, 10)
            self.assertEqual((flag, value), (0, 101 + i))
            info = json.loads(message)
            self.assertEqual(info["config"], {"add": 100, "nested": [1, "two"]})
            self.assertEqual(info["float_feature_names"], ["x", "y"])
            self.assertEqual(info["str_feature_names"], ["p", "q", "r"])
            self.assertEqual(info["extra"], {"bonus": "yes", "level": 3})
            self.assertEqual(info["float_features"], [1.0, 2.0])
            self.assertEqual(info["str_features"], ["s", "ß", ""])
            seen_pids.add(info["pid"])
        self.assertTrue(seen_pids <= set(d.worker_pids()))

    def test_run_raising_gives_flag_2_with_traceback(self):
        d = self.make_driver(engine=f"{ENGINES}:RaisingEngine")
        _, key, _ = d.submit(*task(n=3))
        flag, value, message = d.wait(key, 10)
        self.assertEqual((flag, value), (2, -1))
        self.assertIn("Traceback", message)
        self.assertIn("ValueError: boom from the user engine (3)", message)
        _, key, _ = d.submit(*task(n=4))  # the worker survived
        self.assertEqual(d.wait(key, 10), (0, 4, ""))

    def test_bad_answers_give_flag_2(self):
        d = self.make_driver(engine=f"{ENGINES}:BadReturnEngine")
        expectations = {
            0: ("it returned", "not a tuple"),
            1: ("it returned", "(1, 2, 3)"),
            2: ("its value was", "'7'"),
            3: ("its message was", "None"),
            4: ("its value was", "True"),
        }
        for n, needles in expectations.items():
            with self.subTest(n=n):
                _, key, _ = d.submit(*task(n=n))
                flag, value, message = d.wait(key, 10)
                self.assertEqual((flag, value), (2, -1))
                for needle in needles:
                    self.assertIn(needle, message)
        _, key, _ = d.submit(*task(n=5))
        flag, value, message = d.wait(key, 10)
        self.assertEqual((flag, value), (2, 0))
        self.assertIn("answered 0", message)
        _, key, _ = d.submit(*task(n=6))
        self.assertEqual(d.wait(key, 10), (2, -5, "the model said no"))

    def test_answers_that_cannot_be_checked_fail_the_task_not_the_worker(self):
        # Regression: describing an answer whose repr raises (or comparing a value whose
        # ">" raises) crashed the worker: flag 2 said only "died with exit code 1", and
        # the worker (its Engine) had to be rebuilt.
        d = self.make_driver(engine=f"{ENGINES}:StrangeAnswerEngine")
        [pid] = d.worker_pids()
        for n, needle in (
            (1, "<repr() raised RuntimeError>"),
            (2, "<repr() raised RuntimeError>"),
            (3, "no comparisons for you"),
        ):
            with self.subTest(n=n):
                _, key, _ = d.submit(*task(n=n))
                flag, value, message = d.wait(key, 10)
                self.assertEqual((flag, value), (2, -1), message)
                self.assertIn(needle, message)
        _, key, _ = d.submit(*task(n=4))
        self.assertEqual(d.wait(key, 10), (0, 4, ""))
        self.assertEqual(d.worker_pids(), [pid])

    def test_initialize_failure_raises_with_worker_traceback(self):
        add_engines_dir()
        d = Driver(n_subprocesses=2, engine=f"{ENGINES}:FailingInitEngine")
        self.addCleanup(d.finalize)
        with self.assertRaises(RuntimeError) as caught:
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        text = str(caught.exception)
        self.assertIn("Traceback", text)
        self.assertIn("cannot load the model weights", text)
        self.assertEqual(d.worker_pids(), [])
        self.assertTrue(wait_until(lambda: not multiprocessing.active_children(), timeout=5))

    def test_worker_exiting_mid_task(self):
        d = self.make_driver(engine=f"{ENGINES}:ExitingEngine")
        old = d.worker_pids()
        _, key, _ = d.submit(*task(n=3))
        flag, _value, message = d.wait(key, 10)
        self.assertEqual(flag, 2)
        self.assertIn("died", message)
        self.assertIn("exit code 3", message)
        _, key, _ = d.submit(*task(n=8))
        self.assertEqual(d.wait(key, 20), (0, 8, ""))
        self.assertNotEqual(d.worker_pids(), old)


class KilledWorkerTest(DriverTestCase):
    def test_sigkill_mid_task(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine")
        [pid] = d.worker_pids()
        _, running, _ = d.submit(*task(30.0, 1))
        _, queued, _ = d.submit(*task(0.0, 2))  # may wait in the same worker's pipe
        time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        flag, _value, message = d.wait(running, 10)
        self.assertEqual(flag, 2)
        self.assertIn("died", message)
        self.assertIn("SIGKILL", message)
        self.assertIn(str(pid), message)
        # The task that had not started is run by the replacement worker.
        self.assertEqual(d.wait(queued, 20), (0, 2, "slept"))
        _, key, _ = d.submit(*task(0.0, 3))
        self.assertEqual(d.wait(key, 20), (0, 3, "slept"))
        self.assertTrue(wait_until(lambda: not pid_alive(pid)))
        new = d.worker_pids()
        self.assertEqual(len(new), 1)
        self.assertNotIn(pid, new)
        self.assertEqual(d.held_tasks(), 0)

    def test_kill_idle_worker(self):
        d = self.make_driver(n_subprocesses=2)
        pids = d.worker_pids()
        os.kill(pids[0], signal.SIGKILL)
        self.assertTrue(wait_until(lambda: pids[0] not in d.worker_pids() and len(d.worker_pids()) == 2))
        for _ in range(10):
            _, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
            self.assertEqual(d.wait(key, 10), (0, 7, ""))


class TimeoutTest(DriverTestCase):
    def test_task_timeout(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", task_timeout=0.3)
        [pid] = d.worker_pids()
        start = time.monotonic()
        _, slow, _ = d.submit(*task(30.0, 1))
        _, quick, _ = d.submit(*task(0.0, 2))
        flag, _value, message = d.wait(slow, 10)
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(flag, 2)
        self.assertIn("timed out after 0.3 s", message)
        self.assertEqual(d.wait(quick, 20), (0, 2, "slept"))
        self.assertTrue(wait_until(lambda: not pid_alive(pid)))
        self.assertNotIn(pid, d.worker_pids())
        # Tasks within the limit are untouched.
        _, key, _ = d.submit(*task(0.1, 5))
        self.assertEqual(d.wait(key, 10), (0, 5, "slept"))

    def test_wake_between_flag_clear_and_pipe_read_is_not_lost(self):
        # Regression: the dispatcher cleared its "wake pending" flag before draining the
        # wake-up pipe, so a submit in between wrote a byte that the drain swallowed; the
        # flag then stayed set with the pipe empty, every later wake-up was skipped, and a
        # task started on an idle worker never had its task_timeout enforced (and finalize
        # waited 10 s for the dispatcher). Force that interleaving once.
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", task_timeout=0.5)
        pool = d._pool
        real_read = os.read
        injected = []

        def read(fd, n):
            if fd == pool.wakeup.read_fd and not injected:
                injected.append(True)
                with pool.lock:
                    pool.wakeup.wake()  # another thread's submit, just before the drain
            return real_read(fd, n)

        with unittest.mock.patch("os.read", read):
            _, key, _ = d.submit(*task(0.0, 1))  # starts on the idle worker: wakes the dispatcher
            self.assertEqual(d.wait(key, 10), (0, 1, "slept"))
            self.assertTrue(wait_until(lambda: bool(injected)))
        time.sleep(0.1)
        start = time.monotonic()
        _, slow, _ = d.submit(*task(30.0, 2))
        flag, _, message = d.wait(slow, 5)
        self.assertEqual(flag, 2, message)
        self.assertIn("timed out", message)
        self.assertLess(time.monotonic() - start, 4)
        start = time.monotonic()
        d.finalize()
        self.assertLess(time.monotonic() - start, 5)

    def test_large_task_is_not_sent_into_a_busy_workers_full_pipe(self):
        # Regression: a task larger than the pipe's buffer was prefetched behind a busy
        # worker's task; the send blocked with the driver's lock held until the worker
        # read it, so with a hanging task every call (and task_timeout itself) froze.
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", task_timeout=1.0)
        [pid] = d.worker_pids()
        _, key, _ = d.submit(*task(0.3, 1))  # a known run time, so prefetching is allowed
        self.assertEqual(d.wait(key, 10), (0, 1, "slept"))
        _, slow, _ = d.submit(*task(30.0, 2))
        answer = []
        big = ([0.0, 0.0], ["x" * 1_000_000, "b", "c"], 3)
        sender = threading.Thread(target=lambda: answer.append(d.submit(*big)), daemon=True)
        sender.start()
        sender.join(3)
        if sender.is_alive():  # unblock the driver so that the test can clean up
            os.kill(pid, signal.SIGKILL)
            sender.join(5)
            self.fail("submit of a large task blocked behind a busy worker")
        flag, big_key, _ = answer[0]
        self.assertEqual(flag, 0)
        flag, _, message = d.wait(slow, 10)
        self.assertEqual(flag, 2, message)
        self.assertIn("timed out", message)
        self.assertEqual(d.wait(big_key, 20), (0, 3, "slept"))


class NoPrefetchTest(DriverTestCase):
    def test_prefetch_zero(self):
        d = self.make_driver(n_subprocesses=2, prefetch=0)
        keys = [d.submit([1.0, 2.0], ["a", "b", "c"], i)[1] for i in range(20)]
        for i, key in enumerate(keys):
            self.assertEqual(d.wait(key, 10), (0, 6 + i, ""))


class StartMethodTest(DriverTestCase):
    def setUp(self):
        # Python 3.12+ warns when a threaded process forks (the "fork" start method).
        catcher = warnings.catch_warnings()
        catcher.__enter__()
        self.addCleanup(catcher.__exit__, None, None, None)
        warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)

    def run_tasks(self, d, n=12):
        from py4cc.engine import big_model
        from py4cc.workload.taskgen import make_tasks

        tasks = make_tasks(n, 3)
        keys = [d.submit(*t)[1] for t in tasks]
        for key, t in zip(keys, tasks):
            self.assertEqual(d.wait(key, 20), (0, big_model(*t), ""))

    def test_each_start_method(self):
        for method in ("fork", "forkserver", "spawn"):
            with self.subTest(method=method):
                d = self.make_driver(n_subprocesses=2, start_method=method)
                self.run_tasks(d)
                pids = d.worker_pids()
                d.finalize()
                self.assertAllGone(pids)

    def test_user_engine_with_spawn(self):
        # The engines directory reaches spawned workers through sys.path.
        d = self.make_driver(engine=f"{ENGINES}:EchoEngine", config='{"add": 1}', start_method="spawn")
        _, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 5)
        self.assertEqual(d.wait(key, 20)[:2], (0, 7))

    def test_killed_worker_with_fork(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", start_method="fork")
        [pid] = d.worker_pids()
        _, key, _ = d.submit(*task(30.0, 1))
        time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(d.wait(key, 10)[0], 2)
        _, key, _ = d.submit(*task(0.0, 4))
        self.assertEqual(d.wait(key, 20), (0, 4, "slept"))


if __name__ == "__main__":
    unittest.main()
