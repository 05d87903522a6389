"""py4cc: run a Python model in a pool of worker processes, for rs4py.

* :mod:`py4cc.driver` — ``Driver``, the pool driver and its flag protocol (the diagram of
  a task's trip is in its docstring).
* :mod:`py4cc.engine` — the demo model ``big_model`` and the demo ``Engine``.
* :mod:`py4cc.protocol` — the flags, fixed messages, limits and wire messages, and
  ``DRIVER_CONTRACT``, the names another language's binding relies on.
* :mod:`py4cc.options`, :mod:`py4cc.pool`, :mod:`py4cc.processes`,
  :mod:`py4cc.dispatcher`, :mod:`py4cc.output` (the workers' output and events),
  :mod:`py4cc.stats` — the Driver's machinery, in this process.
* :mod:`py4cc.worker` — the worker process's side; with :mod:`py4cc.protocol`, all that a
  worker process imports of py4cc.

The names below are loaded on first use, so that a worker process, which imports
``py4cc.worker``, does not load the Driver's machinery with the package.

The reference workload's Python side (task generator, threaded client) lives in
:mod:`py4cc.workload`, outside the modules rs4py embeds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .driver import Driver
    from .engine import Engine, big_model, task_sleep_seconds

__all__ = ["Driver", "Engine", "big_model", "task_sleep_seconds"]

_HOMES = {"Driver": "driver", "Engine": "engine", "big_model": "engine", "task_sleep_seconds": "engine"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
