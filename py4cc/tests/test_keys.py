"""Item 5 of issue 16 in py4cc: each Driver of a process issues keys from its own range, so a
key of one Driver used on another answers ERROR and consumes nothing."""

from __future__ import annotations

import unittest

from py4cc.core.tasks import KEY_SPAN
from py4cc.engine import big_model

from .support import DriverTestCase

TASK = ([1.5, -2.0], ["ab", "c", "d"], 7)


class TwoDriversKeysTest(DriverTestCase):
    def test_a_key_of_another_driver_answers_error_and_consumes_nothing(self):
        # Before: both Drivers issued 1, 2, 3...: B's key collected (and removed) A's task.
        a = self.make_driver()
        b = self.make_driver()
        flag_a, key_a, _ = a.submit(*TASK)
        flag_b, key_b, _ = b.submit(*TASK)
        self.assertEqual((flag_a, flag_b), (0, 0))
        self.assertNotEqual(key_a // KEY_SPAN, key_b // KEY_SPAN, "each Driver has its own range")
        self.assertEqual((key_a % KEY_SPAN, key_b % KEY_SPAN), (1, 1))
        for made_up in (key_b, key_a + KEY_SPAN, 1, 5, KEY_SPAN):
            with self.subTest(key=made_up):
                expected = (9, 0, f"unknown key {made_up}: this Driver did not issue it")
                self.assertEqual(a.retrieve(made_up)[:2], expected[:2])
                self.assertTrue(a.retrieve(made_up)[2].startswith(expected[2]), a.retrieve(made_up)[2])
                self.assertTrue(a.wait(made_up, 5)[2].startswith(expected[2]))
                self.assertFalse(a.cancel(made_up))
        self.assertEqual(a.held_tasks(), 1)
        self.assertEqual(b.held_tasks(), 1)
        value = big_model(*TASK)
        self.assertEqual(a.wait(key_a, 30), (0, value, ""))
        self.assertEqual(b.wait(key_b, 30), (0, value, ""))
        self.assertEqual(a.retrieve(key_a)[0], 9, "collected once")

    def test_a_driver_that_issued_its_whole_range_refuses_alone_and_in_a_batch(self):
        d = self.make_driver()
        pool = d._pool
        assert pool is not None
        pool.next_key = pool.key_base + KEY_SPAN - 1  # one key left: the range's last
        flag, last, _ = d.submit(*TASK)
        self.assertEqual((flag, last), (0, pool.key_base + KEY_SPAN - 1))
        out_of_keys = (9, 0, f"this Driver has issued all of its {KEY_SPAN - 1} keys: make another")
        self.assertEqual(d.submit(*TASK), out_of_keys)
        self.assertEqual(d.submit_many([TASK, TASK]), [out_of_keys, out_of_keys])
        self.assertEqual(d.wait(last, 30), (0, big_model(*TASK), ""))


if __name__ == "__main__":
    unittest.main()
