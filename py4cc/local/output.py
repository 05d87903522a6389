"""Worker output and events, relayed to the host, line by line, with the worker's pid.

A worker process's fds 1 and 2 are the write ends of two pipes (see
:func:`py4cc.worker.redirect_output`), so Python's ``print`` and an extension's ``printf``
alike end up here. One thread per pool, the relay, reads the other ends, cuts what comes
into lines and hands each to the sink as ``sink(pid, stream, line)``, ``stream`` being
``"stdout"`` or ``"stderr"``. What the pool notices about its workers (a death, a task
timeout, a replacement, a failed start) reaches the sink the same way, as stream
``"event"``. The default sink writes ``[py4cc worker <pid> <stream>] <line>`` to the host's
fd 2.

The sink runs on the relay thread only, never on the dispatcher: a slow sink delays
output, not answers (until a worker fills its pipe, whose writes then wait). A worker's
pipes reach end of file when it exits, so what it wrote before dying is read to the end;
only a line it had not finished (no newline yet) when it was killed is lost.

Until a worker is ready, the relay also keeps the last lines it wrote to stderr (a
:class:`StartTail`): a worker that dies before py4cc's worker code runs (an import that
fails, an Engine module that exits) leaves its cause only there, and the pool's message
about the failed start quotes them.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
import traceback
from collections import deque
from typing import Any

from ..core.sink import GuardedSink, Sink, write_all
from ..protocol import OUTPUT_LINE_MAX


class WakeUp:
    """A pipe the dispatcher watches, so that another thread can interrupt its wait (a
    task started with a new deadline, or stop has begun).

    ``pending`` says a byte is in the pipe already: a wake then costs no write. ``wake``
    and ``close`` are called with the pool's lock held; ``drain`` takes it.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.pending = False
        self.closed = False

    def fds(self) -> tuple[int, int]:
        return self.read_fd, self.write_fd

    def wake(self) -> None:
        if self.pending or self.closed:
            return
        self.pending = True
        try:
            os.write(self.write_fd, b"x")
        except (BlockingIOError, OSError):
            pass

    def drain(self, lock: Any) -> None:
        """Empty the pipe, then clear ``pending``, in that order: clearing first would let
        a ``wake`` in between write a byte that this read swallows, leaving ``pending`` set
        with the pipe empty, and every later ``wake`` a no-op."""
        try:
            os.read(self.read_fd, 4096)
        except OSError:
            pass
        with lock:
            self.pending = False

    def close(self) -> None:
        """Close the pipe, once; later wakes do nothing (its numbers may be reused)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


START_TAIL_LINES = 20
START_TAIL_CHARS = 4096
START_TAIL_WAIT_S = 1.0  # how long a dead worker's stderr may take to reach end of file


class StartTail:
    """The last stderr lines of a worker that is not ready yet (relay lock held)."""

    __slots__ = ("ended", "lines")

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=START_TAIL_LINES)
        self.ended = False  # its stderr reached end of file: nothing more will come


class Stream:
    """One worker pipe the relay reads, and the unfinished line it has read so far."""

    __slots__ = ("fd", "name", "partial", "pid")

    def __init__(self, fd: int, pid: int, name: str) -> None:
        self.fd = fd
        self.pid = pid
        self.name = name
        self.partial = b""


class OutputRelay(threading.Thread):
    """The pool's relay thread. ``add`` and ``event`` may be called from any thread, the
    pool's lock held or not (this relay never takes the pool's lock)."""

    def __init__(self, sink: Sink | None) -> None:
        super().__init__(name="py4cc-output", daemon=True)
        self.sink = GuardedSink(sink)
        self.lock = threading.Lock()
        self.wakeup = WakeUp()
        self.added: list[Stream] = []  # to watch from the next turn on
        self.events: deque[tuple[int, str]] = deque()
        self.stopping = False
        self.stop_deadline = 0.0
        self.launched = False  # the thread was started: it owns (and closes) the fds
        self.start_tails: dict[int, StartTail] = {}  # pid -> stderr tail, until ready
        self.tail_changed = threading.Condition(self.lock)

    # -- any thread -------------------------------------------------------------------

    def add(self, pid: int, stdout_fd: int, stderr_fd: int) -> None:
        """Read a new worker's two pipes from now on; the relay owns (and closes) the fds."""
        with self.lock:
            if self.stopping and not self.launched:
                for fd in (stdout_fd, stderr_fd):
                    os.close(fd)
                return
            self.added += [Stream(stdout_fd, pid, "stdout"), Stream(stderr_fd, pid, "stderr")]
            self.start_tails[pid] = StartTail()
            self.wakeup.wake()

    def ready(self, pid: int) -> None:
        """Worker ``pid`` is ready: its stderr is no longer kept."""
        with self.lock:
            self.start_tails.pop(pid, None)

    def start_stderr(self, pid: int) -> str:
        """The last lines (at most ``START_TAIL_LINES``, ``START_TAIL_CHARS``) worker ``pid``,
        dead before it was ready, wrote to stderr, once they are all read (waiting at most
        ``START_TAIL_WAIT_S``); "" if none. Forgets them."""
        with self.lock:
            tail = self.start_tails.get(pid)
            if tail is None:
                return ""
            if self.launched and self is not threading.current_thread():
                self.tail_changed.wait_for(lambda: tail.ended or self.stopping, START_TAIL_WAIT_S)
            del self.start_tails[pid]
            text = "\n".join(tail.lines)
        return text[-START_TAIL_CHARS:]

    def event(self, pid: int, text: str) -> None:
        """Report something that happened to worker ``pid`` (after the output read so far)."""
        with self.lock:
            self.events.append((pid, text))
            self.wakeup.wake()

    def stop(self, grace: float) -> None:
        """Read what the (stopped) workers still have in their pipes for up to ``grace``
        seconds, deliver it and the pending events, then end the thread and close every fd.
        Waits for that unless called on the relay thread (a sink that finalizes)."""
        with self.lock:
            if not self.stopping:
                self.stopping = True
                self.stop_deadline = time.monotonic() + grace
            self.wakeup.wake()
            launched = self.launched
        if not launched:
            self.close_unlaunched()
        elif self is not threading.current_thread():
            self.join(grace + 1.0)

    # -- the relay thread ---------------------------------------------------------------

    def start(self) -> None:
        with self.lock:
            self.launched = True
        try:
            super().start()
        except BaseException:
            with self.lock:
                self.launched = False
            raise

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        streams: dict[int, Stream] = {}
        wake_fd = self.wakeup.read_fd
        try:
            selector.register(wake_fd, selectors.EVENT_READ)
            while True:
                with self.lock:
                    added, self.added = self.added, []
                    stopping, deadline = self.stopping, self.stop_deadline
                for stream in added:
                    os.set_blocking(stream.fd, False)
                    streams[stream.fd] = stream
                    selector.register(stream.fd, selectors.EVENT_READ)
                timeout = None
                if stopping:
                    timeout = deadline - time.monotonic()
                    if not streams or timeout <= 0:
                        break
                for key, _ in selector.select(timeout):
                    if key.fd == wake_fd:
                        self.wakeup.drain(self.lock)
                    elif key.fd in streams:
                        self.read(streams, selector, streams[key.fd], 16)
                self.deliver_events(streams, selector)
        except BaseException:  # a bug; say so rather than go quiet
            write_all(2, ("py4cc: the worker output relay crashed:\n" + traceback.format_exc()).encode())
        finally:
            for stream in list(streams.values()):
                if stream.fd in streams:
                    self.read(streams, selector, stream, 64)  # what is there already
            for stream in streams.values():
                self.finish(stream)
            streams.clear()
            self.deliver_events(streams, selector)
            selector.close()
            with self.lock:
                self.stopping = True
                self.tail_changed.notify_all()
                for stream in self.added:
                    os.close(stream.fd)
                self.added = []
                self.wakeup.close()

    def read(self, streams: dict[int, Stream], selector: selectors.BaseSelector, stream: Stream, turns: int) -> None:
        """Take what ``stream`` holds now (at most ``turns`` reads: a busy stream must not
        starve the others); at end of file hand on its last piece and drop it."""
        for _ in range(turns):
            try:
                data = os.read(stream.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                selector.unregister(stream.fd)
                del streams[stream.fd]
                self.finish(stream)
                return
            lines = (stream.partial + data).split(b"\n")
            stream.partial = lines.pop()
            for line in lines:
                self.deliver_bytes(stream, line)
            while len(stream.partial) >= OUTPUT_LINE_MAX:
                self.deliver(stream.pid, stream.name, stream.partial[:OUTPUT_LINE_MAX])
                stream.partial = stream.partial[OUTPUT_LINE_MAX:]

    def finish(self, stream: Stream) -> None:
        """The stream is at its end (or the relay stops): its unfinished line, then close."""
        if stream.partial:
            self.deliver_bytes(stream, stream.partial)
            stream.partial = b""
        if stream.name == "stderr":
            with self.lock:
                tail = self.start_tails.get(stream.pid)
                if tail is not None:
                    tail.ended = True
                    self.tail_changed.notify_all()
        try:
            os.close(stream.fd)
        except OSError:
            pass

    def deliver_bytes(self, stream: Stream, line: bytes) -> None:
        if stream.name == "stderr":
            with self.lock:
                tail = self.start_tails.get(stream.pid)
                if tail is not None:
                    tail.lines.append(line[-START_TAIL_CHARS:].decode("utf-8", "backslashreplace").rstrip("\r"))
        for start in range(0, max(len(line), 1), OUTPUT_LINE_MAX):
            self.deliver(stream.pid, stream.name, line[start : start + OUTPUT_LINE_MAX])

    def deliver(self, pid: int, stream: str, line: bytes | str) -> None:
        text = line if isinstance(line, str) else line.decode("utf-8", "backslashreplace")
        if text.endswith("\r"):
            text = text[:-1]
        self.sink(pid, stream, text)

    def deliver_events(self, streams: dict[int, Stream], selector: selectors.BaseSelector) -> None:
        """Hand on the events, each after what its worker wrote before it was noticed (a
        dead worker's pipes hold all it wrote: read them first)."""
        while True:
            with self.lock:
                if not self.events:
                    return
                pid, text = self.events.popleft()
            for stream in [s for s in streams.values() if s.pid == pid]:
                self.read(streams, selector, stream, 64)
            self.deliver(pid, "event", text)

    def close_unlaunched(self) -> None:
        """Close the fds of a relay whose thread never ran, delivering pending events."""
        with self.lock:
            added, self.added = self.added, []
            self.wakeup.close()
        for stream in added:
            self.finish(stream)
        while self.events:
            pid, text = self.events.popleft()
            self.deliver(pid, "event", text)
