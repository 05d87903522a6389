"""An Engine that reports the environment its module was imported with.

What it reads at import time shows whether ``worker_env`` was set before the Engine's module
was imported. The tests must never import this module in their own process (with "fork" a
worker would inherit that import).
"""

from __future__ import annotations

import ctypes
import json
import os

NAMES = ("PY4CC_TEST_ENV_A", "PY4CC_TEST_ENV_B", "OMP_NUM_THREADS")

AT_IMPORT = {name: os.environ.get(name) for name in NAMES}


def c_getenv(name: str) -> str | None:
    """getenv(3), what a C library sees."""
    getenv = ctypes.CDLL(None).getenv
    getenv.restype = ctypes.c_char_p
    value = getenv(name.encode())
    return None if value is None else value.decode()


class EnvEngine:
    """Answers ``(1, JSON {"import": ..., "run": ..., "c": ...})``: the variables of
    ``NAMES`` as seen at import, in ``os.environ`` now, and by C's getenv."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        seen = {
            "import": AT_IMPORT,
            "run": {name: os.environ.get(name) for name in NAMES},
            "c": {name: c_getenv(name) for name in NAMES},
            "pid": os.getpid(),
        }
        return 1, json.dumps(seen)
