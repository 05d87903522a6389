"""The lifeline holds even when an Engine closes every file descriptor it did not open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import unittest

from .support import ENGINES_DIR, pid_running, wait_until

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOST_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, time, warnings
    from py4cc.driver import Driver
    warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded")

    def main():
        method, marker = sys.argv[1], sys.argv[2]
        d = Driver(n_subprocesses=1, start_method=method, engine="py4cc_fd_closing_engine:CloseFdsEngine")
        d.initialize(json.dumps({"marker": marker}), ["a"], ["b"])
        print(json.dumps(d.worker_pids()), flush=True)
        d.submit([1.0], ["x"], 1)
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)  # no exit hook: only the lifeline can stop the worker

    if __name__ == "__main__":
        main()
""")


class ClosedLifelineTest(unittest.TestCase):
    def check(self, method: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "host.py")
            with open(script, "w") as handle:
                handle.write(HOST_SCRIPT)
            marker = os.path.join(tmp, "fds-closed")
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, ENGINES_DIR, env.get("PYTHONPATH", "")])
            proc = subprocess.run(
                [sys.executable, script, method, marker], capture_output=True, text=True, timeout=60, env=env, cwd=tmp
            )
            self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr)
            self.assertTrue(os.path.exists(marker), "the Engine never closed its descriptors: " + proc.stderr)
        pids = json.loads(proc.stdout.strip().splitlines()[0])
        self.assertEqual(len(pids), 1, proc.stdout)
        gone = wait_until(lambda: not pid_running(pids[0]), timeout=10)
        if not gone:
            os.kill(pids[0], signal.SIGKILL)
        self.assertTrue(gone, f"{method}: worker {pids[0]} outlived its host")

    def test_fork(self) -> None:
        self.check("fork")

    def test_forkserver(self) -> None:
        self.check("forkserver")

    def test_spawn(self) -> None:
        self.check("spawn")


if __name__ == "__main__":
    unittest.main()
