"""Faults around the workers: the forkserver killed, the host process killed while a worker
is busy, and multiprocessing's temporary directories."""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

from .support import ENGINES_DIR, DriverTestCase, descendants, forkserver_pid, pid_running, wait_until

ENGINES = "py4cc_user_engines"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, ENGINES_DIR, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


class ForkserverKilledTest(DriverTestCase):
    def test_a_task_outlives_its_forkserver(self):
        # Before: the forkserver's status pipe said every worker had died (exit code 255):
        # the running task failed while its worker still ran it, and that worker was never
        # stopped (it outlived finalize).
        d = self.make_driver(n_subprocesses=2, start_method="forkserver", engine=f"{ENGINES}:SleepEngine")
        pids = d.worker_pids()
        server = forkserver_pid()
        self.assertIsNotNone(server)
        _, key, _ = d.submit([1.5, 0.0], ["a", "b", "c"], 9)
        time.sleep(0.3)
        os.kill(server, signal.SIGKILL)
        self.assertEqual(d.wait(key, 20), (0, 9, "slept"))
        self.assertEqual(d.worker_pids(), pids)
        # Still tracked: a worker killed now is seen to die and is replaced (through a new
        # forkserver); its exit code is unknown, its forkserver being gone.
        _, key, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 1)
        time.sleep(0.3)
        [busy] = [w.pid for w in d._pool.workers if w.queue]
        os.kill(busy, signal.SIGKILL)
        flag, _, message = d.wait(key, 20)
        self.assertEqual(flag, 2)
        self.assertIn(f"(pid {busy}) running this task died with an unknown exit code", message)
        self.assertTrue(wait_until(lambda: len(d.worker_pids()) == 2 and busy not in d.worker_pids()))
        _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 3)
        self.assertEqual(d.wait(key, 20), (0, 3, "slept"))
        last = d.worker_pids()
        d.finalize()
        self.assertEqual([pid for pid in pids + last if pid_running(pid)], [])


HOST_SCRIPT = textwrap.dedent("""
    import json, os, sys, time, warnings
    from py4cc.driver import Driver
    warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded")

    def main():
        marker_dir = sys.argv[1]
        drivers = []
        for method in ("fork", "forkserver", "spawn"):
            d = Driver(n_subprocesses=2, start_method=method, engine="py4cc_user_engines:GilHoldingEngine")
            d.initialize(json.dumps({"marker": os.path.join(marker_dir, method)}), ["a"], ["b"])
            assert d.submit([3600.0], ["x"], 1)[0] == 0  # one worker busy, one idle
            drivers.append(d)
        deadline = time.monotonic() + 60
        while len(os.listdir(marker_dir)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps(sorted(os.listdir(marker_dir))), flush=True)
        time.sleep(3600)

    if __name__ == "__main__":
        main()
""")


class HostKilledTest(unittest.TestCase):
    def test_every_child_exits_when_the_host_is_killed_while_a_worker_holds_the_gil(self):
        # Before: a worker busy in a task outlived its host (and, with forkserver, kept the
        # forkserver and the resource tracker alive) until its task ended.
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "host.py")
            with open(script, "w") as handle:
                handle.write(HOST_SCRIPT)
            markers = os.path.join(tmp, "markers")
            os.mkdir(markers)
            host = subprocess.Popen(
                [sys.executable, script, markers], stdout=subprocess.PIPE, text=True, env=child_env()
            )
            try:
                busy = json.loads(host.stdout.readline())
                self.assertEqual(len(busy), 3, busy)
                children = descendants(host.pid)
                # 6 workers, the forkserver and the resource tracker at least.
                self.assertGreaterEqual(len(children), 8, children)
            finally:
                host.kill()
                host.wait()
                host.stdout.close()
            start = time.monotonic()
            gone = wait_until(lambda: not any(map(pid_running, children)), timeout=2.0)
            self.assertTrue(gone, [pid for pid in children if pid_running(pid)])
            print(f"\nall {len(children)} children gone {time.monotonic() - start:.3f} s after the host", end=" ")


PYMP_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from py4cc.driver import Driver

    def main():
        how = sys.argv[1]
        d = Driver(n_subprocesses=1, start_method="forkserver")
        d.initialize("{}", ["a"], ["b"])
        assert d.wait(d.submit([1.0], ["x"], 1)[1], 20)[0] == 0
        if how == "finalize":
            d.finalize()
            left = [name for name in os.listdir(os.environ["TMPDIR"]) if name.startswith("pymp-")]
            assert left == [], left
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        # As an embedded host (its interpreter never finalized), no exit hook runs.
        os._exit(0)

    if __name__ == "__main__":
        main()
""")


class TemporaryDirectoryTest(DriverTestCase):
    def run_host(self, how):
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "host.py")
            with open(script, "w") as handle:
                handle.write(PYMP_SCRIPT)
            tmpdir = os.path.join(tmp, "tmp")
            os.mkdir(tmpdir)
            proc = subprocess.run(
                [sys.executable, script, how], capture_output=True, text=True, timeout=60, env=child_env(TMPDIR=tmpdir)
            )
            self.assertEqual(proc.returncode, -9 if how == "kill" else 0, proc.stderr)
            left = lambda: glob.glob(os.path.join(tmpdir, "pymp-*"))  # noqa: E731
            self.assertTrue(wait_until(lambda: not left(), timeout=10), left())

    def test_none_left_by_a_finalized_driver_of_a_host_that_never_runs_exit_hooks(self):
        self.run_host("finalize")

    def test_none_left_by_a_host_that_exits_without_finalizing_or_exit_hooks(self):
        self.run_host("exit")

    def test_none_left_by_a_host_that_is_killed(self):
        self.run_host("kill")

    def test_the_last_finalize_in_this_process_removes_it(self):
        d = self.make_driver(start_method="forkserver")
        tempdir = multiprocessing.process.current_process()._config.get("tempdir")
        self.assertTrue(tempdir and os.path.isdir(tempdir), tempdir)
        server = forkserver_pid()
        d.finalize()
        self.assertFalse(os.path.exists(tempdir))
        self.assertFalse(pid_running(server))
        # A later Driver starts a forkserver (and a directory) of its own.
        d = self.make_driver(start_method="forkserver")
        _, key, _ = d.submit([1.0, 2.0], ["a", "b", "c"], 1)
        self.assertEqual(d.wait(key, 20), (0, 7, ""))
        d.finalize()
        self.assertIsNone(multiprocessing.process.current_process()._config.get("tempdir"))


if __name__ == "__main__":
    unittest.main()
