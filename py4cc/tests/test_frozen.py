"""Item 1 of issue 16: a frozen worker (SIGSTOPped, or stuck before it reads) blocks no call
into the pool, and the tasks sent to it fail after a bound instead of waiting for ever."""

from __future__ import annotations

import os
import signal
import threading
import unittest
from collections.abc import Callable
from typing import Any

from py4cc.engine import big_model
from py4cc.local import pool as pool_module
from py4cc.options import Batching

from .support import DriverTestCase, add_engines_dir, pid_alive, wait_until

COMMAND_ENGINE = "py4cc_general_engines:CommandEngine"


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """``call()``'s answer; fails the test if it does not return within ``seconds`` (a hung
    call is left behind on a daemon thread, so the test itself stays bounded)."""
    answer: list[Any] = []
    thread = threading.Thread(target=lambda: answer.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    if not answer:
        raise AssertionError(f"the call did not return within {seconds:g} s")
    return answer[0]


BIG = 8 * 1024 * 1024


def kill_if_alive(pid: int) -> None:
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


class FrozenWorkerTest(DriverTestCase):
    """A worker that takes in nothing (SIGSTOPped) holds no lock anyone needs and no task
    for ever. Before: the pool wrote to the worker's pipe with its lock held, so a task larger
    than the pipe's buffer blocked that submit, and every submit, stats and finalize after
    it, for as long as the worker was stopped."""

    def setUp(self) -> None:
        add_engines_dir()

    def stopped_worker(self, d: Any) -> int:
        [pid] = d.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(kill_if_alive, pid)
        return pid

    def test_a_stopped_worker_blocks_no_call_and_its_task_fails_after_task_timeout(self):
        d = self.make_driver(engine=COMMAND_ENGINE, task_timeout=2.0)
        pid = self.stopped_worker(d)
        flag, key, message = within(10, lambda: d.submit_call(("length", b"x" * BIG)))
        self.assertEqual((flag, message), (0, ""))
        stats = within(5, d.stats)
        self.assertEqual((stats["tasks_held"], stats["tasks_running"]), (1, 1))
        small = within(5, lambda: d.submit_call(("value", 7)))
        self.assertEqual(small[0], 0)
        flag, value, message = d.wait(key, 30)
        self.assertEqual((flag, value), (2, None))
        self.assertIn(f"the task could not be sent: its worker process (pid {pid}) took in none of", message)
        self.assertIn("for 2 s (its pipe did not drain", message)
        # The small task, queued behind, was not lost: it runs on the replacement.
        self.assertEqual(d.wait(small[1], 30), (0, 7, ""))
        self.assertNotIn(pid, d.worker_pids())
        self.assertEqual(d.wait(d.submit_call(("length", b"y" * BIG))[1], 30), (0, BIG, ""))

    def test_a_batch_to_a_stopped_worker_goes_the_same_way(self):
        d = self.make_driver(task_timeout=2.0, batching=Batching(4, 0.01))
        pid = self.stopped_worker(d)
        flag, key, message = within(10, lambda: d.submit([1.0, 2.0], ["x" * BIG, "b", "c"], 1))
        self.assertEqual((flag, message), (0, ""))
        flag, _, message = d.wait(key, 30)
        self.assertEqual(flag, 2)
        self.assertIn(f"(pid {pid}) took in none of the task's bytes for 2 s", message)
        expected = big_model([1.0, 2.0], ["ab", "b", "c"], 1)
        self.assertEqual(d.wait(d.submit([1.0, 2.0], ["ab", "b", "c"], 1)[1], 30)[:2], (0, expected))

    def test_without_task_timeout_the_pool_has_its_own_bound(self):
        self.addCleanup(setattr, pool_module, "WRITE_STALL_S", pool_module.WRITE_STALL_S)
        pool_module.WRITE_STALL_S = 1.0
        d = self.make_driver(engine=COMMAND_ENGINE)
        pid = self.stopped_worker(d)
        flag, key, _ = within(10, lambda: d.submit_call(("length", b"x" * BIG)))
        self.assertEqual(flag, 0)
        flag, _, message = d.wait(key, 30)
        self.assertEqual(flag, 2)
        self.assertIn(f"(pid {pid}) took in none of the task's bytes for 1 s", message)

    def test_finalize_returns_while_a_stopped_worker_holds_a_big_task(self):
        d = self.make_driver(engine=COMMAND_ENGINE)
        pid = self.stopped_worker(d)
        flag, key, _ = within(10, lambda: d.submit_call(("length", b"x" * BIG)))
        self.assertEqual(flag, 0)
        within(15, d.finalize)
        self.assertTrue(wait_until(lambda: not pid_alive(pid)))
        flag, _, message = d.retrieve(key)
        self.assertEqual(flag, 2)
        self.assertIn("finalize", message)

    def test_a_200_mb_argument_leaves_other_submits_free(self):
        d = self.make_driver(engine=COMMAND_ENGINE, n_subprocesses=2)
        huge = [b"z" * (200 * 1024 * 1024)]
        _, big_key, _ = within(60, lambda: d.submit_call(("length", huge.pop())))
        # While its bytes go (the dispatcher sends them as the worker reads), small tasks
        # are submitted and answered by the other worker.
        keys = [within(10, lambda n=n: d.submit_call(("value", n)))[1] for n in range(20)]
        self.assertEqual([d.wait(key, 30) for key in keys], [(0, n, "") for n in range(20)])
        self.assertEqual(d.wait(big_key, 60), (0, 200 * 1024 * 1024, ""))


if __name__ == "__main__":
    unittest.main()
