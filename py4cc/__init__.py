"""py4cc: run a Python model in a pool of worker processes, for rs4py.

* :mod:`py4cc.driver` — ``Driver``, the pool driver and its flag protocol (the diagram of
  a task's trip is in its docstring): its options and lifecycle; :mod:`py4cc.calls`, its
  calls that never raise; :mod:`py4cc.validate`, their argument checks.
* :mod:`py4cc.engine` — the demo model ``big_model`` and the demo ``Engine``.
* :mod:`py4cc.protocol` — the flags, fixed messages, limits and wire messages, and
  ``DRIVER_CONTRACT``, the names another language's binding relies on.
* :mod:`py4cc.options` — the Driver's options, checked once by ``initialize``.
* :mod:`py4cc.backend` — ``Backend``, the interface the Driver runs its tasks through
  (a cluster's backend implements it too).
* :mod:`py4cc.pool` — ``Pool``, the Backend of worker processes: tasks and workers under
  one lock; its parts :mod:`py4cc.tasks` (each task and its answer: collect, wait, cancel,
  ``result_ttl`` expiry) and :mod:`py4cc.scheduling` (which worker runs which task,
  prefetch).
* :mod:`py4cc.processes` (starting and stopping worker processes, tracked by pid),
  :mod:`py4cc.dispatcher` (the thread that collects answers), :mod:`py4cc.recovery`
  (restarts with backoff), :mod:`py4cc.completion` (the host's notifier; why a dropped key is gone),
  :mod:`py4cc.output` (the workers' output and events), :mod:`py4cc.stats` (what
  ``stats`` reports), :mod:`py4cc.preload` (what the parent loads before forking),
  :mod:`py4cc.cleanup` (the forkserver and temporary directory) — the pool's machinery,
  in this process.
* :mod:`py4cc.ray_backend` — ``RayBackend``, the Backend of Engine actors on a Ray cluster
  (Ray imported only when it starts); its parts :mod:`py4cc.ray_tasks` (the queue, which actor
  runs which task), :mod:`py4cc.ray_actors` (the actors' start, death and restart),
  :mod:`py4cc.ray_answers` (the answers' callbacks, a dead actor's calls) and
  :mod:`py4cc.ray_supervisor` (timeouts, the probe, stats); :mod:`py4cc.ray_connect`
  (connecting, the runtime environment) and :mod:`py4cc.ray_actor` (the actor's side).
* :mod:`py4cc.worker` — the worker process's side; with :mod:`py4cc.protocol` and
  :mod:`py4cc.lifeline` (workers die with their host), all that a worker process imports
  of py4cc.

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
