"""worker_env: set in every worker before the Engine's module is imported, for every start
method; checked by initialize."""

from __future__ import annotations

import json
import os
import sys
import unittest

from py4cc.driver import Driver

from .support import FLOAT_NAMES, STR_NAMES, DriverTestCase

METHODS = ("fork", "forkserver", "spawn")


class WorkerEnvTest(DriverTestCase):
    def setUp(self) -> None:
        # With "fork" a worker would inherit the module as this process imported it.
        self.assertNotIn("py4cc_env_engine", sys.modules)
        self.addCleanup(os.environ.pop, "PY4CC_TEST_ENV_B", None)
        os.environ["PY4CC_TEST_ENV_B"] = "the parent's"

    def test_every_start_method_sees_it_before_the_import(self):
        env = {"PY4CC_TEST_ENV_A": "zoë=1 two", "PY4CC_TEST_ENV_B": "the worker's", "OMP_NUM_THREADS": "1"}
        for method in METHODS:
            with self.subTest(method=method):
                d = self.make_driver(
                    engine="py4cc_env_engine:EnvEngine", start_method=method, worker_env=env, n_subprocesses=2
                )
                pids = set()
                for n in range(4):
                    _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], n)
                    flag, value, message = d.wait(key, 30)
                    self.assertEqual((flag, value), (0, 1), message)
                    seen = json.loads(message)
                    self.assertEqual(seen["import"], env)
                    self.assertEqual(seen["run"], env)
                    self.assertEqual(seen["c"], env)
                    pids.add(seen["pid"])
                self.assertTrue(pids <= set(d.worker_pids()))
                d.finalize()
        self.assertNotIn("py4cc_env_engine", sys.modules)
        self.assertEqual(os.environ["PY4CC_TEST_ENV_B"], "the parent's")  # ours unchanged
        self.assertNotIn("PY4CC_TEST_ENV_A", os.environ)

    def test_pairs_work_as_a_dict_does_and_the_rest_is_inherited(self):
        # Not with "forkserver": its workers inherit the environment its server process
        # started with, which may be older than this test's.
        for method in ("fork", "spawn"):
            with self.subTest(method=method):
                d = self.make_driver(
                    engine="py4cc_env_engine:EnvEngine", start_method=method, worker_env=[("PY4CC_TEST_ENV_A", "")]
                )
                _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 1)
                seen = json.loads(d.wait(key, 30)[2])
                self.assertEqual(seen["import"]["PY4CC_TEST_ENV_A"], "")
                self.assertEqual(seen["import"]["PY4CC_TEST_ENV_B"], "the parent's")

    def test_bad_environments_are_refused_by_initialize(self):
        cases = [
            ("OMP_NUM_THREADS=1", TypeError, "worker_env must be a dict or a list of (name, value) pairs of str"),
            ({"OMP_NUM_THREADS": 1}, TypeError, "worker_env[0] must be a (name, value) pair of str, got ('OMP_NUM"),
            ([("A", "1", "x")], TypeError, "worker_env[0] must be a (name, value) pair of str"),
            ({"A=B": "1"}, ValueError, "worker_env: 'A=B' is not an environment variable name"),
            ({"": "1"}, ValueError, "worker_env: '' is not an environment variable name"),
            ({"A\0": "1"}, ValueError, "is not an environment variable name (empty, or holds '=' or NUL)"),
            ({"A": "x\0y"}, ValueError, "worker_env: the value of 'A' holds a NUL character"),
        ]
        for env, kind, message in cases:
            with self.subTest(env=env):
                d = Driver(n_subprocesses=1, worker_env=env)
                self.addCleanup(d.finalize)
                with self.assertRaises(kind) as caught:
                    d.initialize("{}", FLOAT_NAMES, STR_NAMES)
                self.assertIn(message, str(caught.exception))
                self.assertEqual(d.worker_pids(), [])


if __name__ == "__main__":
    unittest.main()
