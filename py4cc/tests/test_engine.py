"""The demo model and the demo Engine."""

from __future__ import annotations

import functools
import operator
import time
import unittest

from py4cc.engine import Engine, big_model, task_sleep_seconds
from py4cc.workload.taskgen import make_tasks


def reference_model(floats, strs, n):
    """An independent statement of the formula (reduce instead of loops)."""
    float_sum = functools.reduce(operator.add, [abs(x) for x in floats], 0.0)
    str_len = sum(len(s.upper()) for s in strs)
    return int(float_sum) + str_len + (n if n > 0 else 0)


class BigModelTest(unittest.TestCase):
    def test_hand_computed(self):
        cases = [
            (([1.5, -2.25], ["abc"], 3), 3 + 3 + 3),
            (([-999.9, -0.2], [], 0), 1000),  # negative floats count by magnitude
            (([0.99], [], 0), 0),  # int() truncates
            (([-0.5], ["a"], -100), 0 + 1 + 0),  # a negative int_feature adds nothing
            (([], ["ß"], 0), 2),  # ß upper-cases to SS
            (([], ["straße"], 0), 7),  # STRASSE: 6 code points become 7
            (([], ["ﬁnal"], 0), 5),  # the ﬁ ligature upper-cases to FI
            (([], ["Zoë", "Søren"], 0), 3 + 5),
            (([], ["ὀδυσσεύς"], 0), 8),
            (([], [""], 5), 5),
            (([3, -4], ["x"], 0), 8),  # ints are accepted as numbers
        ]
        for args, want in cases:
            with self.subTest(args=args):
                self.assertEqual(big_model(*args), want)

    def test_left_to_right_float_addition(self):
        # 1e16 + 1.0 rounds back to 1e16 each time; math.fsum (and Python 3.12's
        # sum()) would give 1e16 + 2. The model must add plainly, like the Rust side.
        self.assertEqual(big_model([1e16, 1.0, 1.0], [], 0), 10**16)

    def test_against_independent_computation(self):
        for task in make_tasks(300, 7):
            self.assertEqual(big_model(*task), reference_model(*task))

    def test_nan_and_inf_raise(self):
        with self.assertRaises(ValueError):
            big_model([float("nan"), 1.0], [], 0)
        with self.assertRaises(OverflowError):
            big_model([float("-inf"), 1.0], [], 0)

    def test_sleep_formula(self):
        self.assertAlmostEqual(task_sleep_seconds(0), 0.0001)
        self.assertAlmostEqual(task_sleep_seconds(99), 0.01)
        self.assertAlmostEqual(task_sleep_seconds(100), 0.0001)
        self.assertAlmostEqual(task_sleep_seconds(1234), 35 * 0.0001)


class DemoEngineTest(unittest.TestCase):
    def setUp(self):
        self.engine = Engine()
        self.engine.initialize(config={"a": 1}, float_feature_names=["x"], str_feature_names=["s"], extra_option=True)

    def test_initialize_keeps_configuration(self):
        self.assertEqual(self.engine.config, {"a": 1})
        self.assertEqual(self.engine.float_feature_names, ["x"])
        self.assertEqual(self.engine.extra, {"extra_option": True})

    def test_run_answers_and_sleeps(self):
        start = time.perf_counter()
        value, message = self.engine.run(float_features=[98.5], str_features=["a"], int_feature=0)
        elapsed = time.perf_counter() - start
        self.assertEqual((value, message), (99, ""))
        self.assertGreaterEqual(elapsed, 0.0099)

    def test_run_never_raises(self):
        value, message = self.engine.run(float_features=[float("nan")], str_features=[], int_feature=0)
        self.assertEqual(value, -1)
        self.assertIn("Traceback", message)
        self.assertIn("ValueError", message)
        value, message = self.engine.run(float_features=[1.0], str_features=[None], int_feature=0)
        self.assertEqual(value, -1)
        self.assertIn("AttributeError", message)


if __name__ == "__main__":
    unittest.main()
