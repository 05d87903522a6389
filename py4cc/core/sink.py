"""The output sink: where the workers' output lines and the backends' events end up.

Both backends hand each line to ``sink(pid, stream, line)`` (``stream`` is "stdout",
"stderr" or "event") through :class:`GuardedSink`, so a user's ``worker_output`` callback
that raises is told once and the line still reaches the host's fd 2. The local pool reads
its workers' pipes on a thread of its own (:mod:`py4cc.local.output`); a backend whose lines
arrive on threads it does not own (Ray's) queues them to a :class:`SinkThread`.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections import deque
from typing import Callable

Sink = Callable[[int, str, str], None]
"""``sink(pid, stream, line)``: stream is "stdout", "stderr" or "event"; line has no newline."""


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; give up quietly if it is closed or broken."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            return
        view = view[written:]


def stderr_sink(pid: int, stream: str, line: str) -> None:
    """The default sink: one line on this process's fd 2 (below any ``sys.stderr`` buffer)."""
    write_all(2, f"[py4cc worker {pid} {stream}] {line}\n".encode("utf-8", "backslashreplace"))


class GuardedSink:
    """The user's sink (or :func:`stderr_sink`), called so that its failure loses no line:
    the line goes to fd 2 instead, and the failure is told once."""

    def __init__(self, sink: Sink | None) -> None:
        self.sink: Sink = stderr_sink if sink is None else sink
        self.failed = False

    def __call__(self, pid: int, stream: str, line: str) -> None:
        try:
            self.sink(pid, stream, line)
        except Exception:
            if not self.failed:
                self.failed = True
                stderr_sink(pid, "event", "the worker_output callback raised (told once):\n" + traceback.format_exc())
            stderr_sink(pid, stream, line)


class SinkThread(threading.Thread):
    """Hands queued lines and events to the sink on a thread of its own, so that neither the
    threads that produce them nor a backend's lock wait for the sink."""

    def __init__(self, sink: Sink | None, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.sink = GuardedSink(sink)
        self.cond = threading.Condition()
        self.lines: deque[tuple[int, str, str]] = deque()
        self.stopping = False

    def put(self, pid: int, stream: str, line: str) -> None:
        with self.cond:
            self.lines.append((pid, stream, line))
            self.cond.notify()

    def event(self, pid: int, text: str) -> None:
        self.put(pid, "event", text)

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.lines and not self.stopping:
                    self.cond.wait()
                if not self.lines:
                    return
                pid, stream, line = self.lines.popleft()
            self.sink(pid, stream, line)

    def stop(self, grace: float) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.is_alive() and self is not threading.current_thread():
            self.join(grace)
