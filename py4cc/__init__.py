"""py4cc: run a Python model in a pool of worker processes, for rs4py.

* :mod:`py4cc.engine` — the demo model ``big_model`` and the demo ``Engine``.
* :mod:`py4cc.driver` — ``Driver``, the pool driver and its flag protocol.
* :mod:`py4cc.taskgen` — the seeded task generator shared with the Rust example.
* :mod:`py4cc.harness` — the reference workload (``python3 -m py4cc.harness``).
"""

from __future__ import annotations

from .driver import Driver
from .engine import Engine, big_model, task_sleep_seconds

__all__ = ["Driver", "Engine", "big_model", "task_sleep_seconds"]
