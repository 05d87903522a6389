"""User Engine classes for the tests: a plain module (not part of any package).

The tests put this directory on ``sys.path`` and name the classes as
``"py4cc_user_engines:Class"``, the way a user points the Driver at their own model.
"""

from __future__ import annotations

import json
import os
import threading
import time


class EchoEngine:
    """Answers ``(1 + int_feature + config["add"], <what it was built with, as JSON>)``."""

    def initialize(self, config, float_feature_names, str_feature_names, **extra):
        self.config = config
        self.names = (list(float_feature_names), list(str_feature_names))
        self.extra = extra

    def run(self, float_features, str_features, int_feature):
        info = {
            "config": self.config,
            "float_feature_names": self.names[0],
            "str_feature_names": self.names[1],
            "extra": self.extra,
            "float_features": float_features,
            "str_features": str_features,
            "pid": os.getpid(),
        }
        return 1 + int_feature + self.config.get("add", 0), json.dumps(info)


class SleepEngine:
    """Sleeps ``float_features[0]`` seconds, then answers ``(int_feature, "slept")``."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        time.sleep(float_features[0])
        return int_feature, "slept"


class RaisingEngine:
    """Its ``run`` raises when ``int_feature`` is odd."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        if int_feature % 2:
            raise ValueError(f"boom from the user engine ({int_feature})")
        return int_feature, ""


class BadReturnEngine:
    """Answers something other than an (int, str) pair, chosen by ``int_feature``."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        answers = {
            0: "not a tuple",
            1: (1, 2, 3),
            2: ("7", ""),
            3: (7, None),
            4: (True, ""),
            5: (0, ""),
            6: (-5, "the model said no"),
        }
        return answers[int_feature]


class _Unrepresentable:
    def __repr__(self):
        raise RuntimeError("no repr for you")


class _ShiftyInt(int):
    def __gt__(self, other):
        raise RuntimeError("no comparisons for you")


class StrangeAnswerEngine:
    """Answers values whose checking raises: 1 an object whose repr raises, 2 a tuple
    holding one, 3 an int whose ``>`` raises; anything else ``(int_feature, "")``."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        if int_feature == 1:
            return _Unrepresentable()
        if int_feature == 2:
            return (_Unrepresentable(), "")
        if int_feature == 3:
            return (_ShiftyInt(5), "")
        return int_feature, ""


class FailingInitEngine:
    """Its ``initialize`` raises."""

    def initialize(self, **kwargs):
        raise RuntimeError("cannot load the model weights")

    def run(self, float_features, str_features, int_feature):  # pragma: no cover
        return 1, ""


class ExitingEngine:
    """Its ``run`` makes the worker process exit at once with code 3 when asked."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        if int_feature == 3:
            os._exit(3)
        return int_feature, ""


class FragileInitEngine:
    """Its ``initialize`` fails once the file named by ``config["marker"]`` exists."""

    def initialize(self, config, **kwargs):
        if os.path.exists(config["marker"]):
            raise RuntimeError("the marker file exists: refusing to start")

    def run(self, float_features, str_features, int_feature):
        time.sleep(float_features[0])
        return int_feature, ""


class StartupTroubleEngine:
    """While the file named by ``config["marker"]`` exists, ``initialize`` misbehaves as
    the file says: ``sleep`` (30 s, so that a test can kill it before it is ready),
    ``exit`` (the process exits at once with code 4) or ``thread`` (starts a non-daemon
    thread that sleeps an hour, then raises: the process cannot exit by itself)."""

    def initialize(self, config, **kwargs):
        try:
            with open(config["marker"]) as handle:
                what = handle.read().strip()
        except OSError:
            return
        if what == "sleep":
            time.sleep(30)
        elif what == "exit":
            os._exit(4)
        elif what == "thread":
            threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            raise RuntimeError("the model store is down")

    def run(self, float_features, str_features, int_feature):
        return int_feature, ""


class ModulesEngine:
    """Answers ``(1, <the py4cc modules its worker process has imported, as JSON>)``."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        import sys

        names = sorted(name for name in sys.modules if name == "py4cc" or name.startswith("py4cc."))
        return 1, json.dumps(names)


class GateEngine:
    """Each task waits until the file ``config["gate"]`` exists, then answers
    ``(int_feature, "")``: a test decides when tasks finish."""

    def initialize(self, config, **kwargs):
        self.gate = config["gate"]

    def run(self, float_features, str_features, int_feature):
        while not os.path.exists(self.gate):
            time.sleep(0.005)
        return int_feature, ""


class TalkativeEngine:
    """Writes to its stdout and stderr in every way a model might, as ``str_features[0]``
    says, then answers ``(int_feature, "")``:

    * ``"lines"``: ``print`` to stdout and stderr, C's ``printf`` (via ctypes), a raw
      ``os.write`` on fd 2 in two pieces, a line of bytes that are not UTF-8, a CRLF line;
    * ``"long"``: one stdout line of ``int_feature`` bytes;
    * ``"tail"``: ``os.write(1, b"no newline at the end")``, nothing after it;
    * ``"die"``: prints a line to each stream, then kills its own process (SIGKILL).

    Its ``initialize`` prints ``engine ready`` on stdout.
    """

    def initialize(self, **kwargs):
        print("engine ready")

    def run(self, float_features, str_features, int_feature):
        import ctypes
        import signal
        import sys

        what = str_features[0]
        if what == "lines":
            print(f"python stdout {int_feature}")
            print(f"python stderr {int_feature}", file=sys.stderr)
            ctypes.CDLL(None).printf(b"C printf %d\n", ctypes.c_int(int_feature))
            os.write(2, b"raw fd 2, ")
            os.write(2, b"in two pieces\n")
            os.write(1, b"not utf-8: \xff\xfe\n")
            os.write(1, b"crlf line\r\n")
        elif what == "long":
            os.write(1, b"x" * int_feature + b"\n")
        elif what == "tail":
            os.write(1, b"no newline at the end")
        elif what == "die":
            print("last words on stdout")
            print("last words on stderr", file=sys.stderr)
            os.kill(os.getpid(), signal.SIGKILL)
        return int_feature, ""


class SlowInitEngine:
    """Its ``initialize`` takes ``config["init_s"]`` seconds (1 by default), as a real model
    that loads its weights; answers ``(1 + 2 * int_feature, "")``."""

    def initialize(self, config, **kwargs):
        time.sleep(config.get("init_s", 1.0))

    def run(self, float_features, str_features, int_feature):
        return 1 + 2 * int_feature, ""


class GilHoldingEngine:
    """Its ``run`` spends ``float_features[0]`` seconds in one C call that holds the GIL
    (``ctypes.PyDLL`` does not release it), after creating the file
    ``config["marker"] + "." + <its pid>`` if ``config`` names a marker."""

    def initialize(self, config, **kwargs):
        self.marker = config.get("marker") if isinstance(config, dict) else None

    def run(self, float_features, str_features, int_feature):
        import ctypes

        if self.marker:
            open(f"{self.marker}.{os.getpid()}", "w").close()
        ctypes.PyDLL(None).sleep(int(float_features[0]))
        return int_feature, "held"


class WhereEngine:
    """Answers ``(1, <where py4cc and this module were imported from, and the py4cc modules
    loaded, as JSON>)``: on a Ray cluster, from the actor's runtime environment."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        import sys

        import py4cc

        names = sorted(name for name in sys.modules if name == "py4cc" or name.startswith("py4cc."))
        return 1, json.dumps({"py4cc": py4cc.__file__, "engine": __file__, "modules": names, "pid": os.getpid()})
