"""py4cc: run a Python model in a pool of worker processes, for rs4py.

* :mod:`py4cc.engine` — the demo model ``big_model`` and the demo ``Engine``.
* :mod:`py4cc.driver` — ``Driver``, the pool driver and its flag protocol.

The reference workload's Python side (task generator, threaded client) lives in
:mod:`py4cc.workload`, outside the modules rs4py embeds.
"""

from __future__ import annotations

from .driver import Driver
from .engine import Engine, big_model, task_sleep_seconds

__all__ = ["Driver", "Engine", "big_model", "task_sleep_seconds"]
