"""Dynamic batching (``Driver(batching=...)``): how batches form, the batch wire, the worker's
``run_batch`` rules, and that every per-task rule (keys, capacity, cancel, expiry, loss,
task_timeout) holds for tasks inside batches."""

from __future__ import annotations

import math
import os
import signal
import unittest
from typing import Any

from py4cc import engine as demo
from py4cc.core.scheduling import batch_to_form
from py4cc.driver import FAILED, Driver
from py4cc.options import Batching, check_batching
from py4cc.protocol import (
    AT_CAPACITY,
    CAPACITY_MESSAGE,
    ERROR,
    OK,
    Answer,
    Call,
    decode_call,
    decode_report,
    encode_arguments,
    encode_batch,
    encode_call,
    encode_report,
    frame,
    take_messages,
)
from py4cc.worker import run_batch

from .support import TASK, DriverTestCase, add_engines_dir, wait_until

BATCH_ENGINE = "py4cc_batch_engines:BatchEngine"
PLAIN_ENGINE = "py4cc_batch_engines:PlainEngine"
PATIENCE = 30.0
LONG_WAIT = 60.0  # a max_wait no test waits out: a batch that forms did so by size


def general(key: int, *args: object) -> Call:
    return Call(key, "run", encode_arguments(args, {}), False)


class Queued:
    def __init__(self, queued_at: float) -> None:
        self.queued_at = queued_at


class OptionTest(unittest.TestCase):
    def test_batching_is_checked_with_a_clear_error(self):
        self.assertIsNone(check_batching(None))
        self.assertEqual(check_batching(Batching(8, 0.002)), Batching(8, 0.002))
        self.assertEqual(check_batching([1, 0]), Batching(1, 0.0))
        self.assertIs(type(check_batching((3, 1))), Batching)
        for bad, kind, words in [
            ((0, 0.1), ValueError, "max_size must be an int >= 1"),
            ((True, 0.1), ValueError, "max_size must be an int >= 1"),
            ((2.0, 0.1), ValueError, "max_size must be an int >= 1"),
            ((4, -0.5), ValueError, "max_wait must be a finite number of seconds >= 0"),
            ((4, math.inf), ValueError, "max_wait must be a finite number of seconds >= 0"),
            ((4, math.nan), ValueError, "max_wait must be a finite number of seconds >= 0"),
            ((4, False), ValueError, "max_wait must be a finite number of seconds >= 0"),
            ((4, "1"), ValueError, "max_wait must be a finite number of seconds >= 0"),
            ((4,), TypeError, "batching must be None, py4cc.options.Batching"),
            ("ab", TypeError, "batching must be None, py4cc.options.Batching"),
            (8, TypeError, "batching must be None, py4cc.options.Batching"),
        ]:
            with self.subTest(bad=bad):
                with self.assertRaises(kind) as caught:
                    check_batching(bad)
                self.assertIn(words, str(caught.exception))

    def test_initialize_refuses_bad_batching_before_starting_anything(self):
        driver = Driver(n_subprocesses=1, batching=(0, 1.0))
        with self.assertRaises(ValueError) as caught:
            driver.initialize("{}", [], [])
        self.assertIn("batching: max_size must be an int >= 1, got 0", str(caught.exception))
        self.assertEqual(driver.worker_pids(), [])


class FormationRuleTest(unittest.TestCase):
    rule = Batching(4, 0.5)

    def test_a_full_batch_forms_at_once_and_takes_max_size(self):
        pending = [Queued(10.0) for _ in range(6)]
        self.assertEqual(batch_to_form(pending, self.rule, 10.0), (4, None))
        self.assertEqual(batch_to_form(pending[:4], self.rule, 10.0), (4, None))

    def test_a_short_batch_waits_until_its_oldest_task_has_waited_max_wait(self):
        pending = [Queued(10.0), Queued(10.3)]
        self.assertEqual(batch_to_form(pending, self.rule, 10.2), (0, 10.5))
        self.assertEqual(batch_to_form(pending, self.rule, 10.5), (2, None))
        self.assertEqual(batch_to_form([], self.rule, 10.5), (0, None))
        self.assertEqual(batch_to_form(pending, Batching(4, 0.0), 10.0), (2, None))


class WireTest(unittest.TestCase):
    def test_a_batch_is_one_message_of_calls_in_order(self):
        calls = [general(1, 5), Call(2, "run", encode_arguments((), {"int_feature": 3}), True), general(3, "x")]
        back = decode_call(encode_batch(calls))
        self.assertIsInstance(back, list)
        self.assertEqual(back, calls)
        self.assertTrue(all(type(call) is Call for call in back))
        self.assertEqual(decode_call(encode_call(calls[0])), calls[0])

    def test_a_batch_of_answers_in_one_write_splits_into_one_answer_each(self):
        answers = [Answer(k, OK, k * 2, "", 0.5) for k in range(1, 65)]
        data = b"".join(frame(encode_report(a)) for a in answers)
        inbox = bytearray(data[:100])
        got = take_messages(inbox)
        inbox += data[100:]
        got += take_messages(inbox)
        self.assertEqual([decode_report(m) for m in got], answers)
        self.assertEqual(inbox, bytearray())


class WorkerRunBatchTest(unittest.TestCase):
    """The worker's rules for a batch, on Engines in this process."""

    def setUp(self):
        add_engines_dir()
        import py4cc_batch_engines

        self.batch_engine = py4cc_batch_engines.BatchEngine()
        self.batch_engine.initialize()
        self.plain_engine = py4cc_batch_engines.PlainEngine()
        self.plain_engine.initialize()

    def run_general(self, engine, items):
        answers = run_batch(engine, [general(k, item) for k, item in enumerate(items, 1)])
        self.assertEqual([a.key for a in answers], list(range(1, len(items) + 1)))
        return answers

    def test_each_answer_goes_to_its_task_in_order(self):
        answers = self.run_general(self.batch_engine, [1, 5, 7])
        self.assertEqual(self.batch_engine.batches, [[1, 5, 7]])
        self.assertEqual([(a.flag, decode_value(a)) for a in answers], [(OK, 2), (OK, 10), (OK, 14)])
        self.assertTrue(all(a.run_s >= 0.0 for a in answers))

    def test_an_exception_item_fails_its_task_alone(self):
        answers = self.run_general(self.batch_engine, [1, "raise", 3])
        self.assertEqual([a.flag for a in answers], [OK, FAILED, OK])
        self.assertEqual(decode_value(answers[2]), 6)
        self.assertIsNone(answers[1].value)
        self.assertEqual(answers[1].message, "ValueError: bad item at 1")

    def test_a_raising_run_batch_fails_every_task_with_its_traceback(self):
        answers = self.run_general(self.batch_engine, [1, "explode", 3])
        for a in answers:
            self.assertEqual((a.flag, a.value), (FAILED, None))
            self.assertIn("Engine.run_batch raised for the batch of 3 tasks", a.message)
            self.assertIn("Traceback (most recent call last)", a.message)
            self.assertIn("RuntimeError: the whole batch exploded", a.message)

    def test_a_wrong_length_or_a_non_list_fails_every_task_naming_both_lengths(self):
        for items, said in [
            ([1, "short", 3], "it returned a list of length 2"),
            ([1, "not a list"], "it returned (1, 'not a list') (type tuple)"),
        ]:
            with self.subTest(items=items):
                answers = self.run_general(self.batch_engine, items)
                for a in answers:
                    self.assertEqual(a.flag, FAILED)
                    self.assertIn(f"Engine.run_batch must return a list of {len(items)} answers", a.message)
                    self.assertIn(said, a.message)

    def test_without_run_batch_run_is_called_once_per_task(self):
        answers = self.run_general(self.plain_engine, [1, "raise", 3])
        self.assertEqual(self.plain_engine.calls, 3)
        self.assertEqual([a.flag for a in answers], [OK, FAILED, OK])
        self.assertEqual([decode_value(answers[0]), decode_value(answers[2])], [2, 4])
        self.assertIn("Traceback (most recent call last)", answers[1].message)
        self.assertIn("KeyError: 'plain engine refuses'", answers[1].message)

    def test_the_demo_engine_batch_follows_the_demo_rules_per_item(self):
        engine = demo.Engine()
        engine.initialize()
        rows = [([1.5, -2.25], ["abc"], 3), ([], [], 0), ([math.nan], [], 1), ([2.0], ["é"], 4)]
        calls = [
            Call(k, "run", encode_arguments((), {"float_features": f, "str_features": s, "int_feature": n}), True)
            for k, (f, s, n) in enumerate(rows, 1)
        ]
        answers = run_batch(engine, calls)
        self.assertEqual((answers[0].flag, answers[0].value), (OK, demo.big_model(*rows[0])))
        self.assertEqual((answers[1].flag, answers[1].value), (FAILED, 0))
        self.assertIn("the model answered 0 (a value <= 0 means the model failed)", answers[1].message)
        self.assertEqual((answers[2].flag, answers[2].value), (FAILED, -1))
        self.assertIn("ValueError: cannot convert float NaN to integer", answers[2].message)
        self.assertEqual((answers[3].flag, answers[3].value), (OK, demo.big_model(*rows[3])))

    def test_a_task_whose_arguments_cannot_be_unpickled_fails_alone(self):
        calls = [general(1, 4), Call(2, "run", b"not a pickle", False), general(3, 5)]
        answers = run_batch(self.batch_engine, calls)
        self.assertEqual([a.flag for a in answers], [OK, FAILED, OK])
        self.assertIn("the task's arguments could not be unpickled", answers[1].message)
        self.assertEqual(self.batch_engine.batches, [[4, 5]])


class MixedEngine:
    """``run_batch`` answers a demo call ``(int_feature, "")`` and a general one ``10 * x``;
    ``predict`` has no batch method."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def run_batch(self, calls):
        self.batch_sizes.append(len(calls))
        return [(kwargs["int_feature"], "") if "int_feature" in kwargs else 10 * args[0] for args, kwargs in calls]

    def predict(self, x):
        return x + 0.5


class MixedBatchTest(unittest.TestCase):
    def test_demo_and_general_calls_and_other_methods_in_one_batch_each_get_their_rule(self):
        engine = MixedEngine()
        demo_call = lambda key, n: Call(key, "run", encode_arguments((), {"int_feature": n}), True)  # noqa: E731
        calls = [
            general(1, 3),
            demo_call(2, 5),
            Call(3, "predict", encode_arguments((7,), {}), False),
            general(4, 4),
            demo_call(5, 0),
        ]
        answers = run_batch(engine, calls)
        self.assertEqual([a.key for a in answers], [1, 2, 3, 4, 5])
        self.assertEqual([(a.flag, decode_value(a)) for a in answers[:4]], [(OK, 30), (OK, 5), (OK, 7.5), (OK, 40)])
        self.assertEqual((answers[4].flag, answers[4].value), (FAILED, 0))
        self.assertIn("the model answered 0", answers[4].message)
        self.assertEqual(engine.batch_sizes, [2, 2])  # the general pair, the demo pair; predict one by one


def decode_value(answer: Answer) -> object:
    import pickle

    return pickle.loads(answer.value) if answer.pickled else answer.value


class BatchingDriverTest(DriverTestCase):
    """Batches through a Driver with one worker process."""

    def make(self, max_size: int, max_wait: float, engine: str = BATCH_ENGINE, **options: Any) -> Driver:
        options.setdefault("start_method", "fork")
        options.setdefault("worker_output", self.collect_output)
        self.output: list[tuple[int, str, str]] = []
        add_engines_dir()
        return self.make_driver(engine=engine, batching=Batching(max_size, max_wait), **options)

    def collect_output(self, pid: int, stream: str, line: str) -> None:
        self.output.append((pid, stream, line))

    def events(self) -> list[str]:
        return [line for _, stream, line in self.output if stream == "event"]

    def history(self, driver: Driver, batch_size: int) -> list[list[object]]:
        """The batches the Engine ran so far (asked in a full batch, so that it forms at once)."""
        key, *_ = self.submit_all(driver, ["history"] + [0] * (batch_size - 1))
        flag, value, message = driver.wait(key, PATIENCE)
        self.assertEqual(flag, OK, message)
        return value

    def submit_all(self, driver: Driver, items: list[object]) -> list[int]:
        keys = []
        for item in items:
            flag, key, message = driver.submit_call((item,))
            self.assertEqual(flag, OK, message)
            keys.append(key)
        return keys

    def test_a_batch_forms_by_size_without_waiting_out_max_wait(self):
        driver = self.make(4, LONG_WAIT)
        keys = self.submit_all(driver, [1, 2, 3, 4, 5, 6, 7, 8])
        for key, item in zip(keys, [1, 2, 3, 4, 5, 6, 7, 8]):
            self.assertEqual(driver.wait(key, PATIENCE), (OK, 2 * item, ""))
        self.assertEqual(self.history(driver, 4), [[1, 2, 3, 4], [5, 6, 7, 8]])
        stats = driver.stats()
        self.assertEqual((stats["batches"], stats["batch_size_mean"], stats["batch_size_p99"]), (3, 4.0, 4.0))
        self.assertEqual(stats["batch_size_p50"], 4.0)

    def test_a_short_batch_forms_once_its_oldest_task_has_waited_max_wait(self):
        driver = self.make(100, 0.3)
        keys = self.submit_all(driver, [1, 2, 3])
        for key, item in zip(keys, [1, 2, 3]):
            self.assertEqual(driver.wait(key, PATIENCE), (OK, 2 * item, ""))
        self.assertEqual(self.history(driver, 1), [[1, 2, 3]])
        stats = driver.stats()
        self.assertEqual(stats["batches"], 2)  # and the history's own
        self.assertGreaterEqual(stats["queue_wait_p99_s"], 0.3)  # the rule's lower bound, not a timing

    def test_per_item_exceptions_raising_and_wrong_length_batches(self):
        driver = self.make(3, LONG_WAIT)
        ok1, bad, ok3 = self.submit_all(driver, [1, "raise", 3])
        self.assertEqual(driver.wait(ok1, PATIENCE), (OK, 2, ""))
        self.assertEqual(driver.wait(bad, PATIENCE), (FAILED, None, "ValueError: bad item at 1"))
        self.assertEqual(driver.wait(ok3, PATIENCE), (OK, 6, ""))
        for key in self.submit_all(driver, [1, "explode", 3]):
            flag, value, message = driver.wait(key, PATIENCE)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn("RuntimeError: the whole batch exploded", message)
        for key in self.submit_all(driver, [1, "short", 3]):
            flag, value, message = driver.wait(key, PATIENCE)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn(
                "must return a list of 3 answers (one per call, in order); it returned a list of length 2", message
            )
        stats = driver.stats()
        self.assertEqual((stats["tasks_done"], stats["tasks_failed"], stats["worker_deaths"]), (2, 7, 0))

    def test_an_engine_without_run_batch_still_gets_batches(self):
        driver = self.make(3, LONG_WAIT, engine=PLAIN_ENGINE)
        keys = self.submit_all(driver, [10, "raise", 30])
        self.assertEqual(driver.wait(keys[0], PATIENCE), (OK, 11, ""))
        flag, value, message = driver.wait(keys[1], PATIENCE)
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("KeyError: 'plain engine refuses'", message)
        self.assertEqual(driver.wait(keys[2], PATIENCE), (OK, 31, ""))
        self.assertEqual(driver.stats()["batches"], 1)

    def test_demo_submits_are_batched_with_the_demo_rules(self):
        driver = self.make(4, LONG_WAIT, engine="py4cc.engine:Engine")
        f, s, n = TASK
        rows = [(f, s, n), ([0.0, 0.0], ["", "", ""], 0), ([2.5, 1.0], ["xyz", "", "q"], 7), (f, s, n + 1)]
        keys = []
        for row in rows:
            flag, key, message = driver.submit(*row)
            self.assertEqual(flag, OK, message)
            keys.append(key)
        self.assertEqual(driver.wait(keys[0], PATIENCE), (OK, demo.big_model(*rows[0]), ""))
        flag, value, message = driver.wait(keys[1], PATIENCE)
        self.assertEqual((flag, value), (FAILED, 0))
        self.assertIn("a value <= 0 means the model failed", message)
        self.assertEqual(driver.wait(keys[2], PATIENCE), (OK, demo.big_model(*rows[2]), ""))
        self.assertEqual(driver.wait(keys[3], PATIENCE), (OK, demo.big_model(*rows[3]), ""))
        self.assertEqual(driver.stats()["batches"], 1)

    def test_a_task_cancelled_before_its_batch_forms_never_runs(self):
        driver = self.make(3, LONG_WAIT)
        first, second = self.submit_all(driver, [100, 200])
        self.assertTrue(driver.cancel(first))
        rest = self.submit_all(driver, [300, 400])
        self.assertEqual(driver.wait(second, PATIENCE), (OK, 400, ""))
        self.assertEqual([driver.wait(k, PATIENCE) for k in rest], [(OK, 600, ""), (OK, 800, "")])
        flag, _, message = driver.retrieve(first)
        self.assertEqual(flag, ERROR)
        self.assertIn("cancelled", message)
        self.assertEqual(self.history(driver, 3), [[200, 300, 400]])

    def test_a_task_cancelled_inside_a_running_batch_has_its_answer_discarded(self):
        driver = self.make(3, LONG_WAIT)
        keys = self.submit_all(driver, [("sleep", 1.0), 2, 3])
        self.assertTrue(wait_until(lambda: driver.stats()["tasks_running"] == 3, PATIENCE))
        self.assertTrue(driver.cancel(keys[1]))
        self.assertEqual(driver.wait(keys[0], PATIENCE), (OK, "sleep", ""))
        self.assertEqual(driver.wait(keys[2], PATIENCE), (OK, 6, ""))
        flag, _, message = driver.wait(keys[1], PATIENCE)
        self.assertEqual(flag, ERROR)
        self.assertIn("cancelled", message)
        stats = driver.stats()
        self.assertEqual((stats["tasks_done"], stats["tasks_cancelled"], stats["tasks_held"]), (2, 1, 0))

    def test_a_worker_killed_mid_batch_fails_exactly_that_batch(self):
        driver = self.make(3, LONG_WAIT)
        batch = self.submit_all(driver, [("sleep", 60.0), 2, 3])
        self.assertTrue(wait_until(lambda: driver.stats()["tasks_running"] == 3, PATIENCE))
        queued = self.submit_all(driver, [4, 5, 6])
        (pid,) = driver.worker_pids()
        os.kill(pid, signal.SIGKILL)
        for key in batch:
            flag, value, message = driver.wait(key, PATIENCE)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn(f"the worker process (pid {pid}) running this task's batch of 3 tasks died", message)
            self.assertIn("killed by SIGKILL", message)
        self.assertEqual([driver.wait(k, PATIENCE) for k in queued], [(OK, 8, ""), (OK, 10, ""), (OK, 12, "")])
        self.assertEqual(driver.stats()["worker_deaths"], 1)
        self.assertIn(f"while running a batch of 3 tasks (keys {batch[0]}..)", "\n".join(self.events()))

    def test_task_timeout_bounds_a_batch_whole_run(self):
        driver = self.make(3, LONG_WAIT, task_timeout=0.5)
        batch = self.submit_all(driver, [("sleep", 60.0), 2, 3])
        for key in batch:
            flag, value, message = driver.wait(key, PATIENCE)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn("this task's batch of 3 tasks timed out after 0.5 s; its worker process", message)
        self.assertIn(f"a batch of 3 tasks (keys {batch[0]}..) ran past task_timeout (0.5 s)", "\n".join(self.events()))
        again = self.submit_all(driver, [1, 2, 3])
        self.assertEqual([driver.wait(k, PATIENCE) for k in again], [(OK, 2, ""), (OK, 4, ""), (OK, 6, "")])
        stats = driver.stats()
        self.assertEqual((stats["tasks_timed_out"], stats["worker_deaths"]), (3, 1))

    def test_capacity_counts_every_task_waiting_for_a_batch(self):
        driver = self.make(8, LONG_WAIT, max_tasks=3)
        keys = self.submit_all(driver, [1, 2, 3])
        self.assertEqual(driver.submit_call((4,)), (AT_CAPACITY, 0, CAPACITY_MESSAGE))
        self.assertEqual(driver.stats()["tasks_queued"], 3)
        self.assertTrue(driver.cancel(keys[0]))
        keys[0] = self.submit_all(driver, [4])[0]
        self.assertEqual(driver.submit_call((5,)), (AT_CAPACITY, 0, CAPACITY_MESSAGE))
        self.assertEqual(driver.drain(0.0), 3)  # still waiting for the batch to fill: failed by the stop
        for key in keys:
            self.assertEqual(driver.retrieve(key), (FAILED, None, "the driver was finalized before this task finished"))

    def test_results_expire_with_batching_on(self):
        driver = self.make(2, 0.0, result_ttl=0.2)
        keys = self.submit_all(driver, [1, 2])
        self.assertTrue(wait_until(lambda: driver.stats()["tasks_expired"] == 2, PATIENCE))
        for key in keys:
            flag, _, message = driver.retrieve(key)
            self.assertEqual(flag, ERROR)
            self.assertIn("expired", message)


if __name__ == "__main__":
    unittest.main()
