"""The contract with other languages' bindings, the wire messages, and what a worker imports."""

from __future__ import annotations

import inspect
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import textwrap
import unittest

from py4cc import driver as driver_module
from py4cc import protocol
from py4cc.driver import Driver
from py4cc.protocol import (
    Answer,
    Call,
    InitFailed,
    Ready,
    decode_arguments,
    decode_call,
    decode_report,
    encode_arguments,
    encode_call,
    encode_report,
)

from .support import ENGINES_DIR, FLOAT_NAMES, STR_NAMES, DriverTestCase

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ContractTest(DriverTestCase):
    def test_the_contract_names_what_the_driver_has(self):
        contract = protocol.DRIVER_CONTRACT
        self.assertEqual((contract["module"], contract["class"]), ("py4cc.driver", "Driver"))
        self.assertIs(getattr(driver_module, contract["class"]), Driver)
        keywords = inspect.signature(Driver).parameters
        for option in contract["options"]:
            self.assertIn(option, keywords)
        for method in contract["methods"]:
            self.assertTrue(callable(getattr(Driver, method, None)), method)
        d = self.make_driver(n_subprocesses=2)
        for attribute in contract["attributes"]:
            self.assertTrue(hasattr(d, attribute), attribute)
        self.assertEqual(d.n_subprocesses, 2)

    def test_the_contracts_flags_and_messages_are_the_protocols(self):
        contract = protocol.DRIVER_CONTRACT
        self.assertEqual(contract["flags"], {"OK": 0, "AT_CAPACITY": 1, "NOT_FINISHED": 1, "FAILED": 2, "ERROR": 9})
        for name, value in contract["flags"].items():
            self.assertEqual(getattr(protocol, name), value)
            self.assertEqual(getattr(driver_module, name), value)  # re-exported
        for name, text in contract["messages"].items():
            self.assertEqual(getattr(protocol, name), text)
        self.assertEqual(protocol.CAPACITY_MESSAGE, "Model engine is working at capacity. Try again later.")
        self.assertEqual(protocol.NOT_FINISHED_MESSAGE, "The requested task is not finished")

    def test_the_contract_is_plain_data(self):
        # A binding reads it with the plainest conversions: JSON-able, str keys.
        self.assertEqual(json.loads(json.dumps(protocol.DRIVER_CONTRACT)), protocol.DRIVER_CONTRACT)

    def test_n_subprocesses_is_resolved_by_initialize(self):
        d = Driver(n_subprocesses=0)
        self.addCleanup(d.finalize)
        self.assertEqual(d.n_subprocesses, 0)  # as given, until initialize
        self.assertFalse(hasattr(d, "n_workers"))
        d.initialize("{}", FLOAT_NAMES, STR_NAMES)
        self.assertEqual(d.n_subprocesses, os.cpu_count())
        self.assertEqual(len(d.worker_pids()), d.n_subprocesses)
        self.assertIn(f"n_subprocesses={os.cpu_count()}", repr(d))


class WireTest(unittest.TestCase):
    def test_a_call_round_trips(self):
        kwargs = {
            "float_features": [1.5, -0.0, float("inf")],
            "str_features": ["ß", "", "\ud800"],
            "int_feature": -(2**70),
        }
        call = Call(7, "run", encode_arguments((), kwargs), True)
        back = decode_call(encode_call(call))
        self.assertIs(type(back), Call)
        self.assertEqual(back, call)
        self.assertEqual(decode_arguments(back.payload), ((), kwargs))
        self.assertIsNone(decode_call(encode_call(protocol.STOP)))

    def test_reports_round_trip_with_their_types(self):
        general = protocol.pickle_answer(9, {"a": [1, 2]}, 0.5)
        for report in (
            Answer(3, 2, -1, "trace"),
            Answer(2**64, 0, 2**100, ""),  # a key outside i64: the fields pickled
            Answer(4, 0, None, "ß \ud800 \x00 end", 1.25),
            Answer(5, 0, -(2**63), ""),
            general,
            Ready(1234),
            InitFailed("boom"),
        ):
            back = decode_report(encode_report(report))
            self.assertIs(type(back), type(report))
            self.assertEqual(back, report)
        self.assertEqual(protocol.unpickle_answer(decode_report(encode_report(general))).value, {"a": [1, 2]})

    def test_an_int_outside_i64_travels_pickled(self):
        back = decode_report(encode_report(Answer(3, 0, 2**63, "m", 0.5)))
        self.assertEqual((back.pickled, protocol.unpickle_answer(back)), (True, Answer(3, 0, 2**63, "m", 0.5)))

    def test_an_answer_is_the_fixed_frame_the_host_reads(self):
        # The layout rs4py's src/driver/pipes.rs parses: tag, key, flag, run_s, kind, message
        # length (little-endian), the UTF-8 message, then the value.
        frame = encode_report(Answer(2**40 + 3, 2, -7, "é", 0.25))
        self.assertEqual(frame[:1], b"A")
        head = struct.unpack_from("<qqdBI", frame, 1)
        self.assertEqual(head, (2**40 + 3, 2, 0.25, protocol.VALUE_INT, 2))
        self.assertEqual(frame[30:32].decode(), "é")
        self.assertEqual(struct.unpack("<q", frame[32:]), (-7,))
        self.assertEqual(encode_report(Answer(1, 2, None, ""))[25], protocol.VALUE_NONE)
        self.assertEqual(len(encode_report(Answer(1, 2, None, ""))), 30)

    def test_answers_travel_without_their_class_name(self):
        # One per task: the class's module and name would cost a lookup on both ends.
        self.assertNotIn(b"Answer", encode_report(Answer(1, 0, 5, "")))
        self.assertNotIn(b"Call", encode_call(Call(1, "run", encode_arguments((), {}), True)))

    def test_something_else_is_left_as_it_is(self):
        self.assertEqual(decode_report(pickle.dumps((1, 2))), (1, 2))
        self.assertEqual(decode_report(pickle.dumps("what")), "what")


WORKER_MODULES_SCRIPT = textwrap.dedent("""
    import json, sys

    def main():
        sys.path.insert(0, sys.argv[1])
        from py4cc.driver import Driver
        seen = {}
        for method in ("spawn", "forkserver"):
            with Driver(n_subprocesses=1, start_method=method, engine="py4cc_user_engines:ModulesEngine") as d:
                d.initialize("{}", [], [])
                flag, value, message = d.wait(d.submit([], [], 0)[1], 20)
                seen[method] = json.loads(message) if flag == 0 else message
        print(json.dumps(seen), flush=True)

    if __name__ == "__main__":  # a spawned worker runs this file too, without calling main
        main()
""")


class WorkerImportsTest(unittest.TestCase):
    def test_a_started_worker_imports_only_the_worker_side(self):
        # Run in a child whose main script imports nothing of py4cc at the top: a spawned
        # worker runs the parent's main script again, and would see what it imports.
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "child.py")
            with open(script, "w") as handle:
                handle.write(WORKER_MODULES_SCRIPT)
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
            proc = subprocess.run(
                [sys.executable, script, ENGINES_DIR], capture_output=True, text=True, timeout=120, env=env
            )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        for method in ("spawn", "forkserver"):
            self.assertEqual(seen[method], ["py4cc", "py4cc.lifeline", "py4cc.protocol", "py4cc.worker"], method)


if __name__ == "__main__":
    unittest.main()
