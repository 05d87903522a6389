"""No worker process is left behind, however the parent ends; a pool that cannot recover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
import unittest.mock
import warnings

from py4cc.driver import Driver
from py4cc.local import pool as pool_module

from .support import (
    FLOAT_NAMES,
    STR_NAMES,
    DriverTestCase,
    add_engines_dir,
    pid_alive,
    pid_running,
    ready_workers,
    wait_until,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, warnings
    from py4cc.driver import Driver
    warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded")

    def main():
        how = sys.argv[1]
        drivers = []
        for method in ("fork", "forkserver", "spawn"):
            d = Driver(n_subprocesses=2, start_method=method)
            d.initialize("{}", ["a"], ["b"])
            key = d.submit([1.0], ["x"], 1)[1]
            assert d.wait(key, 20)[0] == 0
            drivers.append(d)
        print(json.dumps([pid for d in drivers for pid in d.worker_pids()]), flush=True)
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        # how == "exit": leave without finalize; the exit hook must stop the workers.

    if __name__ == "__main__":
        main()
""")


class ParentExitTest(unittest.TestCase):
    def run_child(self, how):
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "child.py")
            with open(script, "w") as handle:
                handle.write(CHILD_SCRIPT)
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
            proc = subprocess.run([sys.executable, script, how], capture_output=True, text=True, timeout=60, env=env)
        pids = json.loads(proc.stdout.strip().splitlines()[0])
        self.assertEqual(len(pids), 6, proc.stderr)
        return proc, pids

    def test_exit_without_finalize(self):
        proc, pids = self.run_child("exit")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(
            wait_until(lambda: not any(map(pid_running, pids)), timeout=10), [p for p in pids if pid_running(p)]
        )

    def test_parent_killed(self):
        # No exit hook runs: each worker sees its pipe close and exits on its own.
        proc, pids = self.run_child("sigkill")
        self.assertEqual(proc.returncode, -9)
        self.assertTrue(
            wait_until(lambda: not any(map(pid_running, pids)), timeout=10), [p for p in pids if pid_running(p)]
        )


GC_CHILD_SCRIPT = textwrap.dedent("""
    import gc, json, time
    from py4cc.driver import Driver

    def main():
        d = Driver(n_subprocesses=1).initialize("{}", ["a"], ["b"])
        pool = d._pool
        pids = d.worker_pids()
        real = pool.complete

        def complete(*args):  # the answer: on the dispatcher thread, with pool.lock held
            real(*args)
            gc.collect()  # as a collection triggered by any allocation there would

        pool.complete = complete
        gc.disable()  # only the dispatcher collects
        d.submit([1.0], ["x"], 1)
        d.cycle = d  # garbage only for the cycle collector
        del d
        deadline = time.monotonic() + 10
        while not pool.finished and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"finished": pool.finished, "pids": pids}), flush=True)

    if __name__ == "__main__":
        main()
""")


class CollectedDriverTest(unittest.TestCase):
    def test_collected_on_the_dispatcher_thread_holding_the_lock(self):
        # Regression: a Driver in a reference cycle may be collected by a GC that runs on
        # the dispatcher thread while it holds the pool's lock; its finalizer called
        # shutdown() right there and deadlocked on that lock: the workers kept running and
        # the exit hook hung for ever. (Run in a child, which is killed if it hangs.)
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "child.py")
            with open(script, "w") as handle:
                handle.write(GC_CHILD_SCRIPT)
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
            try:
                proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=30, env=env)
            except subprocess.TimeoutExpired as exc:
                self.fail(f"the child hung (at exit?); its output: {exc.stdout!r}")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        report = json.loads(proc.stdout.strip().splitlines()[0])
        self.assertTrue(report["finished"], proc.stderr)
        self.assertTrue(wait_until(lambda: not any(map(pid_running, report["pids"])), timeout=10))


class ForkedChildTest(DriverTestCase):
    def test_forked_child_leaves_the_parents_workers_alone(self):
        # Regression: a plain os.fork() child (a pre-forking server, say) that ended
        # normally ran the exit hook on its copy of the pool and stopped the parent's
        # workers: idle ones were told to exit, busy ones got SIGTERM (their tasks failed).
        d = self.make_driver(n_subprocesses=2)
        pids = d.worker_pids()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            child = os.fork()
        if child == 0:  # pragma: no cover - the child
            try:
                pool_module.stop_all_pools()  # what its exit hook runs
                d.finalize()
            finally:
                os._exit(0)
        if not wait_until(lambda: os.waitpid(child, os.WNOHANG)[0] != 0, timeout=10):
            os.kill(child, 9)
            os.waitpid(child, 0)
            self.fail("the forked child hung")
        time.sleep(0.3)
        self.assertTrue(all(map(pid_running, pids)))
        self.assertEqual(d.worker_pids(), pids)
        _, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
        self.assertEqual(d.wait(key, 10), (0, 7, ""))


class RestartBeforeReadyTest(DriverTestCase):
    def test_replacement_killed_before_ready_is_replaced(self):
        # Regression: a replacement that died before it was ready (here: killed while its
        # Engine initialises) was never replaced; with one worker the driver then refused
        # every task for good ("no working worker process").
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.make_driver(
                config=json.dumps({"marker": marker}), engine="py4cc_user_engines:StartupTroubleEngine"
            )
            [first] = d.worker_pids()
            with open(marker, "w") as handle:
                handle.write("sleep")
            os.kill(first, 9)
            self.assertTrue(wait_until(lambda: d.worker_pids() not in ([], [first])))
            [second] = d.worker_pids()  # sleeping in Engine.initialize: not ready
            os.remove(marker)
            os.kill(second, 9)
            self.assertTrue(wait_until(lambda: ready_workers(d) == 1, timeout=20))
            flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], 5)
            self.assertEqual(flag, 0, message)
            self.assertEqual(d.wait(key, 20), (0, 5, ""))
            self.assertNotIn(second, d.worker_pids())

    def test_replacements_that_keep_dying_before_ready(self):
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.make_driver(
                config=json.dumps({"marker": marker}), engine="py4cc_user_engines:StartupTroubleEngine"
            )
            [pid] = d.worker_pids()
            with open(marker, "w") as handle:
                handle.write("exit")
            os.kill(pid, 9)
            answers = []
            self.assertTrue(
                wait_until(
                    lambda: answers.append(d.submit([0.0, 0.0], ["a", "b", "c"], 5)) or answers[-1][0] == 9,
                    timeout=20,
                    step=0.05,
                )
            )
            flag, key, message = answers[-1]
            self.assertEqual((flag, key), (9, 0))
            self.assertIn("no worker process is ready", message)
            self.assertIn("exited before it was ready, with exit code 4", message)
            self.assertIn("keeps restarting", message)
            # It keeps trying, past the 3 attempts it once gave up after.
            self.assertTrue(wait_until(lambda: d._pool.counters.replacement_failures >= 5, timeout=30))


class NonDaemonThreadInFailingInitializeTest(DriverTestCase):
    def test_a_replacement_that_cannot_exit_is_killed_and_its_slot_backs_off(self):
        # Before: the worker sent its traceback, then could not exit (its non-daemon thread
        # kept it alive); the dispatcher waited for that exit for ever: the slot was never
        # restarted nor counted degraded, and submit kept accepting tasks that never ran.
        add_engines_dir()
        for method in ("fork", "forkserver", "spawn"):
            with self.subTest(start_method=method), tempfile.TemporaryDirectory() as tmp:
                self.check_restart_with_a_stuck_thread(method, os.path.join(tmp, "marker"))

    def check_restart_with_a_stuck_thread(self, method: str, marker: str) -> None:
        d = self.make_driver(
            config=json.dumps({"marker": marker}),
            engine="py4cc_user_engines:StartupTroubleEngine",
            start_method=method,
        )
        [first] = d.worker_pids()
        with open(marker, "w") as handle:
            handle.write("thread")
        os.kill(first, signal.SIGKILL)
        seen: set[int] = set()
        answers: list = []

        def refused() -> bool:
            seen.update(d.worker_pids())
            answers.append(d.submit([0.0, 0.0], ["a", "b", "c"], 5))
            return answers[-1][0] == 9

        self.assertTrue(wait_until(refused, timeout=20, step=0.05), answers[-1])
        flag, key, message = answers[-1]
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("no worker process is ready", message)
        self.assertIn("failed to initialise its engine", message)
        self.assertIn("RuntimeError: the model store is down", message)
        accepted = [key for flag, key, _ in answers if flag == 0]
        for key in accepted:  # accepted before the first failed start: failed since
            self.assertEqual(d.wait(key, 20)[0], 2)
        self.assertTrue(wait_until(lambda: d.stats()["replacement_failures"] >= 2, timeout=20))
        self.assertEqual(d.stats()["workers_degraded"], 1)
        failed_pids = seen - {first} - set(d.worker_pids())  # the replacements seen, each killed
        self.assertTrue(wait_until(lambda: not any(pid_alive(pid) for pid in failed_pids)), failed_pids)
        os.remove(marker)
        self.assertTrue(wait_until(lambda: ready_workers(d) == 1, timeout=30))
        flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], 5)
        self.assertEqual(flag, 0, message)
        self.assertEqual(d.wait(key, 20), (0, 5, ""))
        d.finalize()


class InitTimeoutTest(DriverTestCase):
    def record_worker_pids(self) -> list:
        """Patch the pool so that the pid of every worker process started lands in a list."""
        pids: list = []
        real_start = pool_module.Pool.start_worker

        def start_worker(pool):
            w = real_start(pool)
            pids.append(w.pid)
            return w

        patcher = unittest.mock.patch.object(pool_module.Pool, "start_worker", start_worker)
        patcher.start()
        self.addCleanup(patcher.stop)
        return pids

    def test_initialize_raises_when_a_worker_is_not_ready_in_time(self):
        # Regression: an Engine.initialize that hangs made Driver.initialize hang for ever.
        add_engines_dir()
        pids = self.record_worker_pids()
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            with open(marker, "w") as handle:
                handle.write("sleep")  # Engine.initialize sleeps 30 s
            d = Driver(n_subprocesses=2, engine="py4cc_user_engines:StartupTroubleEngine", init_timeout=0.5)
            self.addCleanup(d.finalize)
            start = time.monotonic()
            with self.assertRaises(RuntimeError) as caught:
                d.initialize(json.dumps({"marker": marker}), FLOAT_NAMES, STR_NAMES)
            self.assertLess(time.monotonic() - start, 5)
        self.assertIn("did not become ready within 0.5 s", str(caught.exception))
        self.assertIn("init_timeout", str(caught.exception))
        self.assertEqual(len(pids), 2)
        self.assertAllGone(pids)
        self.assertEqual(d.worker_pids(), [])
        flag, key, _message = d.submit([0.0, 0.0], ["a", "b", "c"], 1)
        self.assertEqual((flag, key), (9, 0))

    def test_replacement_not_ready_in_time_fails_queued_tasks(self):
        # Regression: a replacement worker whose Engine.initialize hung kept its slot, not
        # ready, for ever; with one worker, queued tasks stayed "not finished" for ever.
        pids = self.record_worker_pids()
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "marker")
            d = self.make_driver(
                config=json.dumps({"marker": marker}),
                engine="py4cc_user_engines:StartupTroubleEngine",
                init_timeout=0.5,
            )
            # A replacement that is ready within the limit is left alone.
            [first] = d.worker_pids()
            os.kill(first, 9)
            self.assertTrue(wait_until(lambda: d.worker_pids() not in ([], [first])))
            flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], 5)
            self.assertEqual(flag, 0, message)
            self.assertEqual(d.wait(key, 10), (0, 5, ""))
            # Replacements whose Engine.initialize hangs are killed and retried.
            [second] = d.worker_pids()
            with open(marker, "w") as handle:
                handle.write("sleep")
            os.kill(second, 9)
            self.assertTrue(wait_until(lambda: d.worker_pids() not in ([], [second])))
            flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], 6)
            self.assertEqual(flag, 0, message)
            flag, value, message = d.wait(key, 20)
            self.assertEqual((flag, value), (2, -1), message)
            self.assertIn("no worker process is ready to run this task", message)
            self.assertIn("did not become ready within the 0.5 s start-up limit (init_timeout)", message)
            flag, key, message = d.submit([0.0, 0.0], ["a", "b", "c"], 7)
            self.assertEqual((flag, key), (9, 0))
            self.assertIn("did not become ready within the 0.5 s start-up limit", message)
            self.assertTrue(wait_until(lambda: d._pool.counters.replacement_failures >= 2, timeout=20))
            # Once Engine.initialize is quick again, the driver serves again by itself.
            os.remove(marker)
            answers = []
            self.assertTrue(
                wait_until(lambda: answers.append(d.submit([0.0, 0.0], ["a", "b", "c"], 8)) or answers[-1][0] == 0)
            )
            self.assertEqual(d.wait(answers[-1][1], 20), (0, 8, ""))
            killed = pids[:-1]  # every one but the worker now running
            self.assertTrue(wait_until(lambda: not any(map(pid_alive, killed)), timeout=5))


class DeathDuringFinalizeTest(DriverTestCase):
    def test_worker_death_processed_after_finalize_began(self):
        # Regression: a worker's death handled by the dispatcher after finalize had
        # started (and had failed every unfinished task) put the tasks queued behind its
        # running one back in the queue and sent them to another worker: their payload
        # was gone, so the dispatcher thread died with a TypeError. Hold the dispatcher
        # inside the death handling until finalize has begun.
        d = self.make_driver(n_subprocesses=2, engine="py4cc_user_engines:SleepEngine")
        pool = d._pool
        with pool.lock:
            pool.avg_run_s = 60.0  # tasks are long: prefetching behind a busy worker is fine
        keys = [
            d.submit([30.0, 0.0], ["a", "b", "c"], 1)[1],
            d.submit([30.0, 0.0], ["a", "b", "c"], 2)[1],
            d.submit([0.0, 0.0], ["a", "b", "c"], 3)[1],
        ]  # queued behind one of them
        with pool.lock:
            [victim] = [w for w in pool.workers if len(w.queue) == 2]
            self.assertTrue(all(len(w.queue) == 1 for w in pool.workers if w is not victim))
        real_reap = pool.dispatcher._reap
        entered = threading.Event()

        def reap(w):
            entered.set()
            wait_until(lambda: pool.closed, timeout=10)
            real_reap(w)

        pool.dispatcher._reap = reap
        os.kill(victim.pid, 9)
        self.assertTrue(entered.wait(10))
        start = time.monotonic()
        d.finalize()
        self.assertLess(time.monotonic() - start, 5)
        self.assertIsNone(pool.broken)  # the dispatcher did not crash
        self.assertFalse(pool.dispatcher.is_alive())
        for key in keys:
            flag, _, message = d.retrieve(key)
            self.assertEqual(flag, 2, message)
            self.assertIn("finalized before this task finished", message)


if __name__ == "__main__":
    unittest.main()
