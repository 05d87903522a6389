"""The Ray backend (``Driver(backend="ray")``).

``RayOptionsTest`` needs no Ray. The rest run on a real Ray cluster on 127.0.0.1 (a head
and two one-CPU worker nodes, :mod:`py4cc.tests.ray_cluster`), and only when
``RS4PY_RAY_TESTS=1`` and ``ray`` is importable: ``.ci/run`` runs them inside a network
namespace that has only the loopback interface. With ``RS4PY_RAY_ADDRESS`` set they use
that cluster (adding and stopping worker nodes of their own), else they start one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any
from unittest import mock

from py4cc.core.slots import Slot
from py4cc.driver import Driver
from py4cc.engine import big_model
from py4cc.options import build_options
from py4cc.protocol import AT_CAPACITY, ERROR, FAILED, NOT_FINISHED, OK
from py4cc.ray import connect as ray_connect
from py4cc.ray.backend import Actor, RayBackend
from py4cc.tests.ray_cluster import ADDRESS_VARIABLE, RayCluster, children, running
from py4cc.tests.support import ENGINES_DIR, FLOAT_NAMES, STR_NAMES, TASK, DriverTestCase, add_engines_dir, wait_until
from py4cc.validate import encode_call_arguments

ENABLED = os.environ.get("RS4PY_RAY_TESTS") == "1"
HAVE_RAY = importlib.util.find_spec("ray") is not None
SKIP_REASON = (
    "Ray tests skipped: they need RS4PY_RAY_TESTS=1 and the ray package in this Python "
    f"({sys.executable}); .ci/run runs them on a loopback cluster"
)
CLUSTER: RayCluster | None = None
QUICK = ([0.0, 0.0], ["a", "b", "c"], 2)
"""A task the SleepEngine answers at once, ``(OK, 2, "slept")``."""
WAIT_S = 120.0  # generous: the machine may be busy


def setUpModule() -> None:
    global CLUSTER
    if not (ENABLED and HAVE_RAY):
        print(f"\n{SKIP_REASON}", file=sys.stderr)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = os.environ.get("RS4PY_RAY_TEMP_DIR")
    address = os.environ.get(ADDRESS_VARIABLE)
    CLUSTER = RayCluster(temp_dir, address)
    if not address:
        try:
            CLUSTER.start_head()
            CLUSTER.add_worker()
            CLUSTER.add_worker()
        except BaseException:
            CLUSTER.stop()
            raise


def tearDownModule() -> None:
    if CLUSTER is not None:
        CLUSTER.stop()


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUIET_HOST = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from py4cc.driver import Driver

lines = []
d = Driver(n_subprocesses=1, backend="ray", ray_address=sys.argv[1], init_timeout=120,
           engine="py4cc_user_engines:SleepEngine", worker_output=lambda *line: lines.append(line))
d.initialize("{}", ["a", "b"], ["c", "d", "e"])
[pid] = d.worker_pids()
key = d.submit([60.0, 0.0], ["a", "b", "c"], 1)[1]
os.kill(pid, signal.SIGKILL)
flag = d.wait(key, 120)[0]
key = d.submit([0.0, 0.0], ["a", "b", "c"], 1)[1]
print("failed", flag, "then", d.wait(key, 120)[0], flush=True)
d.finalize()
"""


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


class RayOptionsTest(unittest.TestCase):
    """What needs no cluster: options, the missing-ray error, what the actors are sent."""

    def options(self, **changes: Any) -> Any:
        values: dict[str, Any] = {
            "config_json": "{}",
            "float_feature_names": [],
            "str_feature_names": [],
            "extra": {},
            "start_method": "spawn",
            "max_tasks": 4,
            "n_subprocesses": 0,
            "task_timeout": None,
            "init_timeout": None,
            "prefetch": 1,
            "engine": "py4cc.engine:Engine",
        }
        values.update(changes)
        return build_options(**values)

    def test_backend_and_address_are_checked(self) -> None:
        self.assertEqual(self.options().backend, "local")
        ray = self.options(backend="ray", ray_address="127.0.0.1:6379")
        self.assertEqual((ray.backend, ray.ray_address, ray.n_subprocesses), ("ray", "127.0.0.1:6379", 0))
        self.assertGreaterEqual(self.options().n_subprocesses, 1)  # local: 0 is one per CPU
        with self.assertRaisesRegex(ValueError, "backend must be one of 'local', 'ray'; got 'dask'"):
            self.options(backend="dask")
        with self.assertRaisesRegex(ValueError, "only used with backend='ray'"):
            self.options(ray_address="127.0.0.1:6379")
        for bad in ("", " 127.0.0.1:6379", 6379):
            with self.assertRaisesRegex(ValueError, "ray_address must be None or a cluster address"):
                self.options(backend="ray", ray_address=bad)

    def test_preload_is_the_local_pool_s(self) -> None:
        with self.assertRaisesRegex(ValueError, "preload='module' is for the local pool's worker processes"):
            self.options(backend="ray", preload="module", start_method="forkserver")

    def test_missing_ray_names_the_interpreter(self) -> None:
        driver = Driver(n_subprocesses=1, backend="ray")
        self.addCleanup(driver.finalize)
        # With None in sys.modules, import ray fails.
        with mock.patch.dict(sys.modules, {"ray": None}), self.assertRaises(ImportError) as caught:
            driver.initialize("{}", FLOAT_NAMES, STR_NAMES)
        message = str(caught.exception)
        self.assertIn(sys.executable, message)
        self.assertIn(f"{sys.executable} -m pip install ray", message)
        self.assertEqual(driver.submit(*TASK)[0], ERROR)  # nothing started

    def test_modules_shipped_to_the_cluster(self) -> None:
        py4cc_dir = os.path.dirname(os.path.dirname(os.path.abspath(ray_connect.__file__)))
        self.assertEqual(ray_connect.modules_to_ship("py4cc.engine:Engine"), [py4cc_dir])
        self.assertEqual(ray_connect.modules_to_ship("json:JSONDecoder"), [py4cc_dir])  # the standard library
        add_engines_dir()
        self.assertEqual(
            ray_connect.modules_to_ship("py4cc_user_engines:EchoEngine"),
            [py4cc_dir, os.path.join(ENGINES_DIR, "py4cc_user_engines.py")],
        )
        with tempfile.TemporaryDirectory() as root:
            package = os.path.join(root, "rs4py_test_models")
            os.makedirs(os.path.join(package, "sub"))
            for path in ("__init__.py", os.path.join("sub", "__init__.py")):
                open(os.path.join(package, path), "w").close()
            sys.path.insert(0, root)
            try:
                self.assertEqual(ray_connect.modules_to_ship("rs4py_test_models.sub:Engine"), [py4cc_dir, package])
            finally:
                sys.path.remove(root)

    def test_addresses(self) -> None:
        self.assertEqual(ray_connect.split_address("10.0.0.5:6379"), ("10.0.0.5", 6379))
        self.assertEqual(ray_connect.split_address("[::1]:6379"), ("::1", 6379))
        self.assertIsNone(ray_connect.split_address("auto"))
        self.assertTrue(ray_connect.same_address("localhost:6379", "127.0.0.1:6379"))
        self.assertFalse(ray_connect.same_address("127.0.0.1:6379", "127.0.0.1:6380"))

    def test_unreachable_cluster_is_a_clear_error(self) -> None:
        with self.assertRaisesRegex(RuntimeError, "Ray Client address"):
            ray_connect.check_reachable(None, "ray://127.0.0.1:10001")
        with self.assertRaisesRegex(RuntimeError, "is not 'host:port'"):
            ray_connect.check_reachable(None, "somewhere")
        port = closed_port()
        with self.assertRaisesRegex(RuntimeError, f"cannot reach the Ray cluster at 127.0.0.1:{port}: .*refused"):
            ray_connect.check_reachable(None, f"127.0.0.1:{port}")

    @unittest.skipUnless(HAVE_RAY, "needs the ray package (no cluster)")
    def test_an_address_that_is_not_a_ray_cluster_is_refused_within_the_bound_it_names(self) -> None:
        # Before: "did not answer as a Ray cluster within 10 s" came after about 20 s (Ray's
        # client waits 10 s more than it is told).
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        self.addCleanup(close_all, accepted)
        port = listener.getsockname()[1]
        import ray

        started = time.monotonic()
        with self.assertRaisesRegex(
            RuntimeError, f"127.0.0.1:{port} accepts connections but did not answer as a Ray cluster within 10 s"
        ):
            ray_connect.check_reachable(ray, f"127.0.0.1:{port}")
        self.assertLess(time.monotonic() - started, ray_connect.GCS_CHECK_TIMEOUT_S + 5.0)

    def test_an_actor_that_never_ran_keeps_the_last_cause_and_is_no_failed_start(self) -> None:
        # Before: after a node loss, the replacement Ray placed on the dying node (it never
        # ran) became "last_death_cause" ("Ray actor pid 0 on node ? (?) died: ... cancelled
        # before it started running"), a replacement failure and a degraded slot.
        backend = RayBackend(self.options(backend="ray"))
        lost = Actor(None, Slot(0))
        lost.pid, lost.node, lost.ready = 4321, "a1b2c3" * 4, True
        backend.slots, backend.actors, lost.slot.worker = [lost.slot], [lost], lost
        never_ran = Actor(None, Slot(1))
        backend.slots.append(never_ran.slot)
        backend.actors.append(never_ran)
        never_ran.slot.worker = never_ran
        with backend.lock:
            backend.lose_actor(lost, "died: The actor is dead because its node has died.")
            cause = backend.counters.last_death_cause
            backend.lose_actor(never_ran, "died: The actor never ran - it was cancelled before it started running.")
        self.assertEqual(
            cause, "Ray actor pid 4321 on node a1b2c3a1b2c3 (?) died: The actor is dead because its node has died."
        )
        self.assertEqual(backend.counters.last_death_cause, cause)
        self.assertEqual((backend.counters.worker_deaths, backend.counters.replacement_failures), (1, 0))
        self.assertEqual([slot.degraded for slot in backend.slots], [False, False])
        self.assertIsNotNone(never_ran.slot.restart_at, "its slot tries again")
        self.assertEqual(backend.actors, [])
        if HAVE_RAY:  # replacements prefer other nodes than the one that lost an actor
            strategy = backend.placement()["scheduling_strategy"]
            [expression] = strategy.soft
            self.assertEqual((expression.key, expression.operator.values), ("ray.io/node-id", [lost.node]))

    def test_death_reason_keeps_ray_s_explanation(self) -> None:
        error = RuntimeError(
            "The actor died unexpectedly before finishing this task.\n\tclass_name: EngineActor\n\tpid: 12\n"
            "The actor died because its node has died."
        )
        self.assertEqual(
            ray_connect.death_reason(error),
            "The actor died unexpectedly before finishing this task. The actor died because its node has died.",
        )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@unittest.skipUnless(ENABLED and HAVE_RAY, SKIP_REASON)
class RayClusterTest(DriverTestCase):
    """Drivers whose Engines are actors on the loopback cluster."""

    def ray_driver(self, **options: Any) -> Driver:
        assert CLUSTER is not None
        options.setdefault("n_subprocesses", 2)
        options.setdefault("init_timeout", WAIT_S)
        add_engines_dir()
        return self.make_driver(backend="ray", ray_address=CLUSTER.address, **options)

    def answer(self, driver: Driver, key: int) -> tuple:
        return driver.wait(key, WAIT_S)

    def test_answers_match_the_model(self) -> None:
        host_handler = signal.getsignal(signal.SIGTERM)
        driver = self.ray_driver()
        self.assertIs(signal.getsignal(signal.SIGTERM), host_handler, "ray.init's SIGTERM handler stays out")
        self.assertEqual(driver.n_subprocesses, 2)
        self.assertEqual(len(driver.worker_pids()), 2)
        tasks = [([1.5 * i, -2.25], ["abc", "dé", "f" * i], i) for i in range(60)]
        keys = [driver.submit(*task) for task in tasks]
        self.assertTrue(all(flag == OK for flag, _, _ in keys))
        for (_, key, _), task in zip(keys, tasks):
            self.assertEqual(self.answer(driver, key), (OK, big_model(*task), ""))
        self.assertEqual(driver.held_tasks(), 0)

    def test_engine_gets_what_initialize_was_given(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:EchoEngine", config='{"add": 5}', extra={"region": "eu"})
        flag, key, _ = driver.submit([1.0, 2.0], ["a", "b", "c"], 10)
        flag, value, message = self.answer(driver, key)
        self.assertEqual((flag, value), (OK, 16))
        info = json.loads(message)
        self.assertEqual(info["config"], {"add": 5})
        self.assertEqual((info["float_feature_names"], info["str_feature_names"]), (FLOAT_NAMES, STR_NAMES))
        self.assertEqual(info["extra"], {"region": "eu"})
        self.assertIn(info["pid"], driver.worker_pids())

    def test_py4cc_and_the_engine_come_from_the_runtime_environment(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:WhereEngine", n_subprocesses=1)
        flag, _value, message = self.answer(driver, driver.submit(*TASK)[1])
        self.assertEqual(flag, OK, message)
        where = json.loads(message)
        # Both unpacked from the packages uploaded with the actor, not read from this tree.
        self.assertIn("runtime_resources", where["py4cc"])
        self.assertIn("runtime_resources", where["engine"])
        # The worker's side only: none of the Driver's machinery (nor Ray's backend) loads there.
        self.assertIn("py4cc.ray.actor", where["modules"])
        self.assertIn("py4cc.worker", where["modules"])
        machinery = {"py4cc.driver", "py4cc.local.pool", "py4cc.ray.connect", "py4cc.ray.backend"}
        machinery |= {name for name in where["modules"] if name.startswith("py4cc.core")}
        self.assertEqual(machinery & set(where["modules"]), set())

    def test_failures_and_limits_answer_as_locally(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:RaisingEngine", max_tasks=3, prefetch=0)
        flag, value, message = self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 3)[1])
        self.assertEqual((flag, value), (FAILED, -1))
        self.assertIn("ValueError: boom from the user engine (3)", message)
        self.assertEqual(self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 4)[1]), (OK, 4, ""))
        self.assertEqual(driver.wait(10**6, 0.1)[0], ERROR)
        keys = [driver.submit([0.0, 0.0], ["a", "b", "c"], 2)[1] for _ in range(3)]
        self.assertEqual(driver.submit([0.0, 0.0], ["a", "b", "c"], 2)[0], AT_CAPACITY)
        for key in keys:
            self.assertEqual(self.answer(driver, key), (OK, 2, ""))

    def test_wait_times_out_then_answers(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", n_subprocesses=1)
        key = driver.submit([2.0, 0.0], ["a", "b", "c"], 9)[1]
        self.assertEqual(driver.wait(key, 0.2)[0], NOT_FINISHED)
        self.assertEqual(driver.retrieve(key)[0], NOT_FINISHED)
        self.assertEqual(self.answer(driver, key), (OK, 9, "slept"))

    def test_engine_initialize_failure_fails_initialize(self) -> None:
        driver = Driver(
            n_subprocesses=2, backend="ray", ray_address=self.address(), engine="py4cc_user_engines:FailingInitEngine"
        )
        self.addCleanup(driver.finalize)
        add_engines_dir()
        with self.assertRaisesRegex(RuntimeError, "(?s)failed to build and initialise.*cannot load the model weights"):
            driver.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertEqual(driver.worker_pids(), [])

    def test_too_many_actors_for_the_cluster_is_an_error(self) -> None:
        driver = Driver(n_subprocesses=50, backend="ray", ray_address=self.address())
        self.addCleanup(driver.finalize)
        with self.assertRaisesRegex(RuntimeError, "50 Engine actors need a CPU each"):
            driver.initialize("{}", FLOAT_NAMES, STR_NAMES)

    def test_killed_actor_fails_exactly_its_task(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", max_tasks=128)
        pids = driver.worker_pids()
        long_key = driver.submit([60.0, 0.0], ["a", "b", "c"], 7)[1]
        # Some may wait behind the long one (prefetch): they must run elsewhere, once.
        short = {driver.submit([0.01, 0.0], ["a", "b", "c"], 100 + i)[1]: 100 + i for i in range(20)}
        victim = wait_for_running_pid(driver, long_key)
        os.kill(victim, signal.SIGKILL)
        flag, value, message = self.answer(driver, long_key)
        self.assertEqual((flag, value), (FAILED, -1))
        self.assertIn(f"the Ray actor running this task (pid {victim} ", message)
        self.assertIn("died; it is being replaced", message)
        for key, want in short.items():
            self.assertEqual(self.answer(driver, key), (OK, want, "slept"))
        self.assertTrue(wait_until(lambda: len(driver.worker_pids()) == 2, WAIT_S))
        self.assertNotIn(victim, driver.worker_pids())
        self.assertIn(next(pid for pid in pids if pid != victim), driver.worker_pids())
        fresh = {driver.submit([0.0, 0.0], ["a", "b", "c"], 1000 + i)[1]: 1000 + i for i in range(100)}
        for key, want in fresh.items():
            self.assertEqual(self.answer(driver, key), (OK, want, "slept"))
        self.assertEqual(driver.held_tasks(), 0)

    def test_engine_that_exits_costs_its_task_only(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:ExitingEngine", n_subprocesses=1)
        before = driver.worker_pids()
        flag, _value, message = self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 3)[1])
        self.assertEqual(flag, FAILED)
        self.assertIn("died; it is being replaced", message)
        self.assertEqual(self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 8)[1]), (OK, 8, ""))
        self.assertNotEqual(driver.worker_pids(), before)

    def test_failed_restarts_back_off_until_one_succeeds(self) -> None:
        marker = os.path.join(tempfile.mkdtemp(prefix="py4cc-ray-marker-"), "refuse")
        driver = self.ray_driver(
            engine="py4cc_user_engines:FragileInitEngine", n_subprocesses=1, config=json.dumps({"marker": marker})
        )
        (pid,) = driver.worker_pids()
        open(marker, "w").close()  # from now on, an Engine refuses to start
        os.kill(pid, signal.SIGKILL)
        self.assertTrue(wait_until(lambda: driver.stats()["replacement_failures"] >= 2, WAIT_S))
        flag, _, message = driver.submit([0.0, 0.0], ["a", "b", "c"], 1)
        self.assertEqual(flag, ERROR)
        self.assertIn("no Ray actor is ready", message)
        self.assertIn("the marker file exists: refusing to start", message)
        self.assertIn("the driver keeps restarting its Engine actors", message)
        self.assertEqual(driver.stats()["workers_ready"], 0)
        os.remove(marker)  # the next attempt, after its backoff, succeeds
        self.assertTrue(wait_until(lambda: driver.stats()["workers_ready"] == 1, WAIT_S))
        self.assertEqual(self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 2)[1]), (OK, 2, ""))
        self.assertNotIn(pid, driver.worker_pids())

    def test_task_timeout_kills_and_replaces_the_actor(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", task_timeout=1.5)
        slow = driver.submit([60.0, 0.0], ["a", "b", "c"], 5)[1]
        victim = wait_for_running_pid(driver, slow)
        quick = [driver.submit([0.0, 0.0], ["a", "b", "c"], 6)[1] for _ in range(5)]
        flag, _value, message = self.answer(driver, slow)
        self.assertEqual(flag, FAILED)
        self.assertIn("the task timed out after 1.5 s; its Ray actor (pid", message)
        self.assertIn("was killed and is being replaced", message)
        for key in quick:
            self.assertEqual(self.answer(driver, key), (OK, 6, "slept"))
        self.assertTrue(wait_until(lambda: not running(victim), WAIT_S))
        self.assertTrue(wait_until(lambda: len(driver.worker_pids()) == 2, WAIT_S))
        self.assertEqual(self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], 4)[1]), (OK, 4, "slept"))

    def test_batches_one_actor_call_each_with_the_per_task_rules(self) -> None:
        driver = self.ray_driver(engine="py4cc_batch_engines:BatchEngine", n_subprocesses=1, batching=(3, 60.0))
        keys = [driver.submit_call((item,))[1] for item in (1, "raise", 3)]
        self.assertEqual(self.answer(driver, keys[0]), (OK, 2, ""))
        self.assertEqual(self.answer(driver, keys[1]), (FAILED, None, "ValueError: bad item at 1"))
        self.assertEqual(self.answer(driver, keys[2]), (OK, 6, ""))
        for key in [driver.submit_call((item,))[1] for item in (1, "short", 3)]:
            flag, value, message = self.answer(driver, key)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn(
                "must return a list of 3 answers (one per call, in order); it returned a list of length 2", message
            )
        first = driver.submit_call((10,))[1]
        self.assertTrue(driver.cancel(first))  # queued: it never runs
        rest = [driver.submit_call((item,))[1] for item in (20, 30, 40)]
        self.assertEqual([self.answer(driver, key) for key in rest], [(OK, 40, ""), (OK, 60, ""), (OK, 80, "")])
        history_key, *_ = [driver.submit_call((item,))[1] for item in ("history", 0, 0)]
        history = self.answer(driver, history_key)
        self.assertEqual(history, (OK, [[1, "raise", 3], [1, "short", 3], [20, 30, 40]], ""))
        stats = driver.stats()
        self.assertEqual((stats["batches"], stats["batch_size_mean"], stats["tasks_cancelled"]), (4, 3.0, 1))

    def test_demo_tasks_batch_on_two_actors(self) -> None:
        driver = self.ray_driver(batching=(4, 0.05))
        tasks = [([1.5 * i, -2.25], ["abc", "dé", "f" * i], i + 1) for i in range(24)]
        keys = [driver.submit(*task)[1] for task in tasks]
        for key, task in zip(keys, tasks):
            self.assertEqual(self.answer(driver, key), (OK, big_model(*task), ""))
        self.assertGreaterEqual(driver.stats()["batches"], 6)

    def test_a_killed_actor_or_a_timeout_fails_exactly_its_batch(self) -> None:
        driver = self.ray_driver(engine="py4cc_batch_engines:BatchEngine", n_subprocesses=1, batching=(3, 60.0))
        batch = [driver.submit_call((item,))[1] for item in (("sleep", 60.0), 2, 3)]
        self.assertTrue(wait_until(lambda: driver.stats()["tasks_running"] == 3, WAIT_S))
        (victim,) = driver.worker_pids()
        os.kill(victim, signal.SIGKILL)
        for key in batch:
            flag, value, message = self.answer(driver, key)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn(f"the Ray actor running this task's batch of 3 tasks (pid {victim} ", message)
        again = [driver.submit_call((item,))[1] for item in (4, 5, 6)]
        self.assertEqual([self.answer(driver, key) for key in again], [(OK, 8, ""), (OK, 10, ""), (OK, 12, "")])
        timed = self.ray_driver(
            engine="py4cc_batch_engines:BatchEngine", n_subprocesses=1, batching=(2, 60.0), task_timeout=1.5
        )
        for key in [timed.submit_call((item,))[1] for item in (("sleep", 60.0), 2)]:
            flag, value, message = self.answer(timed, key)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn("this task's batch of 2 tasks timed out after 1.5 s; its Ray actor (pid", message)
        self.assertEqual(timed.stats()["tasks_timed_out"], 2)

    def test_an_actor_holds_a_pipeline_of_calls_and_its_death_fails_the_running_one_only(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", n_subprocesses=1)
        backend: Any = driver._pool
        # Admitted together, so sent at once: the long one runs, the four behind it wait in
        # the actor (CALLS_AHEAD), none in the Driver's queue.
        tasks = [([60.0 if i == 0 else 0.0, 0.0], ["a", "b", "c"], 10 + i) for i in range(5)]
        answers = driver.submit_many(tasks)
        self.assertEqual([flag for flag, _, _ in answers], [OK] * 5)
        keys = [key for _, key, _ in answers]
        with backend.lock:
            pending = [task.key for task in backend.pending]
        self.assertEqual(pending, [])
        with backend.lock:
            (actor,) = backend.actors
            held = [[task.key for task in sent.tasks] for sent in actor.queue]
        self.assertEqual(held, [[key] for key in keys])
        stats = driver.stats()
        self.assertEqual((stats["tasks_running"], stats["tasks_queued"]), (1, 4))
        self.assertTrue(driver.cancel(keys[4]))  # held by the actor: its answer will be dropped
        self.assertEqual(driver.stats()["tasks_queued"], 3)
        victim = wait_for_running_pid(driver, keys[0])
        os.kill(victim, signal.SIGKILL)
        flag, value, message = self.answer(driver, keys[0])
        self.assertEqual((flag, value), (FAILED, -1))
        self.assertIn(f"the Ray actor running this task (pid {victim} ", message)
        # The three it had not started go back to the queue and run once, on its replacement;
        # the cancelled one does not.
        for key, want in zip(keys[1:4], range(11, 14)):
            self.assertEqual(self.answer(driver, key), (OK, want, "slept"))
        self.assertIn(f"task {keys[4]} was cancelled", driver.retrieve(keys[4])[2])
        stats = driver.stats()
        self.assertEqual((stats["worker_deaths"], stats["tasks_failed"], stats["tasks_done"]), (1, 1, 3))
        self.assertNotIn(victim, driver.worker_pids())

    def test_prefetch_0_keeps_one_call_per_actor(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", n_subprocesses=1, prefetch=0)
        keys = [key for _, key, _ in driver.submit_many([([1.0, 0.0], ["a", "b", "c"], i) for i in range(1, 4)])]
        stats = driver.stats()
        self.assertEqual((stats["tasks_running"], stats["tasks_queued"]), (1, 2))
        backend: Any = driver._pool
        with backend.lock:
            self.assertEqual(len(backend.pending), 2)
        for i, key in enumerate(keys, 1):
            self.assertEqual(self.answer(driver, key), (OK, i, "slept"))

    def test_a_queued_call_s_clock_starts_when_it_runs(self) -> None:
        # Three 0.8 s tasks queued in one actor take 2.4 s, each under task_timeout: none
        # times out (a clock started when the call was sent would fail the second).
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", n_subprocesses=1, task_timeout=1.5)
        keys = [key for _, key, _ in driver.submit_many([([0.8, 0.0], ["a", "b", "c"], i) for i in range(1, 4)])]
        self.assertEqual(driver.stats()["tasks_running"], 1)
        for i, key in enumerate(keys, 1):
            self.assertEqual(self.answer(driver, key), (OK, i, "slept"))
        self.assertEqual(driver.stats()["tasks_timed_out"], 0)
        # A timeout fails the running call only; the one behind it runs on the replacement.
        slow, quick = [key for _, key, _ in driver.submit_many([([60.0, 0.0], ["a", "b", "c"], 1), QUICK])]
        flag, _, message = self.answer(driver, slow)
        self.assertEqual(flag, FAILED)
        self.assertIn("the task timed out after 1.5 s", message)
        self.assertEqual(self.answer(driver, quick), (OK, 2, "slept"))
        self.assertEqual(driver.stats()["tasks_timed_out"], 1)

    def test_answers_reach_the_host_from_py4cc_s_answer_thread_not_ray_s(self) -> None:
        threads: set[str] = set()
        driver = self.ray_driver(notify=lambda key, finished: threads.add(threading.current_thread().name))
        keys = [key for _, key, _ in driver.submit_many([TASK] * 20)]
        for key in keys:
            self.assertEqual(self.answer(driver, key)[0], OK)
        self.assertEqual(threads, {"py4cc-ray-answers"})

    def test_a_batch_goes_only_to_a_free_actor_and_a_death_fails_only_its_batch(self) -> None:
        driver = self.ray_driver(engine="py4cc_batch_engines:BatchEngine", n_subprocesses=1, batching=(2, 60.0))
        backend: Any = driver._pool
        calls = [("run", encode_call_arguments((item,), None)[1], False) for item in (("sleep", 60.0), 2, 3, 4, 5, 6)]
        keys = [key for _, key, _ in backend.submit_many(calls)]
        # One batch per actor (no pipeline with batching): the other full batches wait here.
        with backend.lock:
            pending = [task.key for task in backend.pending]
            held = [[task.key for task in sent.tasks] for actor in backend.actors for sent in actor.queue]
        self.assertEqual((held, pending), ([keys[0:2]], keys[2:6]))
        stats = driver.stats()
        self.assertEqual((stats["tasks_running"], stats["tasks_queued"], stats["batches"]), (2, 4, 1))
        victim = wait_for_running_pid(driver, keys[0])
        os.kill(victim, signal.SIGKILL)
        for key in keys[0:2]:
            flag, value, message = self.answer(driver, key)
            self.assertEqual((flag, value), (FAILED, None))
            self.assertIn(f"the Ray actor running this task's batch of 2 tasks (pid {victim} ", message)
        # The batches that waited run once, on the replacement.
        self.assertEqual([self.answer(driver, key) for key in keys[2:]], [(OK, 2 * n, "") for n in (3, 4, 5, 6)])
        stats = driver.stats()
        self.assertEqual((stats["tasks_failed"], stats["tasks_done"], stats["batches"]), (2, 4, 3))

    def test_stopped_node_fails_its_task_and_the_actor_comes_back_elsewhere(self) -> None:
        assert CLUSTER is not None
        node = CLUSTER.add_worker()
        self.addCleanup(CLUSTER.stop_worker, node)
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine", n_subprocesses=3, prefetch=0)
        keys = [driver.submit([6.0, 0.0], ["a", "b", "c"], 20 + i)[1] for i in range(3)]
        on_node = [pid for pid in driver.worker_pids() if pid in node.descendants()]
        self.assertEqual(len(on_node), 1, "one actor per one-CPU node")
        self.assertTrue(wait_until(lambda: all(running_pid(driver, key) for key in keys), WAIT_S))
        lost_key = next(key for key in keys if running_pid(driver, key) == on_node[0])
        CLUSTER.stop_worker(node)
        for i, key in enumerate(keys):
            flag, value, message = self.answer(driver, key)
            if key == lost_key:
                self.assertEqual(flag, FAILED)
                self.assertIn("died; it is being replaced", message)
                self.assertIn("node", message)
            else:
                self.assertEqual((flag, value), (OK, 20 + i))
        # No free CPU is left for the replacement until a node joins.
        spare = CLUSTER.add_worker()
        self.addCleanup(CLUSTER.stop_worker, spare)
        self.assertTrue(wait_until(lambda: len(driver.worker_pids()) == 3, WAIT_S))
        self.assertEqual(len([pid for pid in driver.worker_pids() if pid in spare.descendants()]), 1)
        fresh = [driver.submit([0.0, 0.0], ["a", "b", "c"], 30 + i)[1] for i in range(12)]
        for i, key in enumerate(fresh):
            self.assertEqual(self.answer(driver, key), (OK, 30 + i, "slept"))
        # The report keeps the lost actor's cause; a replacement Ray placed on the dying node
        # (it never ran) is neither a failed start nor a degraded slot (before: "Ray actor
        # pid 0 on node ? (?) died: ... cancelled before it started running", counted failed).
        stats = driver.stats()
        self.assertIn(f"Ray actor pid {on_node[0]} on node", stats["last_death_cause"])
        self.assertNotIn("pid 0", stats["last_death_cause"])
        self.assertEqual((stats["replacement_failures"], stats["workers_degraded"]), (0, 0), stats)

    def test_finalize_leaves_no_actor_and_no_process_behind(self) -> None:
        before = set(children(os.getpid()))  # the cluster's nodes, if this process started them
        driver = self.ray_driver()
        pids = driver.worker_pids()
        key = driver.submit(*TASK)[1]
        driver.finalize()
        self.assertTrue(wait_until(lambda: not any(running(pid) for pid in pids), WAIT_S), pids)
        self.assertIn(driver.retrieve(key)[0], (OK, FAILED))
        self.assertEqual(driver.submit(*TASK)[0], ERROR)
        import ray

        self.assertFalse(ray.is_initialized())  # the Driver's connection, closed with it
        self.assertEqual(new_processes(before), [])

    def test_local_instance(self) -> None:
        before = set(children(os.getpid()))
        host_handler = signal.getsignal(signal.SIGTERM)
        driver = self.make_driver(backend="ray", n_subprocesses=2, init_timeout=WAIT_S)
        self.assertIs(signal.getsignal(signal.SIGTERM), host_handler, "ray.init's SIGTERM handler stays out")
        tasks = [([0.5, float(i)], ["x", "yy", "zzz"], i) for i in range(20)]
        keys = [driver.submit(*task)[1] for task in tasks]
        for key, task in zip(keys, tasks):
            self.assertEqual(self.answer(driver, key), (OK, big_model(*task), ""))
        self.assertTrue(new_processes(before), "the local instance runs as this process's children")
        driver.finalize()
        self.assertTrue(wait_until(lambda: not new_processes(before), WAIT_S), new_processes(before))

    def test_cancel_result_ttl_and_notify(self) -> None:
        told: list[tuple[int, bool]] = []
        driver = self.ray_driver(
            engine="py4cc_user_engines:SleepEngine",
            n_subprocesses=1,
            prefetch=0,
            result_ttl=1.0,
            notify=lambda key, finished: told.append((key, finished)),
        )
        running = driver.submit([1.5, 0.0], ["a", "b", "c"], 1)[1]
        queued = driver.submit([0.0, 0.0], ["a", "b", "c"], 2)[1]
        self.assertTrue(wait_until(lambda: running_pid(driver, running) != 0, WAIT_S))
        self.assertTrue(driver.cancel(queued))
        self.assertTrue(driver.cancel(running))  # its actor runs it on; the answer is dropped
        self.assertFalse(driver.cancel(running))
        for key in (running, queued):
            flag, _, message = driver.retrieve(key)
            self.assertEqual(flag, ERROR)
            self.assertIn(f"task {key} was cancelled", message)
        self.assertEqual(told, [(queued, False), (running, False)])
        after = driver.submit([0.0, 0.0], ["a", "b", "c"], 3)[1]
        self.assertTrue(wait_until(lambda: (after, True) in told, WAIT_S))  # behind the cancelled one
        time.sleep(1.5)  # past result_ttl: the supervisor drops the unretrieved result
        self.assertTrue(wait_until(lambda: (after, False) in told, WAIT_S))
        flag, _, message = driver.retrieve(after)
        self.assertEqual(flag, ERROR)
        self.assertIn(f"task {after} expired", message)
        stats = driver.stats()
        self.assertEqual((stats["tasks_cancelled"], stats["tasks_expired"], stats["tasks_held"]), (2, 1, 0))
        self.assertEqual((stats["tasks_done"], stats["tasks_failed"]), (1, 0))  # the cancelled answer not counted

    def test_stats(self) -> None:
        from py4cc import protocol

        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine")
        stats = driver.stats()
        self.assertEqual(list(stats), list(protocol.STAT_NAMES))
        assert CLUSTER is not None
        expected = {
            "state": "running",
            "workers_wanted": 2,
            "workers_alive": 2,
            "workers_ready": 2,
            "worker_starts": 2,
            "worker_deaths": 0,
            "cluster": f"the Ray cluster at {CLUSTER.address}",
            "cluster_lost": None,
        }
        self.assertEqual({k: stats[k] for k in expected}, expected)
        slow = driver.submit([30.0, 0.0], ["a", "b", "c"], 1)[1]
        victim = wait_for_running_pid(driver, slow)
        quick = [driver.submit([0.0, 0.0], ["a", "b", "c"], 2)[1] for _ in range(4)]
        for key in quick:
            self.assertEqual(self.answer(driver, key)[0], OK)
        stats = driver.stats()
        self.assertEqual((stats["tasks_running"], stats["tasks_finished"], stats["tasks_done"]), (1, 0, 4))
        self.assertEqual(stats["run_time_samples"], 4)
        self.assertIsNotNone(stats["run_time_p50"])
        os.kill(victim, signal.SIGKILL)
        self.assertEqual(self.answer(driver, slow)[0], FAILED)
        self.assertTrue(wait_until(lambda: driver.stats()["workers_ready"] == 2, WAIT_S))
        stats = driver.stats()
        self.assertEqual((stats["worker_deaths"], stats["worker_starts"], stats["tasks_failed"]), (1, 3, 1))
        self.assertIn(f"Ray actor pid {victim} on node", stats["last_death_cause"])
        self.assertIn("died", stats["last_death_cause"])
        driver.finalize()
        self.assertEqual(driver.stats()["state"], "finalized")

    def test_worker_env_reaches_the_engine_before_its_import(self) -> None:
        env = {"PY4CC_TEST_ENV_A": "zoë=1 two", "PY4CC_TEST_ENV_B": "the actor's", "OMP_NUM_THREADS": "1"}
        driver = self.ray_driver(engine="py4cc_env_engine:EnvEngine", worker_env=env)
        for n in range(4):
            flag, value, message = self.answer(driver, driver.submit([0.0, 0.0], ["a", "b", "c"], n)[1])
            self.assertEqual((flag, value), (OK, 1), message)
            seen = json.loads(message)
            self.assertEqual((seen["import"], seen["run"], seen["c"]), (env, env, env))

    def test_worker_output_lines_and_events(self) -> None:
        lines: list[tuple[int, str, str]] = []
        driver = self.ray_driver(
            engine="py4cc_user_engines:TalkativeEngine",
            n_subprocesses=1,
            worker_output=lambda *line: lines.append(line),
        )
        (pid,) = driver.worker_pids()
        self.assertEqual(self.answer(driver, driver.submit([0.0, 0.0], ["lines", "b", "c"], 5)[1]), (OK, 5, ""))
        self.assertTrue(wait_until(lambda: (pid, "stdout", "python stdout 5") in lines, WAIT_S), lines)
        self.assertTrue(wait_until(lambda: (pid, "stderr", "python stderr 5") in lines, WAIT_S), lines)
        key = driver.submit([0.0, 0.0], ["die", "b", "c"], 6)[1]
        self.assertEqual(self.answer(driver, key)[0], FAILED)
        died = f"died while running task {key}: "
        self.assertTrue(wait_until(lambda: any(p == pid and t.startswith(died) for p, _, t in lines), WAIT_S), lines)
        self.assertTrue(wait_until(lambda: (0, "event", "actor slot 0: started a Ray actor") in lines, WAIT_S), lines)

    def test_ray_prints_nothing_on_the_host_s_stderr_with_worker_output(self) -> None:
        # Before: INFO lines at every initialize, "(raylet) A worker died ..." on each kill
        # went to the host's stderr, outside worker_output.
        assert CLUSTER is not None
        host = subprocess.run(
            [sys.executable, "-c", QUIET_HOST, CLUSTER.address, ENGINES_DIR],
            env={**os.environ, "PYTHONPATH": REPO_ROOT},
            capture_output=True,
            text=True,
            timeout=WAIT_S * 2,
        )
        self.assertEqual(host.returncode, 0, host.stderr)
        self.assertEqual(host.stdout.strip().splitlines()[-1], "failed 2 then 0")
        # Ray's core worker warns (C++ log) that a loopback-only network has no route out:
        # a fact of the test's namespace, not output of the Driver's.
        noise = [line for line in host.stderr.splitlines() if line.strip() and "network_util.cc" not in line]
        self.assertEqual(noise, [], "Ray printed on the host's stderr")

    def test_drain_finishes_the_held_tasks_then_stops(self) -> None:
        driver = self.ray_driver(engine="py4cc_user_engines:SleepEngine")
        keys = [driver.submit([0.2, 0.0], ["a", "b", "c"], 10 + i)[1] for i in range(6)]
        self.assertEqual(driver.drain(WAIT_S), 0)
        self.assertEqual(driver.stats()["state"], "finalized")
        for i, key in enumerate(keys):
            self.assertEqual(driver.retrieve(key), (OK, 10 + i, "slept"))
        self.assertEqual(driver.submit(*TASK)[0], ERROR)

    def test_general_tasks(self) -> None:
        driver = self.ray_driver(engine="py4cc_general_engines:CommandEngine", float_names=[], str_names=[])

        def call(*args: Any, **kwargs: Any) -> tuple:
            flag, key, message = driver.submit_call(args, kwargs)
            self.assertEqual((flag, message), (OK, ""))
            return self.answer(driver, key)

        for value in (0, -5, None, "Straße 🦀", [1.5, -2.0], {"a": (1, None)}, 2**100, bytes(range(256))):
            self.assertEqual(call("value", value), (OK, value, ""))
        self.assertEqual(call("echo", 1, "two", key=None), (OK, ([1, "two"], {"key": None}), ""))
        flag, value, message = call("raise", "no such model today")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("ValueError: no such model today", message)
        flag, value, message = call("unpicklable")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("cannot be pickled", message)
        flag, value, message = call("unloadable")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("could not be unpickled by the driver", message)

    def test_general_tasks_call_the_chosen_method(self) -> None:
        driver = self.ray_driver(
            engine="py4cc_general_engines:CommandEngine", float_names=[], str_names=[], call_method="predict"
        )
        key = driver.submit_call(([[1.0, 2.0], [3.5]],), {"scale": 2.0})[1]
        self.assertEqual(self.answer(driver, key), (OK, [6.0, 7.0], ""))

    def test_lost_connection_fails_unfinished_tasks(self) -> None:
        # A cluster of its own, whose loss the other tests must not see, and a process of
        # its own: Ray does not let a process that lost its cluster connect again.
        cluster = RayCluster(os.path.join(CLUSTER.temp_dir if CLUSTER else tempfile.mkdtemp(), "lost"))
        self.addCleanup(cluster.stop)
        # Ray ends a driver process whose cluster is gone for gcs_rpc_server_reconnect_timeout_s
        # (60 s by default): this cluster gives it 10 minutes, longer than the test.
        cluster.start_head(system_config={"gcs_rpc_server_reconnect_timeout_s": 600})
        cluster.add_worker()
        assert cluster.head is not None
        script = "import sys; from py4cc.tests.test_ray_backend import lose_the_head; lose_the_head(*sys.argv[1:])"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        with open(os.path.join(cluster.temp_dir, "lost.log"), "w+") as log:
            done = subprocess.run(
                [sys.executable, "-c", script, cluster.address, str(cluster.head.pid)],
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                timeout=300,
            )
            log.seek(0)
            self.assertEqual(done.returncode, 0, log.read()[-3000:])
        answers = json.loads(done.stdout.decode().strip().splitlines()[-1])
        lost = f"lost the connection to the Ray cluster at {cluster.address}"
        self.assertEqual(len(answers["tasks"]), 4)
        for flag, value, message in answers["tasks"]:  # the running task and those queued
            self.assertEqual((flag, value), (FAILED, -1))
            self.assertIn(lost, message)
        flag, _, message = answers["submit"]
        self.assertEqual(flag, ERROR)
        self.assertIn(lost, message)
        self.assertEqual(answers["stats"]["state"], "running")
        self.assertEqual(answers["stats"]["cluster"], f"the Ray cluster at {cluster.address}")
        self.assertIn(lost, answers["stats"]["cluster_lost"])
        self.assertTrue(answers["finalized"])

    def address(self) -> str:
        assert CLUSTER is not None
        add_engines_dir()
        return CLUSTER.address


def lose_the_head(address: str, head_pid: str) -> None:
    """In a process of its own: a Driver on the cluster at ``address``, its actor busy with a
    60 s task and three more queued, loses the cluster's head node (``ray start --block``, pid
    ``head_pid``, killed: its processes, the GCS and this process's raylet among them, die with
    it). Prints the tasks' answers, then submit's, as JSON."""
    add_engines_dir()
    driver = Driver(n_subprocesses=1, backend="ray", ray_address=address, engine="py4cc_user_engines:SleepEngine")
    driver.initialize("{}", FLOAT_NAMES, STR_NAMES)
    keys = [driver.submit([60.0 if i == 0 else 0.0, 0.0], ["a", "b", "c"], 1)[1] for i in range(4)]
    wait_until(lambda: running_pid(driver, keys[0]) != 0, WAIT_S)
    os.kill(int(head_pid), signal.SIGKILL)
    tasks = [driver.wait(key, WAIT_S) for key in keys]
    answer = driver.submit(*TASK)
    stats = driver.stats()
    driver.finalize()
    print(json.dumps({"tasks": tasks, "submit": answer, "stats": stats, "finalized": True}), flush=True)


def running_pid(driver: Driver, key: int) -> int:
    """The pid of the actor whose current call is task ``key`` (0: none), read off the backend."""
    backend: Any = driver._pool
    with backend.lock:
        for actor in backend.actors:
            if actor.queue and actor.queue[0].tasks[0].key == key:
                return int(actor.pid)
    return 0


def wait_for_running_pid(driver: Driver, key: int) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        pid = running_pid(driver, key)
        if pid:
            time.sleep(0.3)  # sent; give the actor a moment to start it
            return pid
        time.sleep(0.01)
    raise AssertionError(f"task {key} never started")


def new_processes(before: set[int]) -> list[int]:
    """This process's running descendants that are not in ``before``."""
    return [pid for pid in children(os.getpid()) if pid not in before and running(pid)]


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


if __name__ == "__main__":
    unittest.main()
