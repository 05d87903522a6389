"""Driver.stats(): its keys, its counts in every state a task and a worker can be in, and
the run-time window's percentiles against an independent computation."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import types
import unittest

from py4cc import protocol
from py4cc.core.stats import BatchStats, Counters, RunTimes, task_stats
from py4cc.driver import Driver

from .support import DriverTestCase, wait_until

ENGINES = "py4cc_user_engines"


def nearest_rank(values: list[float], p: float) -> float:
    """The smallest value v with at least p% of ``values`` <= v (no sorting shortcut)."""
    n = len(values)
    return min(v for v in values if sum(1 for x in values if x <= v) * 100.0 >= p * n)


class HostBook:
    """A task book whose host has read one running task's answer, not settled yet: settling
    moves that task from the book (running) to the host's finished answers."""

    def __init__(self) -> None:
        self.options = types.SimpleNamespace(n_subprocesses=1)
        self.tasks = {1: "running"}
        self.pending: list[object] = []
        self.finished_held = 0
        self.counters = Counters()
        self.run_times = RunTimes()
        self.cancelled = self.expired = 0
        self.batch_stats = BatchStats()
        self.host_settled = 0

    def held(self, settle: bool = True) -> int:
        if settle and self.tasks:
            self.tasks.clear()
            self.host_settled = 1
        return len(self.tasks) + self.host_settled


class TaskStatsTest(unittest.TestCase):
    def test_the_counts_agree_when_an_answer_waits_to_be_settled(self):
        # The backend counted the task running; stats must not settle it meanwhile (a
        # race CI found: 3 held, 3 finished and 1 running).
        stats = task_stats(
            HostBook(),
            "running",
            queued_in_workers=0,
            running=1,
            alive=1,
            ready=1,
            workers_degraded=0,
            last_worker_failure="",
            cluster="",
            cluster_lost=None,
        )
        counts = (stats["tasks_held"], stats["tasks_queued"], stats["tasks_running"], stats["tasks_finished"])
        self.assertEqual(counts, (1, 0, 1, 0))


class RunTimesTest(unittest.TestCase):
    def test_empty_window_has_no_percentiles(self):
        window = RunTimes(8)
        self.assertEqual(len(window), 0)
        self.assertIsNone(window.percentile(50))
        self.assertIsNone(window.percentile(99))

    def test_percentiles_follow_the_latest_values(self):
        rng = random.Random(7)
        window = RunTimes(50)
        seen = []
        for i in range(400):
            # Repeated values too: removing the oldest must remove exactly one copy.
            value = rng.choice([0.001, 0.002, 0.5]) if i % 3 == 0 else rng.random()
            window.add(value)
            seen.append(value)
            latest = seen[-50:]
            self.assertEqual(len(window), len(latest))
            for p in (1, 50, 90, 99, 100):
                self.assertEqual(window.percentile(p), nearest_rank(latest, p), (i, p))
        self.assertEqual(sorted(window.sorted), sorted(seen[-50:]))

    def test_the_default_window_is_the_protocols(self):
        self.assertEqual(RunTimes().size, protocol.RUN_TIME_WINDOW)
        self.assertEqual(protocol.RUN_TIME_WINDOW, 1024)


class StatsTest(DriverTestCase):
    def gate(self) -> str:
        """A path whose file, once made, lets GateEngine's tasks finish."""
        directory = tempfile.mkdtemp(prefix="py4cc-gate-")
        self.addCleanup(shutil.rmtree, directory, True)
        return os.path.join(directory, "open")

    def test_the_keys_are_the_contracts(self):
        d = self.make_driver()
        self.assertEqual(list(d.stats()), list(protocol.STAT_NAMES))
        self.assertEqual(protocol.DRIVER_CONTRACT["stats"], list(protocol.STAT_NAMES))

    def test_before_initialize_and_after_finalize_without_pool(self):
        d = Driver(n_subprocesses=3)
        stats = d.stats()
        self.assertEqual(stats["state"], "new")
        self.assertEqual(stats["workers_wanted"], 3)
        self.assertEqual((stats["last_death_cause"], stats["last_worker_failure"]), ("", ""))
        self.assertIsNone(stats["run_time_p50"])
        self.assertIsNone(stats["run_time_p99"])
        self.assertEqual((stats["cluster"], stats["cluster_lost"]), ("", None))  # the local pool's
        texts = ("state", "workers_wanted", "last_death_cause", "last_worker_failure", "cluster", "cluster_lost")
        numbers = {k: v for k, v in stats.items() if k not in texts}
        self.assertEqual(set(numbers.values()) - {None}, {0}, numbers)
        d.finalize()
        self.assertEqual(d.stats()["state"], "finalized")

    def test_queued_running_finished_and_retrieved(self):
        gate = self.gate()
        d = self.make_driver(
            config=f'{{"gate": "{gate}"}}', engine=f"{ENGINES}:GateEngine", n_subprocesses=1, prefetch=0, max_tasks=10
        )
        keys = [d.submit([0.0, 0.0], ["a", "b", "c"], n)[1] for n in (11, 12, 13, 14)]
        self.assertTrue(wait_until(lambda: d.stats()["tasks_running"] == 1))
        stats = d.stats()
        self.assertEqual(
            {k: stats[k] for k in ("tasks_held", "tasks_queued", "tasks_running", "tasks_finished")},
            {"tasks_held": 4, "tasks_queued": 3, "tasks_running": 1, "tasks_finished": 0},
        )
        self.assertEqual((stats["state"], stats["workers_wanted"], stats["workers_alive"]), ("running", 1, 1))
        self.assertEqual((stats["workers_ready"], stats["worker_starts"]), (1, 1))
        self.assertEqual((stats["tasks_done"], stats["run_time_samples"]), (0, 0))
        self.assertIsNone(stats["run_time_p50"])
        open(gate, "w").close()
        self.assertTrue(wait_until(lambda: d.stats()["tasks_finished"] == 4))
        stats = d.stats()
        self.assertEqual((stats["tasks_held"], stats["tasks_queued"], stats["tasks_running"]), (4, 0, 0))
        self.assertEqual((stats["tasks_done"], stats["tasks_failed"], stats["run_time_samples"]), (4, 0, 4))
        self.assertGreater(stats["run_time_p50"], 0.0)
        self.assertGreaterEqual(stats["run_time_p99"], stats["run_time_p50"])
        self.assertEqual([d.retrieve(k) for k in keys], [(0, n, "") for n in (11, 12, 13, 14)])
        stats = d.stats()
        self.assertEqual((stats["tasks_held"], stats["tasks_finished"]), (0, 0))
        # Nothing the other helpers count yet has happened.
        self.assertEqual((stats["tasks_cancelled"], stats["tasks_expired"], stats["worker_deaths"]), (0, 0, 0))

    def test_cancelled_and_expired_tasks_leave_the_counts(self):
        gate = self.gate()
        d = self.make_driver(
            config=f'{{"gate": "{gate}"}}',
            engine=f"{ENGINES}:GateEngine",
            n_subprocesses=1,
            prefetch=1,
            max_tasks=10,
            result_ttl=0.3,
        )
        running, prefetched, pending = (d.submit([0.0, 0.0], ["a", "b", "c"], n)[1] for n in (1, 2, 3))
        self.assertTrue(wait_until(lambda: d.stats()["tasks_running"] == 1))

        def counts():
            stats = d.stats()
            keys = ("tasks_held", "tasks_queued", "tasks_running", "tasks_finished", "tasks_cancelled", "tasks_expired")
            return tuple(stats[k] for k in keys)

        self.assertEqual(counts(), (3, 2, 1, 0, 0, 0))
        self.assertTrue(d.cancel(running))  # its worker still runs it, but it is no longer held
        self.assertEqual(counts(), (2, 2, 0, 0, 1, 0))
        self.assertTrue(d.cancel(pending))
        self.assertEqual(counts(), (1, 1, 0, 0, 2, 0))
        open(gate, "w").close()
        self.assertTrue(wait_until(lambda: counts()[3] == 1))
        self.assertEqual(counts(), (1, 0, 0, 1, 2, 0))
        self.assertTrue(wait_until(lambda: counts()[5] == 1))  # nobody retrieved it within 0.3 s
        self.assertEqual(counts(), (0, 0, 0, 0, 2, 1))
        self.assertEqual(d.retrieve(prefetched)[0], 9)
        _, done, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 4)
        self.assertTrue(wait_until(lambda: counts()[3] == 1))
        self.assertTrue(d.cancel(done))  # a finished one
        self.assertEqual(counts(), (0, 0, 0, 0, 3, 1))
        stats = d.stats()
        self.assertEqual(
            (stats["tasks_done"], stats["tasks_failed"]), (2, 0)
        )  # the cancelled running one never answered

    def test_prefetched_tasks_count_as_queued(self):
        gate = self.gate()
        d = self.make_driver(
            config=f'{{"gate": "{gate}"}}', engine=f"{ENGINES}:GateEngine", n_subprocesses=1, prefetch=1, max_tasks=10
        )
        for n in (1, 2, 3):
            self.assertEqual(d.submit([0.0, 0.0], ["a", "b", "c"], n)[0], 0)
        self.assertTrue(wait_until(lambda: d.stats()["tasks_running"] == 1))
        stats = d.stats()
        self.assertEqual((stats["tasks_queued"], stats["tasks_running"], stats["tasks_held"]), (2, 1, 3))
        open(gate, "w").close()

    def test_failures_timeouts_deaths_and_replacements(self):
        d = self.make_driver(engine=f"{ENGINES}:SleepEngine", n_subprocesses=1, task_timeout=0.5)
        _, slow, _ = d.submit([30.0, 0.0], ["a", "b", "c"], 1)
        self.assertEqual(d.wait(slow, 30)[0], 2)
        self.assertTrue(wait_until(lambda: d.stats()["workers_ready"] == 1 and d.stats()["worker_starts"] == 2, 30))
        stats = d.stats()
        self.assertEqual((stats["tasks_failed"], stats["tasks_timed_out"], stats["tasks_done"]), (1, 1, 0))
        self.assertEqual((stats["worker_deaths"], stats["replacement_failures"]), (1, 0))
        self.assertIn("killed by SIGKILL", stats["last_death_cause"])
        self.assertIn("its task ran past task_timeout (0.5 s)", stats["last_death_cause"])
        # The timed-out task never answered: no run time for it.
        self.assertEqual(stats["run_time_samples"], 0)
        _, quick, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 5)
        self.assertEqual(d.wait(quick, 30), (0, 5, "slept"))
        stats = d.stats()
        self.assertEqual((stats["tasks_done"], stats["run_time_samples"]), (1, 1))

    def test_a_crash_and_a_raising_model(self):
        d = self.make_driver(engine=f"{ENGINES}:ExitingEngine", n_subprocesses=1)
        pid = d.worker_pids()[0]
        _, key, _ = d.submit([0.0, 0.0], ["a", "b", "c"], 3)
        self.assertEqual(d.wait(key, 30)[0], 2)
        self.assertTrue(wait_until(lambda: d.stats()["worker_deaths"] == 1))
        stats = d.stats()
        self.assertEqual(stats["last_death_cause"], f"worker process {pid} exited with exit code 3")
        self.assertEqual((stats["tasks_failed"], stats["tasks_timed_out"]), (1, 0))

    def test_an_idle_worker_killed_is_counted(self):
        d = self.make_driver(n_subprocesses=2)
        victim = d.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: d.stats()["worker_starts"] == 3 and d.stats()["workers_ready"] == 2, 30))
        stats = d.stats()
        self.assertEqual(stats["worker_deaths"], 1)
        self.assertEqual(
            stats["last_death_cause"], f"worker process {victim} exited with exit code -9 (killed by SIGKILL)"
        )
        self.assertEqual((stats["workers_alive"], stats["tasks_failed"]), (2, 0))

    def test_replacement_failures(self):
        marker = self.gate()
        d = self.make_driver(config=f'{{"marker": "{marker}"}}', engine=f"{ENGINES}:FragileInitEngine")
        open(marker, "w").close()
        os.kill(d.worker_pids()[0], signal.SIGKILL)
        # Every restart fails: each is counted, the slot is degraded, the traceback kept.
        self.assertTrue(wait_until(lambda: d.stats()["replacement_failures"] >= 3, 30))
        stats = d.stats()
        self.assertGreaterEqual(stats["worker_starts"], 4)
        self.assertEqual((stats["workers_ready"], stats["workers_degraded"], stats["state"]), (0, 1, "running"))
        self.assertIn("failed to initialise its engine:\nTraceback", stats["last_worker_failure"])
        self.assertIn("RuntimeError: the marker file exists: refusing to start", stats["last_worker_failure"])
        flag, _, message = d.submit([0.0, 0.0], ["a", "b", "c"], 1)
        self.assertEqual(flag, 9)
        self.assertIn("failed to initialise its engine", message)
        os.remove(marker)
        self.assertTrue(wait_until(lambda: d.stats()["workers_ready"] == 1, 30))
        stats = d.stats()
        self.assertEqual(stats["workers_degraded"], 0)
        self.assertIn("the marker file exists", stats["last_worker_failure"])  # kept for the record

    def test_state_follows_drain_and_finalize(self):
        d = self.make_driver()
        self.assertEqual(d.stats()["state"], "running")
        d.drain(5)
        stats = d.stats()
        self.assertEqual((stats["state"], stats["workers_alive"]), ("finalized", 0))

    def test_workers_wanted_resolves_one_per_cpu(self):
        d = self.make_driver(n_subprocesses=0)
        self.assertEqual(d.stats()["workers_wanted"], os.cpu_count())


if __name__ == "__main__":
    unittest.main()
