"""The seeded task generator that the Rust example reimplements."""

from __future__ import annotations

import re
import struct
import unittest

from py4cc.workload import taskgen
from py4cc.workload.taskgen import SplitMix64, Task, make_tasks, task_digest

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class SplitMix64Test(unittest.TestCase):
    def test_reference_sequence_seed_0(self):
        rng = SplitMix64(0)
        self.assertEqual(
            [rng.next_u64() for _ in range(3)],
            [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F],
        )

    def test_seed_is_masked_to_64_bits(self):
        self.assertEqual(SplitMix64(2**64 + 5).next_u64(), SplitMix64(5).next_u64())
        self.assertEqual(SplitMix64(-1).state, 2**64 - 1)

    def test_uniform_and_below(self):
        rng = SplitMix64(0)
        self.assertEqual(rng.uniform(), (0xE220A8397B1DCDAF >> 11) * 2.0**-53)
        rng = SplitMix64(0)
        self.assertEqual(rng.below(1000), 0xE220A8397B1DCDAF % 1000)
        rng = SplitMix64(123)
        for _ in range(1000):
            u = rng.uniform()
            self.assertTrue(0.0 <= u < 1.0)
            self.assertTrue(0 <= rng.below(7) < 7)


class MakeTasksTest(unittest.TestCase):
    def test_deterministic(self):
        self.assertEqual(make_tasks(50, 42), make_tasks(50, 42))
        self.assertEqual(task_digest(make_tasks(50, 42)), task_digest(make_tasks(50, 42)))

    def test_prefix_property(self):
        self.assertEqual(make_tasks(10, 3), make_tasks(20, 3)[:10])

    def test_digest_changes_with_seed_and_count(self):
        self.assertNotEqual(task_digest(make_tasks(50, 42)), task_digest(make_tasks(50, 43)))
        self.assertNotEqual(task_digest(make_tasks(50, 42)), task_digest(make_tasks(49, 42)))

    def test_shape_of_tasks(self):
        lists = taskgen.word_lists()
        for task in make_tasks(200, 9):
            self.assertIsInstance(task, Task)
            self.assertEqual(len(task.float_features), 2)
            for f in task.float_features:
                self.assertTrue(-1000.0 <= f < 1000.0)
            name, sentence, uuid = task.str_features
            first, last = name.split(" ", 1)
            self.assertIn(first, lists["first"])
            self.assertIn(last, lists["last"])
            self.assertTrue(sentence.endswith("."))
            words = sentence[:-1].split(" ")
            self.assertTrue(4 <= len(words) <= 9)
            for word in words:
                self.assertIn(word, lists["words"])
            self.assertRegex(uuid, UUID_RE)
            self.assertTrue(0 <= task.int_feature <= 999)

    def test_first_task_by_hand(self):
        rng = SplitMix64(42)
        lists = taskgen.word_lists()
        f0 = rng.uniform() * 2000.0 - 1000.0
        f1 = rng.uniform() * 2000.0 - 1000.0
        name = lists["first"][rng.below(len(lists["first"]))] + " " + lists["last"][rng.below(len(lists["last"]))]
        n = 4 + rng.below(6)
        words = [lists["words"][rng.below(len(lists["words"]))] for _ in range(n)]
        h = f"{rng.next_u64():016x}{rng.next_u64():016x}"
        uuid = "-".join([h[:8], h[8:12], "4" + h[13:16], "89ab"[int(h[16], 16) % 4] + h[17:20], h[20:]])
        n_int = rng.below(1000)
        self.assertEqual(make_tasks(1, 42)[0], Task([f0, f1], [name, " ".join(words) + ".", uuid], n_int))


class DigestTest(unittest.TestCase):
    def test_encoding(self):
        task = Task([1.0, -2.5], ["a", "ß"], -3)
        want = (
            struct.pack("<d", 1.0) + struct.pack("<d", -2.5) + b"a\x00" + "ß".encode() + b"\x00" + struct.pack("<q", -3)
        )
        self.assertEqual(taskgen.task_bytes(task), want)

    def test_fnv1a_reference_values(self):
        # Published FNV-1a 64 test vectors.
        self.assertEqual(taskgen.fnv1a64(b""), 0xCBF29CE484222325)
        self.assertEqual(taskgen.fnv1a64(b"a"), 0xAF63DC4C8601EC8C)
        self.assertEqual(taskgen.fnv1a64(b"foobar"), 0x85944171F73967E8)

    def test_digest_is_hash_of_concatenation(self):
        tasks = make_tasks(5, 1)
        blob = b"".join(taskgen.task_bytes(t) for t in tasks)
        self.assertEqual(task_digest(tasks), f"{taskgen.fnv1a64(blob):016x}")
        self.assertEqual(task_digest([]), "cbf29ce484222325")


class WordsFileTest(unittest.TestCase):
    def test_sections_and_sizes(self):
        lists = taskgen.load_word_lists()
        self.assertGreaterEqual(len(lists["first"]), 25)
        self.assertGreaterEqual(len(lists["last"]), 25)
        self.assertGreaterEqual(len(lists["words"]), 70)
        for entries in lists.values():
            for entry in entries:
                self.assertTrue(entry and entry == entry.strip())

    def test_unicode_entries_present(self):
        lists = taskgen.load_word_lists()
        for word in ("straße", "ﬁnal", "naïve", "façade", "ὀδυσσεύς"):
            self.assertIn(word, lists["words"])
        for name in ("Zoë", "José", "Søren", "Łukasz"):
            self.assertIn(name, lists["first"])
        for name in ("Ødegaard", "Çelik", "Ñúñez"):
            self.assertIn(name, lists["last"])
        # Upper-casing changes the length of some entries: the model must count after it.
        self.assertTrue(any(len(w.upper()) != len(w) for w in lists["words"]))


if __name__ == "__main__":
    unittest.main()
