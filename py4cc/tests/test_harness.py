"""The reference workload, its parts and its command line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import unittest

from py4cc.engine import big_model, task_sleep_seconds
from py4cc.workload import harness
from py4cc.workload.taskgen import make_tasks, task_digest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PartsTest(unittest.TestCase):
    def test_percentile_nearest_rank(self):
        values = [float(v) for v in range(1, 101)]
        self.assertEqual(harness.percentile(values, 50), 50.0)
        self.assertEqual(harness.percentile(values, 99), 99.0)
        self.assertEqual(harness.percentile(values, 100), 100.0)
        self.assertEqual(harness.percentile([3.0], 99), 3.0)
        self.assertEqual(harness.percentile([1.0, 2.0, 3.0], 50), 2.0)
        self.assertEqual(harness.percentile([1.0, 2.0, 3.0, 4.0], 50), 2.0)
        self.assertEqual(harness.percentile([], 50), 0.0)

    def test_limit_seconds(self):
        tasks = make_tasks(10, 1)
        total = 0.0
        for t in tasks:
            total += task_sleep_seconds(big_model(*t))
        self.assertAlmostEqual(harness.limit_seconds(tasks, 2), total / 2)

    def test_resolve_workers(self):
        self.assertEqual(harness.resolve_workers(3), 3)
        self.assertEqual(harness.resolve_workers(0), os.cpu_count())

    def test_check_outcomes(self):
        out = harness.Outcome
        outcomes = [out(0, 5, "", 0.1), out(0, 6, "", 0.1), out(2, -1, "boom", 0.1), None]
        problems = harness.check_outcomes(outcomes, [5, 7, 1, 2])
        self.assertEqual(len(problems), 3)
        self.assertTrue(problems[0].startswith("task 1"))
        self.assertIn("no result", problems[2])

    def test_parse_args_defaults(self):
        args = harness.parse_args([])
        self.assertEqual(
            (args.tasks, args.threads, args.workers, args.seed, args.start_method, args.mode),
            (1000, 16, 0, 42, "forkserver", "poll"),
        )


class EndToEndTest(unittest.TestCase):
    def check_record(self, record, mode):
        self.assertEqual(tuple(record), harness.JSON_KEYS)
        self.assertEqual(record["tasks"], 40)
        self.assertEqual(record["threads"], 4)
        self.assertEqual(record["workers"], 2)
        self.assertEqual(record["mode"], mode)
        self.assertEqual((record["verified"], record["errors"]), (40, 0))
        self.assertEqual(record["digest"], task_digest(make_tasks(40, 42)))
        self.assertGreater(record["seconds"], 0)
        self.assertGreater(record["tasks_per_s"], 0)
        self.assertLessEqual(record["p50_ms"], record["p99_ms"])
        self.assertAlmostEqual(record["limit_s"], harness.limit_seconds(make_tasks(40, 42), 2), places=3)
        self.assertGreater(record["efficiency"], 0)

    def test_both_modes_in_process(self):
        for mode in ("poll", "wait"):
            with self.subTest(mode=mode):
                stream = io.StringIO()
                record = harness.run(40, 4, 2, 42, "forkserver", mode, stream=stream)
                self.check_record(record, mode)
                self.assertIn("40 verified", stream.getvalue())

    def test_command_line(self):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "py4cc.workload.harness",
                "--tasks",
                "40",
                "--threads",
                "4",
                "--workers",
                "2",
                "--mode",
                "wait",
                "--start-method",
                "spawn",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        lines = proc.stdout.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stdout)
        self.check_record(json.loads(lines[0]), "wait")


if __name__ == "__main__":
    unittest.main()
