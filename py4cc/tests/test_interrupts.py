"""submit, retrieve, wait and finalize never raise, not even KeyboardInterrupt or SystemExit."""

from __future__ import annotations

import signal
import threading
import time
import unittest
import unittest.mock

from py4cc.local import pool as pool_module
from py4cc.protocol import NOT_FINISHED_MESSAGE

from .support import DriverTestCase, pid_alive, wait_until

ENGINES = "py4cc_user_engines"


def raising(exc: BaseException):
    def method(*args):
        raise exc

    return method


class InterruptingFloat(float):
    """A real number whose conversion raises KeyboardInterrupt, as Ctrl-C there would."""

    __float__ = raising(KeyboardInterrupt())


class ExitingFloat(float):
    __float__ = raising(SystemExit(3))


class InterruptingInt(int):
    """An int key whose comparison raises KeyboardInterrupt."""

    __le__ = raising(KeyboardInterrupt())


class NeverRaisesTest(DriverTestCase):
    def answer(self, call, *args):
        """``call(*args)``; a test failure (not the end of the run) if it raises."""
        try:
            return call(*args)
        except BaseException as exc:
            self.fail(f"{call.__name__} raised {type(exc).__name__}({exc})")

    def test_submit_interrupted_answers_flag_9_and_holds_nothing(self):
        d = self.make_driver()
        self.assertEqual(
            self.answer(d.submit, [InterruptingFloat(1.0), 2.0], ["a", "b", "c"], 1),
            (9, 0, "submit was interrupted: KeyboardInterrupt"),
        )
        self.assertEqual(
            self.answer(d.submit, [ExitingFloat(1.0), 2.0], ["a", "b", "c"], 1),
            (9, 0, "submit was interrupted: SystemExit: 3"),
        )
        self.assertEqual(d.held_tasks(), 0)
        _, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
        self.assertEqual(d.wait(key, 10), (0, 7, ""))

    def test_retrieve_interrupted_answers_flag_9_and_keeps_the_task(self):
        d = self.make_driver()
        flag, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
        self.assertEqual(flag, 0)
        self.assertTrue(wait_until(lambda: d.held_tasks() == 1))
        self.assertEqual(
            self.answer(d.retrieve, InterruptingInt(key)), (9, 0, "retrieve was interrupted: KeyboardInterrupt")
        )
        self.assertEqual(d.wait(key, 10), (0, 7, ""))

    def test_wait_interrupted_answers_flag_9_and_keeps_the_task(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine")
        _, key, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 5)
        self.assertEqual(
            self.answer(d.wait, key, InterruptingFloat(5.0)), (9, 0, "wait was interrupted: KeyboardInterrupt")
        )
        self.assertEqual(d.retrieve(key), (1, 0, NOT_FINISHED_MESSAGE))

    @unittest.skipUnless(
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "needs the main thread with Python's own SIGINT handler",
    )
    def test_ctrl_c_while_wait_blocks(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine")
        _, key, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 5)
        task = d._pool.tasks[key]
        main = threading.main_thread().ident

        def press_ctrl_c():
            # Only once wait has made the task's event is the main thread inside wait,
            # where it stays until the signal comes (the task takes 30 s).
            if wait_until(lambda: task.event is not None, timeout=10):
                time.sleep(0.2)
                signal.pthread_kill(main, signal.SIGINT)

        presser = threading.Thread(target=press_ctrl_c)
        presser.start()
        start = time.monotonic()
        try:
            answer = self.answer(d.wait, key, 20)
        finally:
            presser.join()
        self.assertEqual(answer, (9, 0, "wait was interrupted: KeyboardInterrupt"))
        self.assertLess(time.monotonic() - start, 15)
        self.assertEqual(d.retrieve(key), (1, 0, NOT_FINISHED_MESSAGE))

    def test_finalize_interrupted_still_stops_every_worker(self):
        d = self.make_driver(n_subprocesses=2)
        pids = d.worker_pids()
        pool = d._pool
        real_stop_workers = pool_module.stop_workers
        calls = []

        def stop_workers(workers):
            calls.append(len(workers))
            if len(calls) == 1:
                raise KeyboardInterrupt  # as Ctrl-C while it joins a process would
            real_stop_workers(workers)

        with unittest.mock.patch.object(pool_module, "stop_workers", stop_workers):
            self.answer(d.finalize)
        self.assertEqual(calls, [2, 2])  # the second try found the workers again
        self.assertTrue(pool.finished)
        self.assertEqual(d.worker_pids(), [])
        self.assertTrue(wait_until(lambda: not any(map(pid_alive, pids)), timeout=5))
        flag, key, message = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("finalized", message)


if __name__ == "__main__":
    unittest.main()
