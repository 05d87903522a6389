"""The completion path: the host's ``notify(key, finished)``, ``cancel`` in every state of a
task, ``result_ttl`` and the messages of keys that were cancelled or expired."""

from __future__ import annotations

import os
import pickle
import select
import signal
import threading
import time
import types
import unittest
from typing import Any

from py4cc.core.completion import GONE_MEMORY, Gone, Notifier, host_answer
from py4cc.driver import NOT_FINISHED_MESSAGE, Driver
from py4cc.engine import big_model

from .support import FLOAT_NAMES, TASK, DriverTestCase, wait_until

SLEEP_ENGINE = "py4cc_user_engines:SleepEngine"
RAISING_ENGINE = "py4cc_user_engines:RaisingEngine"


class Recorder:
    """A notify callback that records its calls, and checks it runs with the pool's lock held."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []
        self.unlocked_calls = 0
        self.driver: Driver | None = None
        self.changed = threading.Condition()

    def __call__(self, key: int, finished: bool) -> None:
        pool: Any = self.driver._pool if self.driver is not None else None
        if pool is not None and not pool.lock.locked():
            self.unlocked_calls += 1
        with self.changed:
            self.calls.append((key, finished))
            self.changed.notify_all()

    def calls_for(self, key: int) -> list[bool]:
        with self.changed:
            return [finished for k, finished in self.calls if k == key]

    def wait_for(self, key: int, count: int = 1, timeout: float = 10.0) -> list[bool]:
        with self.changed:
            self.changed.wait_for(lambda: len([k for k, _ in self.calls if k == key]) >= count, timeout)
        return self.calls_for(key)


def sleeping(seconds: float, value: int = 5):
    return ([seconds, 0.0], ["a", "b", "c"], value)


class NotifyTest(DriverTestCase):
    def recorded_driver(self, **options) -> tuple[Driver, Recorder]:
        recorder = Recorder()
        driver = self.make_driver(notify=recorder, **options)
        recorder.driver = driver
        return driver, recorder

    def test_every_completion_notifies_once_with_the_lock_held(self):
        d, rec = self.recorded_driver(n_subprocesses=2)
        keys = [d.submit(*TASK)[1] for _ in range(20)]
        for key in keys:
            self.assertEqual(rec.wait_for(key), [True])
            self.assertEqual(d.retrieve(key), (0, big_model(*TASK), ""))
        # Collecting does not notify: the collector knows.
        self.assertEqual([rec.calls_for(key) for key in keys], [[True]] * 20)
        self.assertEqual(rec.unlocked_calls, 0)

    def test_failures_deaths_timeouts_and_finalize_notify_finished(self):
        d, rec = self.recorded_driver(engine=SLEEP_ENGINE, task_timeout=0.5, n_subprocesses=2)
        _, timed_out, _ = d.submit(*sleeping(30))
        self.assertEqual(rec.wait_for(timed_out, timeout=30), [True])
        self.assertEqual(d.retrieve(timed_out)[0], 2)

        _, killed, _ = d.submit(*sleeping(0.4))  # below the timeout; killed first
        self.assertTrue(wait_until(lambda: any(t.key == killed for w in d._pool.workers for t in w.queue)))
        pid = next(w.pid for w in d._pool.workers for t in w.queue if t.key == killed)
        os.kill(pid, signal.SIGKILL)
        self.assertEqual(rec.wait_for(killed, timeout=30), [True])
        flag, _, message = d.retrieve(killed)
        self.assertEqual(flag, 2)
        self.assertIn("died", message)

        _, unfinished, _ = d.submit(*sleeping(30))
        d.finalize()
        self.assertEqual(rec.calls_for(unfinished), [True])
        self.assertEqual(d.retrieve(unfinished)[0], 2)

    def test_a_raising_engine_notifies_finished(self):
        d, rec = self.recorded_driver(engine=RAISING_ENGINE)
        _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 3)
        self.assertEqual(rec.wait_for(key), [True])
        flag, _, message = d.retrieve(key)
        self.assertEqual(flag, 2)
        self.assertIn("boom from the user engine", message)

    def test_a_failing_callback_is_counted_and_never_breaks_the_pool(self):
        calls = []

        def bad(key, finished):
            calls.append(key)
            raise RuntimeError("the host's callback is broken")

        d = self.make_driver(notify=bad, n_subprocesses=1)
        keys = [d.submit(*TASK)[1] for _ in range(5)]
        for key in keys:
            self.assertEqual(d.wait(key, 10), (0, big_model(*TASK), ""))
        self.assertEqual(sorted(calls), keys)
        self.assertEqual(d._pool.notify.errors, 5)
        self.assertEqual(d._pool.notify.last_error, "RuntimeError: the host's callback is broken")
        self.assertTrue(d.cancel(d.submit(*TASK)[1]))  # a cancel's notify fails too, quietly
        self.assertEqual(d._pool.notify.errors, 6)

    def test_notify_must_be_callable(self):
        with self.assertRaisesRegex(ValueError, "notify must be None or a callable"):
            self.make_driver(notify=42)

    def test_notifier_swallows_even_keyboard_interrupt(self):
        def interrupted(key, finished):
            raise KeyboardInterrupt

        notifier = Notifier(interrupted)
        notifier(1, True)
        self.assertEqual((notifier.errors, notifier.last_error), (1, "KeyboardInterrupt: "))
        Notifier(None)(1, True)  # no callback: nothing to do


class Host:
    """A host that keeps the answers: ``deliver`` and ``host_held``, as rs4py gives them."""

    def __init__(self) -> None:
        self.answers: dict[int, tuple[int, Any, str]] = {}
        self.batches: list[int] = []
        self.unlocked_calls = 0
        self.driver: Driver | None = None
        self.changed = threading.Condition()

    def deliver(self, answers: list[tuple[int, int, Any, str]]) -> None:
        pool: Any = self.driver._pool if self.driver is not None else None
        if pool is not None and not pool.lock.locked():
            self.unlocked_calls += 1
        with self.changed:
            self.batches.append(len(answers))
            for key, flag, value, message in answers:
                self.answers[key] = (flag, value, message)
            self.changed.notify_all()

    def host_held(self) -> int:
        return len(self.answers)

    def wait_for(self, keys: list[int], timeout: float = 30.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: all(key in self.answers for key in keys), timeout)


class DeliverTest(DriverTestCase):
    def host_driver(self, **options) -> tuple[Driver, Host]:
        host = Host()
        driver = self.make_driver(deliver=host.deliver, host_held=host.host_held, **options)
        host.driver = driver
        return driver, host

    def test_answers_go_to_the_host_in_batches_and_leave_the_book(self):
        d, host = self.host_driver(n_subprocesses=2, max_tasks=30)
        keys = [d.submit(*TASK)[1] for _ in range(20)]
        general = d.submit_call((), {"float_features": [1.5, 2.0], "str_features": ["x", "y", "z"], "int_feature": 1})
        self.assertEqual(general[0], 0)
        self.assertTrue(host.wait_for([*keys, general[1]]))
        self.assertEqual(sum(host.batches), 21, "each answer once")
        self.assertEqual(host.unlocked_calls, 0)
        self.assertEqual([host.answers[key] for key in keys], [(0, big_model(*TASK), "")] * 20)
        flag, value, message = host.answers[general[1]]
        self.assertEqual((flag, pickle.loads(value), message), (0, (big_model([1.5, 2.0], ["x", "y", "z"], 1), ""), ""))
        # The book forgot them; capacity and the counts are the host's.
        self.assertEqual(len(d._pool.tasks), 0)
        self.assertEqual(d.retrieve(keys[0])[0], 9)
        self.assertEqual(d.held_tasks(), 21)
        stats = d.stats()
        self.assertEqual((stats["tasks_held"], stats["tasks_finished"]), (21, 21))
        more = [d.submit(*TASK) for _ in range(10)]
        self.assertEqual([flag for flag, _, _ in more], [0] * 9 + [1], "30 held at most, answers included")
        self.assertTrue(host.wait_for([key for _, key, _ in more[:9]]))
        host.answers.clear()  # the host collected them all
        self.assertEqual(d.held_tasks(), 0)
        self.assertEqual(d.submit(*TASK)[0], 0)

    def test_failures_and_finalize_are_delivered(self):
        d, host = self.host_driver(engine=SLEEP_ENGINE, task_timeout=0.5)
        _, timed_out, _ = d.submit(*sleeping(30))
        self.assertTrue(host.wait_for([timed_out]))
        self.assertEqual(host.answers[timed_out][:2], (2, -1))
        unfinished = [d.submit(*sleeping(30))[1] for _ in range(3)]
        d.finalize()
        self.assertEqual(d._pool.finished, True)
        for key in unfinished:
            self.assertEqual(host.answers[key][0], 2)
            self.assertIn("finalized", host.answers[key][2])

    def test_deliver_and_host_held_go_together(self):
        with self.assertRaisesRegex(ValueError, "deliver and host_held go together"):
            self.make_driver(deliver=lambda answers: None)
        with self.assertRaisesRegex(ValueError, "deliver and host_held go together"):
            self.make_driver(deliver=1, host_held=2)

    def test_a_pipe_reader_comes_whole_and_with_the_host_callbacks(self):
        reader = types.SimpleNamespace(take=len, drain=len, answered=list, write=len)
        host = {"deliver": lambda answers: None, "host_held": lambda: 0}
        refusal = "pipe_reader must be None or have take\\(fd\\), drain\\(fd\\), answered\\(\\) and write"
        with self.assertRaisesRegex(TypeError, refusal):
            self.make_driver(pipe_reader=reader, **host)  # it reads in wait_readable: needs one
        with self.assertRaisesRegex(TypeError, refusal):
            self.make_driver(pipe_reader=reader, wait_readable=len)  # its answers go to the host's table
        without_write = types.SimpleNamespace(take=len, drain=len, answered=list)
        with self.assertRaisesRegex(TypeError, refusal):
            self.make_driver(pipe_reader=without_write, wait_readable=len, **host)

    def test_host_answer_values(self):
        self.assertEqual(host_answer(1, 0, 7, "", True), (1, 0, 7, ""))
        self.assertEqual(host_answer(1, 2, None, "tb", False), (1, 2, None, "tb"))
        self.assertEqual(host_answer(1, 0, b"\x80", "", False), (1, 0, b"\x80", ""), "pickled by the worker")
        huge = host_answer(1, 0, 2**70, "", True)
        self.assertEqual(pickle.loads(huge[2]), 2**70, "outside the i64 range: pickled")
        self.assertEqual(pickle.loads(host_answer(1, 0, b"x", "", True)[2]), b"x", "a demo value is never bytes")
        flag, value, message = host_answer(1, 0, threading.Lock(), "", True)[1:]
        self.assertEqual((flag, value), (2, None))
        self.assertIn("cannot be pickled for the host", message)


class CancelTest(DriverTestCase):
    def test_a_queued_task_never_runs(self):
        rec = Recorder()
        d = self.make_driver(engine=SLEEP_ENGINE, notify=rec, max_tasks=4, prefetch=0)
        rec.driver = d
        _, running, _ = d.submit(*sleeping(0.5, 1))
        _, queued, _ = d.submit(*sleeping(0.0, 2))
        self.assertEqual(d.held_tasks(), 2)
        self.assertTrue(d.cancel(queued))
        self.assertEqual(rec.calls_for(queued), [False])
        self.assertEqual(d.held_tasks(), 1)
        self.assertFalse(d.cancel(queued), "cancelled already")
        self.assertEqual(d.wait(running, 10), (0, 1, "slept"))
        time.sleep(0.2)
        self.assertEqual(rec.calls_for(queued), [False], "it never ran, so never finished")
        self.assertEqual(d._pool.cancelled, 1)

    def test_a_running_task_s_answer_is_discarded_and_its_place_freed_at_once(self):
        rec = Recorder()
        d = self.make_driver(engine=SLEEP_ENGINE, notify=rec, max_tasks=1)
        rec.driver = d
        _, running, _ = d.submit(*sleeping(0.3, 1))
        self.assertTrue(wait_until(lambda: d._pool.tasks[running].worker is not None))
        self.assertTrue(d.cancel(running))
        self.assertEqual(d.held_tasks(), 0)
        flag, next_key, _ = d.submit(*sleeping(0.0, 2))
        self.assertEqual(flag, 0, "the cancelled task's place is free")
        self.assertEqual(d.wait(next_key, 10), (0, 2, "slept"))
        self.assertEqual(rec.calls_for(running), [False], "its late answer was discarded silently")
        flag, value, message = d.retrieve(running)
        self.assertEqual((flag, value), (9, 0))
        self.assertIn(f"task {running} was cancelled", message)

    def test_a_waiter_is_woken_by_the_cancel(self):
        d = self.make_driver(engine=SLEEP_ENGINE)
        _, key, _ = d.submit(*sleeping(2.0))
        answers = []
        waiter = threading.Thread(target=lambda: answers.append(d.wait(key, 30)))
        waiter.start()
        time.sleep(0.1)
        started = time.monotonic()
        self.assertTrue(d.cancel(key))
        waiter.join(10)
        self.assertLess(time.monotonic() - started, 1.9, "woken by the cancel, not by the task's end")
        self.assertEqual(answers[0][0], 9)
        self.assertIn("cancelled", answers[0][2])

    def test_a_finished_task_is_removed(self):
        rec = Recorder()
        d = self.make_driver(notify=rec)
        rec.driver = d
        _, key, _ = d.submit(*TASK)
        self.assertEqual(rec.wait_for(key), [True])
        self.assertTrue(d.cancel(key))
        self.assertEqual(rec.calls_for(key), [True, False])
        self.assertEqual(d.held_tasks(), 0)
        self.assertIn("cancelled", d.retrieve(key)[2])

    def test_unknown_and_wrong_keys_answer_false_without_raising(self):
        d = self.make_driver()
        for key in (0, -1, 10**6, "1", None, 2**80, 1.0, True):
            self.assertFalse(d.cancel(key), repr(key))
        self.assertFalse(Driver().cancel(1), "not initialized")
        _, key, _ = d.submit(*TASK)
        d.wait(key, 10)
        self.assertFalse(d.cancel(key), "retrieved already")
        self.assertEqual(d._pool.cancelled, 0)


class ResultTtlTest(DriverTestCase):
    def test_an_unretrieved_result_expires_and_frees_its_place(self):
        rec = Recorder()
        d = self.make_driver(notify=rec, max_tasks=2, result_ttl=0.3)
        rec.driver = d
        keys = [d.submit(*TASK)[1] for _ in range(2)]
        self.assertEqual(d.submit(*TASK)[0], 1, "at capacity while both are held")
        for key in keys:
            self.assertEqual(rec.wait_for(key, 2, timeout=10), [True, False])
        self.assertEqual(d.held_tasks(), 0)
        self.assertEqual(d._pool.expired, 2)
        flag, value, message = d.retrieve(keys[0])
        self.assertEqual((flag, value), (9, 0))
        self.assertIn(f"task {keys[0]} expired", message)
        self.assertIn("0.3 s (result_ttl)", message)
        self.assertEqual(d.wait(keys[1], 1)[0], 9)
        self.assertEqual(d.submit(*TASK)[0], 0)
        self.assertEqual(rec.unlocked_calls, 0)

    def test_a_result_retrieved_in_time_does_not_expire(self):
        d = self.make_driver(result_ttl=0.3)
        _, key, _ = d.submit(*TASK)
        self.assertEqual(d.wait(key, 10), (0, big_model(*TASK), ""))
        time.sleep(0.5)
        self.assertEqual(d._pool.expired, 0)
        self.assertEqual(d._pool.expiring, {})

    def test_none_keeps_results_until_retrieved(self):
        d = self.make_driver(result_ttl=None)
        _, key, _ = d.submit(*TASK)
        self.assertTrue(wait_until(lambda: d._pool.tasks[key].done))
        time.sleep(0.3)
        self.assertEqual(d.held_tasks(), 1)
        self.assertEqual(d._pool.expiring, {})
        self.assertEqual(d.retrieve(key), (0, big_model(*TASK), ""))

    def test_the_default_is_sixty_seconds_and_bad_values_are_refused(self):
        self.assertEqual(Driver().result_ttl, 60.0)
        for bad in (0, -1, float("inf"), float("nan"), "1", True):
            with self.subTest(bad=bad), self.assertRaisesRegex(ValueError, "result_ttl must be None or a positive"):
                self.make_driver(result_ttl=bad)

    def test_a_running_task_does_not_expire(self):
        d = self.make_driver(engine=SLEEP_ENGINE, result_ttl=0.1)
        _, key, _ = d.submit(*sleeping(0.5, 3))
        time.sleep(0.3)
        self.assertEqual(d.retrieve(key), (1, 0, NOT_FINISHED_MESSAGE))
        self.assertEqual(d.wait(key, 10), (0, 3, "slept"))


class WaitReadableTest(DriverTestCase):
    def test_the_dispatcher_waits_with_the_host_s_function(self):
        calls = []

        def wait_readable(fds, timeout_ms):
            calls.append((list(fds), timeout_ms))
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            return poller.poll(timeout_ms)

        d = self.make_driver(wait_readable=wait_readable, n_subprocesses=2)
        keys = [d.submit(*TASK)[1] for _ in range(10)]
        for key in keys:
            self.assertEqual(d.wait(key, 10), (0, big_model(*TASK), ""))
        self.assertGreater(len(calls), 1)
        fds, _ = calls[-1]
        self.assertEqual(len(fds), 1 + 2 * 2, "the wake-up pipe, each worker's pipe and sentinel")

    def test_it_must_be_callable(self):
        with self.assertRaisesRegex(TypeError, "wait_readable must be None or a callable"):
            self.make_driver(wait_readable=3)


class GoneTest(unittest.TestCase):
    def test_it_remembers_the_last_keys_only(self):
        gone = Gone(limit=3)
        for key in range(1, 6):
            gone.remember(key, "expired" if key % 2 else "cancelled")
        self.assertEqual([gone.why(key) for key in range(1, 6)], [None, None, "expired", "cancelled", "expired"])
        self.assertEqual(GONE_MEMORY, 10_000)

    def test_an_old_dropped_key_reads_as_unknown(self):
        from py4cc.core import completion

        d = Driver(n_subprocesses=1, result_ttl=None)
        self.addCleanup(d.finalize)
        d.initialize("{}", FLOAT_NAMES, ["name", "sentence", "uuid"])
        d._pool.gone = completion.Gone(limit=2)
        keys = [d.submit(*TASK)[1] for _ in range(3)]
        for key in keys:
            self.assertTrue(d.cancel(key))
        self.assertIn("unknown key", d.retrieve(keys[0])[2])
        self.assertIn("cancelled", d.retrieve(keys[2])[2])


if __name__ == "__main__":
    unittest.main()
