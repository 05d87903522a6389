"""py4cc: run a Python model in a pool of worker processes (or Ray actors), for rs4py.

The package is in layers; a module imports only from the layers below it (its
``TYPE_CHECKING`` imports included), ``local`` and ``ray`` never import each other, and
``tests/test_layers.py`` keeps it so. ``docs/architecture.md`` draws the tree and a task's
trip. From the bottom:

1. What a worker process imports, and nothing else of py4cc:
   :mod:`py4cc.protocol` (the flags, fixed messages, limits, the wire messages and
   ``DRIVER_CONTRACT``); :mod:`py4cc.engine` (the demo model and ``Engine``);
   :mod:`py4cc.lifeline` (workers die with their host); :mod:`py4cc.worker` (the worker's
   loop: build the Engine, run each task, ``engine.<method>(*args, **kwargs)``).
2. The options: :mod:`py4cc.options` (the Driver's options, checked once by ``initialize``)
   and :mod:`py4cc.validate` (the calls' argument checks).
3. :mod:`py4cc.core` — the host's machinery, written once for both backends:
   :mod:`~py4cc.core.tasks` (the task book: admission, capacity, keys, answers, waits,
   cancel, expiry, the stop path: the base of both backends), :mod:`~py4cc.core.scheduling`
   (which worker a queued task goes to), :mod:`~py4cc.core.slots` (a worker's slot and its
   restart backoff), :mod:`~py4cc.core.stats` (what ``stats`` reports),
   :mod:`~py4cc.core.completion` (the host's notifier; why a dropped key is gone),
   :mod:`~py4cc.core.sink` (where output lines and events go).
4. The backends, side by side: :mod:`py4cc.local` — worker processes on this machine
   (:mod:`~py4cc.local.pool`, the pool with its dispatcher thread and the data-flow diagram;
   :mod:`~py4cc.local.processes`; :mod:`~py4cc.local.output`, the output relay;
   :mod:`~py4cc.local.forkserver`, the forkserver and preloading); :mod:`py4cc.ray` — Engine
   actors on a Ray cluster (:mod:`~py4cc.ray.backend`, one class; :mod:`~py4cc.ray.connect`;
   :mod:`~py4cc.ray.actor`, the actor's side; Ray is imported only when it starts).
5. The public face: :mod:`py4cc.driver` (``Driver``, its lifecycle, a task's trip) and
   :mod:`py4cc.calls` (its calls that never raise, where ``submit`` and ``submit_call``
   become the one kind of task, a :class:`~py4cc.protocol.Call`).

The names below are loaded on first use, so that a worker process, which imports
``py4cc.worker``, does not load the Driver's machinery with the package.

The reference workload's Python side (task generator, threaded client) lives in
:mod:`py4cc.workload`, and the tests in :mod:`py4cc.tests`, outside the modules rs4py
embeds.
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
