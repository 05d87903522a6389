"""General tasks (``Driver.submit_call``) and ``preload``: any picklable arguments and answers,
success as "no exception", the same capacity, keys and failures as the demo protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import unittest
from typing import Any

from py4cc.driver import CAPACITY_MESSAGE, FAILED, NOT_FINISHED_MESSAGE, Driver
from py4cc.engine import big_model
from py4cc.protocol import (
    OK,
    PREFETCH_BYTES,
    Answer,
    Call,
    decode_arguments,
    decode_call,
    decode_report,
    encode_arguments,
    encode_call,
    encode_report,
    pickle_answer,
    unpickle_answer,
)

from .support import ENGINES_DIR, FLOAT_NAMES, STR_NAMES, TASK, DriverTestCase, add_engines_dir

COMMAND_ENGINE = "py4cc_general_engines:CommandEngine"
PATIENCE = 30.0


class WireTest(unittest.TestCase):
    def test_a_general_call_and_a_demo_call_are_one_kind(self):
        payload = encode_arguments((1, b"\x00\xff"), {"k": [2.5]})
        for call in (Call(7, "predict", payload, False), Call(8, "run", payload, True)):
            back = decode_call(encode_call(call))
            self.assertIs(type(back), Call)
            self.assertEqual(back, call)
            self.assertNotIn(b"Call", encode_call(call))
            self.assertEqual(decode_arguments(back.payload), ((1, b"\x00\xff"), {"k": [2.5]}))

    def test_a_general_answer_is_pickled_apart_and_unpickled_here(self):
        answer = pickle_answer(3, {"x": (1, None)}, 0.25)
        self.assertEqual(
            (answer.key, answer.flag, answer.message, answer.run_s, answer.pickled), (3, OK, "", 0.25, True)
        )
        # The frame carries the pickle as it is, after the message: never pickled twice.
        self.assertTrue(encode_report(answer).endswith(answer.value))
        back = decode_report(encode_report(answer))
        self.assertEqual(back, answer)
        self.assertEqual(unpickle_answer(back), Answer(3, OK, {"x": (1, None)}, "", 0.25, False))
        # A demo answer's int travels as 8 bytes, not pickled.
        self.assertEqual(len(encode_report(Answer(1, OK, 5, "", 0.5))), 30 + 8)
        self.assertEqual(decode_report(encode_report(Answer(1, OK, 5, "", 0.5))), Answer(1, OK, 5, "", 0.5, False))

    def test_an_answer_that_cannot_be_pickled_or_unpickled_is_a_failure_with_the_reason(self):
        failed = pickle_answer(4, threading.Lock())
        self.assertEqual((failed.key, failed.flag, failed.value, failed.pickled), (4, FAILED, None, False))
        self.assertIn("the engine's answer <unlocked _thread.lock object", failed.message)
        self.assertIn("cannot be pickled:\nTraceback", failed.message)
        broken = Answer(5, OK, b"not a pickle", "", True)
        failed = unpickle_answer(broken)
        self.assertEqual((failed.key, failed.flag, failed.value), (5, FAILED, None))
        self.assertIn("could not be unpickled by the driver", failed.message)


class GeneralTaskTest(DriverTestCase):
    @classmethod
    def setUpClass(cls):
        add_engines_dir()
        cls.shared = Driver(n_subprocesses=2, engine=COMMAND_ENGINE).initialize('{"k": 1}', [], [], model="m")

    @classmethod
    def tearDownClass(cls):
        cls.shared.finalize()

    def run_call(self, *args, **kwargs):
        flag, key, message = self.shared.submit_call(args, kwargs)
        self.assertEqual((flag, message), (0, ""))
        self.assertGreater(key, 0)
        return self.shared.wait(key, PATIENCE)

    def test_any_answer_is_a_success_zero_negative_and_none_included(self):
        for value in (0, -5, None, 2.5, "", "Straße 🦀", [1.5, -2.0], {"a": 1.0}, (1, "x", None), 2**100, False):
            with self.subTest(value=value):
                self.assertEqual(self.run_call("value", value), (0, value, ""))

    def test_positional_and_keyword_arguments_arrive_as_given(self):
        flag, value, message = self.run_call("echo", 1, "two", [3.0], key=None, other={"k": (1, 2)})
        self.assertEqual((flag, message), (0, ""))
        self.assertEqual(value, ([1, "two", [3.0]], {"key": None, "other": {"k": (1, 2)}}))

    def test_bytes_with_every_byte_value_go_both_ways(self):
        data = bytes(range(256))
        self.assertEqual(self.run_call("reverse", data), (0, bytes(reversed(data)), ""))

    def test_a_large_payload_goes_to_an_idle_worker(self):
        data = bytes(range(256)) * (4 * PREFETCH_BYTES // 256)
        self.assertEqual(self.run_call("reverse", data)[1], data[::-1])

    def test_an_exception_is_flag_2_with_its_traceback(self):
        flag, value, message = self.run_call("raise", "no such model today")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("ValueError: no such model today", message)
        self.assertIn("Traceback (most recent call last)", message)
        self.assertIn("in run", message)
        flag, value, message = self.run_call("exit")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("SystemExit: 3", message)
        self.assertEqual(self.run_call("value", 7), (0, 7, ""), "the worker still serves")

    def test_an_answer_that_cannot_be_pickled_fails_its_task_not_the_worker(self):
        pids = self.shared.worker_pids()
        flag, value, message = self.run_call("unpicklable")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("the engine's answer <function CommandEngine.run.<locals>.<lambda>", message)
        self.assertIn("cannot be pickled", message)
        flag, value, message = self.run_call("unloadable")
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("could not be unpickled by the driver", message)
        self.assertIn("RuntimeError: this value refuses to be unpickled", message)
        self.assertEqual(self.run_call("value", 8), (0, 8, ""))
        self.assertEqual(self.shared.worker_pids(), pids, "no worker was replaced")

    def test_initialize_extra_reaches_the_engine(self):
        flag, value, _ = self.run_call("where")
        self.assertEqual(flag, 0)
        self.assertEqual(value["config"], {"k": 1})
        self.assertEqual(value["extra"], {"model": "m"})
        self.assertEqual(value["names"], [[], []])
        self.assertEqual(value["imported_in"], value["pid"], "no preload: each worker imports the module")

    def test_wrong_arguments_are_refused_with_flag_9(self):
        d = self.shared
        self.assertEqual(d.submit_call("echo")[:2], (9, 0))
        self.assertIn("args must be a tuple or list, got 'echo' (type str)", d.submit_call("echo")[2])
        self.assertIn("kwargs must be a dict or None", d.submit_call(("echo",), [("a", 1)])[2])
        self.assertIn("keyword names must be str, got 1 (type int)", d.submit_call(("echo",), {1: 2})[2])
        flag, key, message = d.submit_call(("value", lambda: 1))
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("the arguments cannot be pickled", message)

    def test_not_ready_then_done(self):
        d = self.shared
        flag, key, _ = d.submit_call(("sleep", 0.3, "late"))
        self.assertEqual(flag, 0)
        self.assertEqual(d.retrieve(key), (1, 0, NOT_FINISHED_MESSAGE))
        self.assertEqual(d.wait(key, PATIENCE), (0, "late", ""))
        self.assertEqual(d.retrieve(key)[0], 9, "retrieved once")


class MixedTasksTest(DriverTestCase):
    def test_demo_and_general_tasks_share_capacity_keys_and_the_engine(self):
        d = self.make_driver(max_tasks=2)
        demo = d.submit(*TASK)
        # The demo Engine's run takes keywords: a general task may call it too, and gets its
        # (value, message) pair as the answer.
        floats, strs, n = TASK
        general = d.submit_call((), {"float_features": floats, "str_features": strs, "int_feature": n})
        self.assertEqual((demo[0], general[0]), (0, 0))
        self.assertEqual(general[1], demo[1] + 1)
        self.assertEqual(d.submit_call(())[:3], (1, 0, CAPACITY_MESSAGE))
        self.assertEqual(d.submit(*TASK), (1, 0, CAPACITY_MESSAGE))
        self.assertEqual(d.wait(general[1], PATIENCE), (0, (big_model(*TASK), ""), ""))
        self.assertEqual(d.wait(demo[1], PATIENCE), (0, big_model(*TASK), ""))
        zero = d.submit_call((), {"float_features": [0.0, 0.0], "str_features": ["", "", ""], "int_feature": 0})
        self.assertEqual(d.wait(zero[1], PATIENCE), (0, (0, ""), ""), "a general answer of 0 is no failure")

    def test_submit_call_before_initialize_and_after_finalize_is_flag_9(self):
        d = Driver(n_subprocesses=1)
        self.assertEqual(d.submit_call(()), (9, 0, "the driver is not initialized; call initialize() first"))
        d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        d.finalize()
        flag, key, message = d.submit_call(())
        self.assertEqual((flag, key), (9, 0))
        self.assertIn("finalized", message)

    def test_a_general_task_past_its_timeout_fails_and_its_worker_is_replaced(self):
        d = self.make_driver(engine=COMMAND_ENGINE, float_names=[], str_names=[], task_timeout=0.5)
        flag, key, _ = d.submit_call(("sleep", 60, "never"))
        self.assertEqual(flag, 0)
        flag, value, message = d.wait(key, PATIENCE)
        self.assertEqual((flag, value), (FAILED, None))
        self.assertIn("timed out after 0.5 s", message)
        flag, key, _ = d.submit_call(("value", -1))
        self.assertEqual(d.wait(key, PATIENCE), (0, -1, ""))

    def test_call_method_names_the_method_general_tasks_call(self):
        d = self.make_driver(engine=COMMAND_ENGINE, float_names=[], str_names=[], call_method="predict")
        flag, key, _ = d.submit_call(([[1.0, 2.0], [3.5, -0.5]],), {"scale": 2.0})
        self.assertEqual(flag, 0)
        self.assertEqual(d.wait(key, PATIENCE), (0, [6.0, 6.0], ""))

    def test_a_call_method_the_engine_lacks_fails_initialize(self):
        add_engines_dir()
        d = Driver(n_subprocesses=1, engine=COMMAND_ENGINE, call_method="predict_proba")
        self.addCleanup(d.finalize)
        with self.assertRaises(RuntimeError) as raised:
            d.initialize("{}", [], [])
        self.assertIn("has no method 'predict_proba' (call_method)", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            Driver(call_method="not a name").initialize("{}", [], [])
        self.assertIn("call_method must be the name of the engine's method", str(raised.exception))


class PreloadTest(DriverTestCase):
    def where(self, d: Driver) -> Any:
        flag, key, _ = d.submit_call(("where",))
        self.assertEqual(flag, 0)
        flag, value, message = d.wait(key, PATIENCE)
        self.assertEqual((flag, message), (0, ""))
        return value

    def make(self, **options) -> Driver:
        return self.make_driver('{"c": 2}', [], [], extra={"e": 3}, engine=COMMAND_ENGINE, n_subprocesses=2, **options)

    def test_fork_module_preload_imports_the_module_here_once(self):
        sys.modules.pop("py4cc_general_engines", None)  # another test may have imported it here
        d = self.make(start_method="fork", preload="module")
        self.assertIn("py4cc_general_engines", sys.modules, "imported by initialize")
        import py4cc_general_engines

        places = [self.where(d) for _ in range(4)]
        for where in places:
            self.assertEqual(where["imported_in"], os.getpid(), "inherited from this process")
            self.assertEqual(where["initialized_in"], where["pid"], "each worker builds its Engine")
            self.assertNotEqual(where["pid"], os.getpid())
        self.assertEqual(py4cc_general_engines.IMPORTED_IN_PID, os.getpid())

    def test_fork_engine_preload_builds_one_engine_here_that_workers_inherit(self):
        d = self.make(start_method="fork", preload="engine")
        pids = set()
        for _ in range(6):
            where = self.where(d)
            self.assertEqual(where["initialized_in"], os.getpid(), "built and initialised here")
            self.assertEqual((where["config"], where["extra"]), ({"c": 2}, {"e": 3}))
            pids.add(where["pid"])
        self.assertNotIn(os.getpid(), pids)
        self.assertIsNotNone(d._pool.preloaded)
        d.finalize()
        self.assertIsNone(d._pool.preloaded, "released at finalize")

    def test_a_preload_that_raises_fails_initialize_with_its_traceback(self):
        add_engines_dir()
        d = Driver(
            n_subprocesses=1, engine="py4cc_user_engines:FailingInitEngine", start_method="fork", preload="engine"
        )
        with self.assertRaises(RuntimeError) as raised:
            d.initialize("{}", [], [])
        text = str(raised.exception)
        self.assertIn("preloading ('engine') the engine 'py4cc_user_engines:FailingInitEngine'", text)
        self.assertIn("Traceback", text)
        self.assertEqual(d.worker_pids(), [])

    def test_preload_is_refused_with_spawn_and_checked(self):
        with self.assertRaises(ValueError) as raised:
            Driver(n_subprocesses=1, start_method="spawn", preload="module").initialize("{}", [], [])
        self.assertIn("preload='module' needs start_method 'fork' or 'forkserver'", str(raised.exception))
        with self.assertRaises(ValueError) as raised:
            Driver(n_subprocesses=1, start_method="fork", preload=True).initialize("{}", [], [])
        self.assertIn("preload must be one of None, 'module', 'engine'; got True", str(raised.exception))

    def test_forkserver_preload_has_the_fork_server_import_the_module(self):
        # The fork server is one per process and reads its preload list when it starts: a
        # fresh interpreter, where the fork server can import the module (PYTHONPATH).
        script = textwrap.dedent(f"""
            import json, os
            from py4cc.driver import Driver
            result = {{}}
            for preload in (None, "module"):
                d = Driver(n_subprocesses=2, engine={COMMAND_ENGINE!r}, preload=preload)
                d.initialize("{{}}", [], [])
                flag, key, _ = d.submit_call(("where",))
                where = d.wait(key, {PATIENCE})[1]
                d.finalize()
                result[str(preload)] = [where["imported_in"], where["pid"], os.getpid()]
                import multiprocessing.forkserver as f
                f._forkserver._stop()  # the next driver starts a fork server of its own
            print(json.dumps(result))
            """)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ENGINES_DIR, root]))
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        result = json.loads(done.stdout)
        imported_in, pid, parent = result["None"]
        self.assertEqual(imported_in, pid, "without preload each worker imports the module")
        imported_in, pid, parent = result["module"]
        self.assertNotIn(imported_in, (pid, parent), "imported by the fork server")


if __name__ == "__main__":
    unittest.main()
