"""Engines for general tasks (``Driver.submit_call``), used by py4cc's tests and by rs4py's
``tests/general.rs`` alike (a plain module, reached through sys.path).

``CommandEngine.run(command, *args, **kwargs)`` does what ``command`` says; see ``run``.
"""

from __future__ import annotations

import os
import time

IMPORTED_IN_PID = os.getpid()
"""The process that imported this module: a worker's own, or the one it inherited it from."""


def explode(*args):
    """Raises: an answer that pickles as a call to this cannot be unpickled."""
    raise RuntimeError("this value refuses to be unpickled")


class Unloadable:
    """Pickles fine; unpickling it raises."""

    def __reduce__(self):
        return explode, ()


class CommandEngine:
    def initialize(self, config, float_feature_names, str_feature_names, **extra):
        self.config = config
        self.names = [list(float_feature_names), list(str_feature_names)]
        self.extra = extra
        self.initialized_in_pid = os.getpid()

    def run(self, command, *args, **kwargs):
        """``echo``: ``(args as a list, kwargs)``; ``value``: ``args[0]``; ``raise``: ValueError(args[0]);
        ``sleep``: sleeps ``args[0]`` s, answers ``args[1]``; ``reverse``: ``args[0]``
        (bytes) reversed; ``length``: ``len(args[0])``; ``unpicklable``: a lambda;
        ``unloadable``: an Unloadable; ``exit``: raises SystemExit; ``extra``: ``initialize``'s
        extra argument ``args[0]``; ``pids``: the processes that imported this module and
        initialised this Engine, and this one's;
        ``where``: how it was built, and in which processes."""
        if command == "echo":
            return list(args), kwargs
        if command == "value":
            return args[0]
        if command == "raise":
            raise ValueError(args[0])
        if command == "sleep":
            time.sleep(args[0])
            return args[1]
        if command == "reverse":
            return bytes(reversed(args[0]))
        if command == "length":
            return len(args[0])
        if command == "unpicklable":
            return lambda: None
        if command == "unloadable":
            return Unloadable()
        if command == "exit":
            raise SystemExit(3)
        if command == "pids":
            return IMPORTED_IN_PID, self.initialized_in_pid, os.getpid()
        if command == "extra":
            return self.extra[args[0]]
        if command == "where":
            return {
                "config": self.config,
                "names": self.names,
                "extra": self.extra,
                "imported_in": IMPORTED_IN_PID,
                "initialized_in": self.initialized_in_pid,
                "pid": os.getpid(),
            }
        raise KeyError(f"unknown command {command!r}")

    def predict(self, rows, scale=1.0):
        """For ``call_method="predict"``: the sum of each row, times ``scale``."""
        return [scale * sum(row) for row in rows]
