"""The Driver's flag protocol with the demo Engine (start method: forkserver)."""

from __future__ import annotations

import gc
import threading
import time
import unittest

from py4cc.driver import CAPACITY_MESSAGE, NOT_FINISHED_MESSAGE, Driver
from py4cc.engine import big_model
from py4cc.workload.taskgen import make_tasks

from .support import FLOAT_NAMES, STR_NAMES, TASK, DriverTestCase, pid_alive, wait_until

SLEEP_ENGINE = "py4cc_user_engines:SleepEngine"


def slow_task(seconds: float, value: int = 7):
    return ([seconds, 0.0], ["a", "b", "c"], value)


class SubmitRetrieveTest(DriverTestCase):
    @classmethod
    def setUpClass(cls):
        cls.shared = Driver(n_subprocesses=2).initialize('{"k": 1}', FLOAT_NAMES, STR_NAMES)

    @classmethod
    def tearDownClass(cls):
        cls.shared.finalize()

    def test_flag_0_and_task_removed(self):
        d = self.shared
        flag, key, message = d.submit(*TASK)
        self.assertEqual((flag, message), (0, ""))
        self.assertEqual(d.wait(key, 10), (0, big_model(*TASK), ""))
        flag, value, message = d.retrieve(key)
        self.assertEqual((flag, value), (9, 0))
        self.assertIn(str(key), message)

    def test_keys_positive_and_unique(self):
        d = self.shared
        keys = [d.submit(*TASK)[1] for _ in range(20)]
        self.assertTrue(all(isinstance(k, int) and k > 0 for k in keys))
        self.assertEqual(len(set(keys)), 20)
        for k in keys:
            self.assertEqual(d.wait(k, 10)[0], 0)

    def test_real_tasks_verified(self):
        d = self.shared
        tasks = make_tasks(30, 5)
        keys = [d.submit(*t) for t in tasks]
        for (flag, key, _), task in zip(keys, tasks):
            self.assertEqual(flag, 0)
            self.assertEqual(d.wait(key, 10), (0, big_model(*task), ""))

    def test_retrieve_polling_reaches_flag_0(self):
        d = self.shared
        _, key, _ = d.submit(*TASK)
        deadline = time.monotonic() + 10
        while True:
            flag, value, message = d.retrieve(key)
            if flag != 1 or time.monotonic() > deadline:
                break
            self.assertEqual((value, message), (0, NOT_FINISHED_MESSAGE))
            time.sleep(0.001)
        self.assertEqual((flag, value), (0, 12))

    def test_nan_and_inf_fail_with_traceback(self):
        d = self.shared
        for bad, exc_name in (
            (float("nan"), "ValueError"),
            (float("inf"), "OverflowError"),
            (float("-inf"), "OverflowError"),
        ):
            with self.subTest(bad=bad):
                flag, key, _ = d.submit([bad, 1.0], ["a", "b", "c"], 1)
                self.assertEqual(flag, 0)
                flag, value, message = d.wait(key, 10)
                self.assertEqual(flag, 2)
                self.assertEqual(value, -1)
                self.assertIn("Traceback", message)
                self.assertIn(exc_name, message)
                self.assertEqual(d.retrieve(key)[0], 9)  # removed

    def test_unknown_keys(self):
        d = self.shared
        for key in (10**9, 0, -1, "1", 1.0, True, None):
            with self.subTest(key=key):
                flag, value, message = d.retrieve(key)
                self.assertEqual((flag, value), (9, 0))
                self.assertIn(repr(key), message)
                self.assertEqual(d.wait(key, 0.01)[0], 9)

    def test_wrong_feature_counts(self):
        d = self.shared
        flag, key, message = d.submit([1.0, 2.0, 3.0], ["a", "b", "c"], 1)
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("float features", message)
        self.assertIn("expected 2", message)
        self.assertIn("got 3", message)
        flag, key, message = d.submit([1.0, 2.0], ["a"], 1)
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("str features", message)
        self.assertIn("expected 3", message)
        self.assertIn("got 1", message)

    def test_type_errors(self):
        d = self.shared
        cases = [
            (("1.0", 2.0), ["a", "b", "c"], 1, "float feature 0"),
            ([1.0, True], ["a", "b", "c"], 1, "float feature 1"),
            ([1.0, None], ["a", "b", "c"], 1, "float feature 1"),
            ([1.0, 10**400], ["a", "b", "c"], 1, "float feature 1"),
            ([1.0, 2.0], ["a", 5, "c"], 1, "str feature 1"),
            ([1.0, 2.0], ["a", "b", b"c"], 1, "str feature 2"),
            ([1.0, 2.0], ["a", "b", "c"], 1.0, "int_feature"),
            ([1.0, 2.0], ["a", "b", "c"], True, "int_feature"),
            ([1.0, 2.0], ["a", "b", "c"], "3", "int_feature"),
            (None, ["a", "b", "c"], 1, "float_features"),
            ([1.0, 2.0], "abc", 1, "str_features"),
        ]
        for floats, strs, n, needle in cases:
            with self.subTest(needle=needle, floats=floats, strs=strs, n=n):
                flag, key, message = d.submit(floats, strs, n)
                self.assertEqual((flag, key), (9, 0))
                self.assertIn(needle, message)

    def test_accepts_tuples_ints_and_negative_int_feature(self):
        d = self.shared
        flag, key, _ = d.submit((3, -4), ("x", "ß", "ﬁ"), -50)
        self.assertEqual(flag, 0)
        self.assertEqual(d.wait(key, 10), (0, 7 + 1 + 2 + 2, ""))

    def test_huge_int_key_and_timeout(self):
        # Regression: repr() of an int past the int-to-str digit limit raised, and float()
        # of an int past float's range: flag 9 "... failed unexpectedly: ValueError ...".
        d = self.shared
        huge = 10**5000
        for answer in (d.retrieve(huge), d.wait(huge, 0.01)):
            flag, value, message = answer
            self.assertEqual((flag, value), (9, 0))
            self.assertIn("unknown key", message)
        _, key, _ = d.submit(*TASK)
        self.assertEqual(d.wait(key, 10**400), (0, big_model(*TASK), ""))
        _, key, _ = d.submit(*TASK)
        self.assertIn(d.wait(key, -(10**400))[0], (0, 1))  # does not block
        d.wait(key, 10)

    def test_bad_wait_timeout(self):
        d = self.shared
        _, key, _ = d.submit(*TASK)
        flag, _, message = d.wait(key, "soon")
        self.assertEqual(flag, 9)
        self.assertIn("timeout", message)
        self.assertEqual(d.wait(key, 10)[0], 0)  # the bad call changed nothing

    def test_many_threads_at_once(self):
        d = self.shared
        tasks = make_tasks(320, 11)
        errors = []

        def body(t):
            for i in range(t, len(tasks), 16):
                while True:
                    flag, key, message = d.submit(*tasks[i])
                    if flag != 1:
                        break
                    time.sleep(0.001)
                if flag != 0:
                    errors.append((i, "submit", flag, message))
                    continue
                if t % 2:
                    answer = d.wait(key, 30)
                else:
                    while True:
                        answer = d.retrieve(key)
                        if answer[0] != 1:
                            break
                        time.sleep(0.001)
                if answer != (0, big_model(*tasks[i]), ""):
                    errors.append((i, answer))

        threads = [threading.Thread(target=body, args=(t,)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(errors, [])
        self.assertEqual(d.held_tasks(), 0)


class NotInitializedTest(unittest.TestCase):
    def test_calls_before_initialize(self):
        d = Driver()
        flag, key, message = d.submit(*TASK)
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("not initialized", message)
        self.assertEqual(d.retrieve(1)[0], 9)
        self.assertEqual(d.wait(1, 0.1)[0], 9)
        self.assertEqual(d.worker_pids(), [])
        d.finalize()
        d.finalize()
        self.assertIn("finalized", d.submit(*TASK)[2])


class CapacityTest(DriverTestCase):
    def test_capacity_and_release(self):
        d = self.make_driver(max_tasks=3)
        keys = [d.submit(*TASK)[1] for _ in range(3)]
        self.assertTrue(all(k > 0 for k in keys))
        self.assertEqual(d.submit(*TASK), (1, 0, CAPACITY_MESSAGE))
        # Finished but not retrieved tasks still count.
        time.sleep(0.2)
        self.assertEqual(d.held_tasks(), 3)
        self.assertEqual(d.submit(*TASK), (1, 0, CAPACITY_MESSAGE))
        self.assertEqual(d.retrieve(keys[0])[0], 0)
        flag, key, _ = d.submit(*TASK)
        self.assertEqual(flag, 0)
        self.assertEqual(d.submit(*TASK)[0], 1)
        # A failed task frees its place too once retrieved.
        for k in [*keys[1:], key]:
            self.assertEqual(d.wait(k, 10)[0], 0)
        self.assertEqual(d.held_tasks(), 0)
        self.assertEqual(d.submit([float("nan"), 0.0], ["a", "b", "c"], 0)[0], 0)


class SubmitManyTest(DriverTestCase):
    def test_answers_in_order_as_one_by_one(self):
        d = self.make_driver(max_tasks=3)
        wrong = ([1.0], ["a", "b", "c"], 0)
        answers = d.submit_many([TASK, wrong, TASK, TASK, TASK])
        self.assertEqual([flag for flag, _, _ in answers], [0, 9, 0, 0, 1])
        self.assertEqual(answers[1], d.submit(*wrong))
        self.assertEqual(answers[4], (1, 0, CAPACITY_MESSAGE))
        keys = [key for flag, key, _ in answers if flag == 0]
        self.assertEqual(len(set(keys)), 3)
        for key in keys:
            self.assertEqual(d.wait(key, 10), (0, big_model(*TASK), ""))
        self.assertEqual(d.submit_many([]), [])
        d.finalize()
        answers = d.submit_many([TASK, TASK])
        self.assertEqual([flag for flag, _, _ in answers], [9, 9])
        self.assertIn("finalized", answers[0][2])

    def test_never_raises(self):
        self.assertIn("not initialized", Driver().submit_many([TASK])[0][2])
        d = self.make_driver()
        answers = d.submit_many([TASK, 42])
        self.assertEqual([flag for flag, _, _ in answers], [9, 9])
        self.assertIn("submit_many failed unexpectedly", answers[0][2])


class WaitTest(DriverTestCase):
    def test_wait_times_out_with_flag_1_and_keeps_task(self):
        d = self.make_driver(engine=SLEEP_ENGINE)
        _, key, _ = d.submit(*slow_task(1.0))
        start = time.monotonic()
        self.assertEqual(d.wait(key, 0.2), (1, 0, NOT_FINISHED_MESSAGE))
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.19)
        self.assertLess(elapsed, 0.9)
        self.assertEqual(d.wait(key, 0), (1, 0, NOT_FINISHED_MESSAGE))  # <= 0: no blocking
        self.assertEqual(d.wait(key, -5), (1, 0, NOT_FINISHED_MESSAGE))
        self.assertEqual(d.wait(key, None), (0, 7, "slept"))  # None: until it finishes

    def test_other_threads_proceed_while_one_waits(self):
        # A busy worker whose task runs long gets no task queued behind it, so the
        # quick tasks all go to the other worker.
        d = self.make_driver(engine=SLEEP_ENGINE, n_subprocesses=2)
        _, slow_key, _ = d.submit(*slow_task(1.0, 5))
        answer = []
        waiter = threading.Thread(target=lambda: answer.append(d.wait(slow_key, 10)))
        waiter.start()
        time.sleep(0.05)
        self.assertTrue(waiter.is_alive())
        # Meanwhile this thread submits and retrieves quickly on the other worker.
        start = time.monotonic()
        for _ in range(5):
            flag, key, _ = d.submit(*slow_task(0.0, 9))
            self.assertEqual(flag, 0)
            while True:
                flag, value, _ = d.retrieve(key)
                if flag != 1:
                    break
                time.sleep(0.001)
            self.assertEqual((flag, value), (0, 9))
        self.assertEqual(d.retrieve(slow_key)[0], 1)
        self.assertLess(time.monotonic() - start, 0.6)
        self.assertTrue(waiter.is_alive())
        waiter.join(10)
        self.assertEqual(answer, [(0, 5, "slept")])

    def test_many_waiters_on_one_key(self):
        d = self.make_driver(engine=SLEEP_ENGINE)
        _, key, _ = d.submit(*slow_task(0.3))
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(d.wait(key, 10))) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(sorted(a[0] for a in answers), [0, 9, 9, 9])

    def test_finalize_wakes_a_waiter(self):
        d = self.make_driver(engine=SLEEP_ENGINE)
        _, key, _ = d.submit(*slow_task(30.0))
        answer = []
        waiter = threading.Thread(target=lambda: answer.append(d.wait(key, None)))
        waiter.start()
        time.sleep(0.1)
        d.finalize()
        waiter.join(5)
        self.assertFalse(waiter.is_alive())
        self.assertEqual(answer[0][0], 2)
        self.assertIn("finalized", answer[0][2])


class FinalizeTest(DriverTestCase):
    def test_finalize_twice_and_use_after(self):
        d = self.make_driver(engine=SLEEP_ENGINE, n_subprocesses=2)
        _, done_key, _ = d.submit(*slow_task(0.0, 3))
        time.sleep(0.3)  # let it finish; do not retrieve it
        _, running_key, _ = d.submit(*slow_task(30.0, 4))
        pids = d.worker_pids()
        self.assertEqual(len(pids), 2)
        start = time.monotonic()
        d.finalize()
        self.assertLess(time.monotonic() - start, 5)
        d.finalize()
        self.assertAllGone(pids)
        self.assertEqual(d.worker_pids(), [])
        flag, key, message = d.submit(*slow_task(0.0))
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("finalized", message)
        # A finished task keeps its answer; an unfinished one fails.
        self.assertEqual(d.retrieve(done_key), (0, 3, "slept"))
        flag, _value, message = d.retrieve(running_key)
        self.assertEqual(flag, 2)
        self.assertIn("finalized", message)
        self.assertEqual(d.retrieve(running_key)[0], 9)
        with self.assertRaises(RuntimeError):
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)

    def test_context_manager(self):
        with Driver(n_subprocesses=2).initialize("{}", FLOAT_NAMES, STR_NAMES) as d:
            _, key, _ = d.submit(*TASK)
            self.assertEqual(d.wait(key, 10)[0], 0)
            pids = d.worker_pids()
        self.assertAllGone(pids)
        self.assertIn("finalized", d.submit(*TASK)[2])

    def test_garbage_collected_driver_stops_its_workers(self):
        d = Driver(n_subprocesses=1).initialize("{}", FLOAT_NAMES, STR_NAMES)
        pids = d.worker_pids()
        del d
        gc.collect()
        self.assertTrue(wait_until(lambda: not any(map(pid_alive, pids)), timeout=10))


class InitializeErrorsTest(unittest.TestCase):
    def check_raises(self, exc_type, needle, options=None, config="{}", floats=None, strs=None):
        d = Driver(**{"n_subprocesses": 1, **(options or {})})
        try:
            with self.assertRaises(exc_type) as caught:
                d.initialize(config, FLOAT_NAMES if floats is None else floats, STR_NAMES if strs is None else strs)
            self.assertIn(needle, str(caught.exception))
            self.assertEqual(d.worker_pids(), [])
        finally:
            d.finalize()

    def test_bad_json(self):
        self.check_raises(ValueError, "not valid JSON", config="{nope")
        self.check_raises(TypeError, "JSON", config={"a": 1})

    def test_bad_start_method(self):
        self.check_raises(ValueError, "forkserver", options={"start_method": "threads"})

    def test_bad_engine_names(self):
        for name in ("py4cc.engine", "py4cc.engine:", ":Engine", "a:b:c", "a b:C", 5):
            with self.subTest(name=name):
                self.check_raises(ValueError, "module:Class", options={"engine": name})

    def test_engine_module_not_found(self):
        self.check_raises(ImportError, "no_such_module_xyz", options={"engine": "no_such_module_xyz:Engine"})

    def test_engine_class_missing(self):
        self.check_raises(RuntimeError, "AttributeError", options={"engine": "py4cc.engine:Nope"})

    def test_bad_feature_names(self):
        self.check_raises(TypeError, "float_feature_names", floats="f0")
        self.check_raises(TypeError, "str_feature_names[1]", strs=["a", 2])

    def test_bad_options(self):
        self.check_raises(ValueError, "max_tasks", options={"max_tasks": 0})
        self.check_raises(ValueError, "n_subprocesses", options={"n_subprocesses": "2"})
        self.check_raises(ValueError, "at most 1024", options={"n_subprocesses": 2**64 - 1})
        self.check_raises(ValueError, "task_timeout", options={"task_timeout": -1})
        for bad in (0, -1.5, float("nan"), float("inf"), "1", True, 10**400):
            with self.subTest(init_timeout=bad):
                self.check_raises(ValueError, "init_timeout", options={"init_timeout": bad})
        self.check_raises(ValueError, "prefetch", options={"prefetch": -1})

    def test_initialize_twice(self):
        d = Driver(n_subprocesses=1)
        self.addCleanup(d.finalize)
        self.assertIs(d.initialize("{}", FLOAT_NAMES, STR_NAMES), d)
        with self.assertRaises(RuntimeError) as caught:
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertIn("already initialized", str(caught.exception))

    def test_one_per_cpu(self):
        import os

        d = Driver(n_subprocesses=0)
        self.addCleanup(d.finalize)
        d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertEqual(d.n_subprocesses, os.cpu_count())
        self.assertEqual(len(d.worker_pids()), os.cpu_count())


if __name__ == "__main__":
    unittest.main()
