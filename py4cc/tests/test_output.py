"""Worker output: every line a worker writes (Python, C, raw fds) reaches the sink with its
pid, in order, also when the worker is killed; events on the same path; the default sink
on stderr; a failing sink; a sink that finalizes the driver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import unittest

from py4cc.driver import Driver
from py4cc.local.output import START_TAIL_CHARS, START_TAIL_LINES, OutputRelay
from py4cc.protocol import OUTPUT_LINE_MAX

from .support import ENGINES_DIR, FLOAT_NAMES, STR_NAMES, DriverTestCase, wait_until

ENGINES = "py4cc_user_engines"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
METHODS = ("fork", "forkserver", "spawn")

Line = tuple[int, str, str]


class Collector:
    """A sink that keeps every (pid, stream, line) it is given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lines: list[Line] = []

    def __call__(self, pid: int, stream: str, line: str) -> None:
        with self.lock:
            self.lines.append((pid, stream, line))

    def of(self, pid: int, stream: str) -> list[str]:
        with self.lock:
            return [line for p, s, line in self.lines if p == pid and s == stream]

    def events(self) -> list[Line]:
        with self.lock:
            return [entry for entry in self.lines if entry[1] == "event"]

    def index(self, entry: Line) -> int:
        with self.lock:
            return self.lines.index(entry)


def talk(d: Driver, what: str, n: int = 7) -> tuple[int, int, int]:
    """Runs one TalkativeEngine task: (key, flag, value)."""
    flag, key, message = d.submit([0.0, 0.0], [what, "", ""], n)
    assert flag == 0, message
    return key, *d.wait(key, 30)[:2]


class OutputTest(DriverTestCase):
    def talkative(self, method: str = "forkserver", **options) -> tuple[Driver, Collector]:
        sink = Collector()
        d = self.make_driver(
            engine=f"{ENGINES}:TalkativeEngine", start_method=method, worker_output=sink, n_subprocesses=1, **options
        )
        return d, sink

    def test_every_line_of_every_writer_arrives_with_its_pid(self):
        for method in METHODS:
            with self.subTest(method=method):
                d, sink = self.talkative(method)
                pid = d.worker_pids()[0]
                self.assertEqual(talk(d, "lines")[1:], (0, 7))
                d.finalize()  # the relay reads the pipes to their end
                self.assertEqual(
                    sink.of(pid, "stdout"),
                    ["engine ready", "python stdout 7", "C printf 7", "not utf-8: \\xff\\xfe", "crlf line"],
                )
                self.assertEqual(sink.of(pid, "stderr"), ["python stderr 7", "raw fd 2, in two pieces"])
                self.assertEqual({p for p, _, _ in sink.lines}, {pid})

    def test_a_killed_worker_s_last_lines_come_before_its_death(self):
        for method in METHODS:
            with self.subTest(method=method):
                self.check_killed_worker(method)

    def check_killed_worker(self, method: str) -> None:
        d, sink = self.talkative(method)
        pid = d.worker_pids()[0]
        key, flag, _ = talk(d, "die")
        self.assertEqual(flag, 2)
        self.assertTrue(wait_until(lambda: any("replacing" in e[2] for e in sink.events()), 30))
        death = (pid, "event", f"exited with exit code -9 (killed by SIGKILL) while running task {key}")
        self.assertIn(death, sink.events())
        for stream in ("stdout", "stderr"):
            last = (pid, stream, f"last words on {stream}")
            self.assertLess(sink.index(last), sink.index(death), sink.lines)
        (new_pid,) = d.worker_pids()
        self.assertIn((new_pid, "event", f"started, replacing worker process {pid}"), sink.events())
        self.assertTrue(wait_until(lambda: "engine ready" in sink.of(new_pid, "stdout"), 30))

    def test_a_line_without_a_newline_arrives_when_the_worker_exits(self):
        d, sink = self.talkative()
        pid = d.worker_pids()[0]
        talk(d, "tail")
        d.finalize()
        self.assertEqual(sink.of(pid, "stdout")[-1], "no newline at the end")

    def test_a_long_line_comes_in_pieces(self):
        d, sink = self.talkative()
        pid = d.worker_pids()[0]
        talk(d, "long", 2 * OUTPUT_LINE_MAX + 10)
        d.finalize()
        pieces = sink.of(pid, "stdout")[1:]
        self.assertEqual([len(p) for p in pieces], [OUTPUT_LINE_MAX, OUTPUT_LINE_MAX, 10])
        self.assertEqual(set("".join(pieces)), {"x"})

    def test_a_timeout_is_told_as_events(self):
        sink = Collector()
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", task_timeout=0.5, worker_output=sink)
        pid = d.worker_pids()[0]
        _, key, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 1)
        self.assertEqual(d.wait(key, 30)[0], 2)
        self.assertTrue(wait_until(lambda: len(sink.events()) == 3, 30))
        (new_pid,) = d.worker_pids()
        self.assertEqual(
            sink.events(),
            [
                (pid, "event", f"task {key} ran past task_timeout (0.5 s): killing the worker"),
                (
                    pid,
                    "event",
                    "exited with exit code -9 (killed by SIGKILL), "
                    "killed because its task ran past task_timeout (0.5 s)",
                ),
                (new_pid, "event", f"started, replacing worker process {pid}"),
            ],
        )

    def test_a_sink_may_finalize_the_driver(self):
        holder = []

        def sink(pid: int, stream: str, line: str) -> None:
            if line == "python stdout 7":
                holder[0].finalize()

        d = self.make_driver(engine=f"{ENGINES}:TalkativeEngine", worker_output=sink)
        holder.append(d)
        relay = d._pool.relay
        d.submit([0.0, 0.0], ["lines", "", ""], 7)
        self.assertTrue(wait_until(lambda: d.stats()["state"] == "finalized", 30))
        self.assertTrue(wait_until(lambda: not relay.is_alive(), 30))
        self.assertEqual(d.submit([0.0, 0.0], ["lines", "", ""], 7)[0], 9)

    def test_worker_output_must_be_callable(self):
        d = Driver(worker_output="stderr")
        self.addCleanup(d.finalize)
        with self.assertRaises(TypeError) as caught:
            d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertEqual(
            str(caught.exception),
            "worker_output must be None or a callable (pid, stream, line), got 'stderr' (type str)",
        )


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh Python (py4cc and the test engines importable)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path[:0] = [{REPO_ROOT!r}, {ENGINES_DIR!r}]
        from py4cc.driver import Driver
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False
    )


class StartTailTest(unittest.TestCase):
    """The stderr lines a not-yet-ready worker wrote, kept for a failed start's message."""

    def relay_with_pipes(self, pid: int) -> tuple[OutputRelay, int, int]:
        relay = OutputRelay(lambda pid, stream, line: None)
        relay.start()
        self.addCleanup(relay.stop, 1.0)
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        relay.add(pid, out_read, err_read)
        return relay, out_write, err_write

    def test_only_the_last_lines_are_kept_within_the_bound(self):
        relay, out_write, err_write = self.relay_with_pipes(7)
        os.write(out_write, b"stdout is not kept\n")
        os.write(err_write, b"".join(b"line %d\n" % n for n in range(START_TAIL_LINES + 5)))
        os.write(err_write, b"x" * (2 * START_TAIL_CHARS) + b"\nunfinished")
        os.close(out_write)
        os.close(err_write)
        tail = relay.start_stderr(7)
        self.assertEqual(len(tail), START_TAIL_CHARS)
        self.assertTrue(tail.endswith("\nunfinished"), tail[-40:])
        self.assertNotIn("stdout", tail)
        self.assertEqual(relay.start_stderr(7), "")  # forgotten once taken

    def test_lines_of_a_ready_worker_are_not_kept(self):
        relay, out_write, err_write = self.relay_with_pipes(8)
        relay.ready(8)
        os.write(err_write, b"a warning after the start\n")
        os.close(out_write)
        os.close(err_write)
        self.assertEqual(relay.start_stderr(8), "")

    def test_few_lines_come_whole(self):
        relay, out_write, err_write = self.relay_with_pipes(9)
        os.write(err_write, b"".join(b"line %d\n" % n for n in range(START_TAIL_LINES + 5)))
        os.close(out_write)
        os.close(err_write)
        expected = "\n".join(f"line {n}" for n in range(5, START_TAIL_LINES + 5))
        self.assertEqual(relay.start_stderr(9), expected)


class DefaultSinkTest(unittest.TestCase):
    def test_lines_and_events_go_to_stderr_with_a_prefix(self):
        done = run_script(
            """
            d = Driver(n_subprocesses=1, engine="py4cc_user_engines:TalkativeEngine")
            d.initialize("{}", ["f0", "f1"], ["a", "b", "c"])
            pid = d.worker_pids()[0]
            _, key, _ = d.submit([0.0, 0.0], ["lines", "", ""], 7)
            assert d.wait(key, 30)[0] == 0
            _, key, _ = d.submit([0.0, 0.0], ["die", "", ""], 7)
            assert d.wait(key, 30)[0] == 2
            d.finalize()
            print(pid, key)
            """
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        pid, key = done.stdout.split()
        for line in (
            f"[py4cc worker {pid} stdout] engine ready",
            f"[py4cc worker {pid} stdout] python stdout 7",
            f"[py4cc worker {pid} stdout] C printf 7",
            f"[py4cc worker {pid} stderr] python stderr 7",
            f"[py4cc worker {pid} stderr] raw fd 2, in two pieces",
            f"[py4cc worker {pid} stdout] last words on stdout",
            f"[py4cc worker {pid} event] exited with exit code -9 (killed by SIGKILL) while running task {key}",
        ):
            self.assertIn(line + "\n", done.stderr)
        # Nothing of the workers' reaches the host's stdout.
        self.assertEqual(done.stdout, f"{pid} {key}\n")

    def test_a_raising_sink_is_told_once_and_the_lines_reach_stderr(self):
        done = run_script(
            """
            calls = []
            def sink(pid, stream, line):
                calls.append(line)
                raise ValueError("the sink is broken")
            d = Driver(n_subprocesses=1, engine="py4cc_user_engines:TalkativeEngine", worker_output=sink)
            d.initialize("{}", ["f0", "f1"], ["a", "b", "c"])
            pid = d.worker_pids()[0]
            _, key, _ = d.submit([0.0, 0.0], ["lines", "", ""], 7)
            assert d.wait(key, 30)[0] == 0
            d.finalize()
            print(pid, len(calls))
            """
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        pid, calls = done.stdout.split()
        self.assertEqual(int(calls), 7)  # every line was offered to the sink
        self.assertEqual(done.stderr.count("the worker_output callback raised (told once)"), 1)
        self.assertIn("ValueError: the sink is broken", done.stderr)
        self.assertIn(f"[py4cc worker {pid} stdout] python stdout 7\n", done.stderr)
        self.assertIn(f"[py4cc worker {pid} stderr] raw fd 2, in two pieces\n", done.stderr)


if __name__ == "__main__":
    unittest.main()
