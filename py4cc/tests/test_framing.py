"""The dispatcher reads workers' pipes itself: its framing must be ``Connection.send_bytes``'s."""

from __future__ import annotations

import multiprocessing
import os
import threading
import unittest

from py4cc.protocol import _LENGTH, _LONG_LENGTH, take_messages


class FramingTest(unittest.TestCase):
    def test_messages_sent_by_a_connection_are_read_back_whole_in_any_pieces(self):
        reader, writer = multiprocessing.Pipe(duplex=True)
        self.addCleanup(reader.close)
        self.addCleanup(writer.close)
        messages = [b"", b"x", b"answer" * 10, bytes(range(256)) * 100, b"\x00" * 70_000]
        sent = threading.Thread(target=lambda: [writer.send_bytes(m) for m in messages])
        sent.start()
        raw = bytearray()
        total = sum(4 + len(m) for m in messages)
        while len(raw) < total:
            raw += os.read(reader.fileno(), 1 << 16)
        sent.join()
        self.assertEqual(len(raw), total)
        for piece in (1, 3, 4, 5, 1000, len(raw)):
            with self.subTest(piece=piece):
                inbox = bytearray()
                got: list[bytes] = []
                for at in range(0, len(raw), piece):
                    inbox += raw[at : at + piece]
                    got += take_messages(inbox)
                self.assertEqual(got, messages)
                self.assertEqual(inbox, bytearray())

    def test_the_long_form_header_and_a_partial_message_wait_for_the_rest(self):
        inbox = bytearray(_LENGTH.pack(-1) + _LONG_LENGTH.pack(3) + b"ab")
        self.assertEqual(take_messages(inbox), [])
        self.assertEqual(len(inbox), 14, "kept for the next read")
        inbox += b"c" + _LENGTH.pack(2)
        self.assertEqual(take_messages(inbox), [b"abc"])
        self.assertEqual(inbox, bytearray(_LENGTH.pack(2)))


if __name__ == "__main__":
    unittest.main()


class OneWritePerTaskTest(unittest.TestCase):
    """``Pool.send``: a task's message and its length go in one write (the worker wakes once,
    to the whole message); a large one in two, uncopied."""

    def sent(self, message: bytes) -> tuple[list[int], bytes]:
        from collections import deque
        from types import SimpleNamespace

        from py4cc.local.pool import Pool

        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        os.set_blocking(write_end, False)
        writes: list[int] = []

        def write(fd: int, data: memoryview) -> int:
            writes.append(len(data))
            return os.write(fd, data)

        pool = SimpleNamespace(write=write)
        pool.flush = lambda worker: Pool.flush(pool, worker)  # type: ignore[arg-type]
        worker = SimpleNamespace(outbox=deque(), conn=SimpleNamespace(fileno=lambda: write_end), write_progress=0.0)
        self.assertTrue(Pool.send(pool, worker, message))  # type: ignore[arg-type]
        os.set_blocking(read_end, False)
        return writes, os.read(read_end, 1 << 16)  # what the pipe took in, never waiting

    def test_a_task_is_one_write(self):
        writes, received = self.sent(b"t" * 100)
        self.assertEqual((writes, received), ([104], _LENGTH.pack(100) + b"t" * 100))

    def test_a_large_message_goes_uncopied_after_its_length(self):
        writes, received = self.sent(b"L" * 100_000)
        self.assertEqual(writes[0], 4)
        self.assertEqual(received[:8], _LENGTH.pack(100_000) + b"LLLL")
