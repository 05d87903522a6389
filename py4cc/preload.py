"""Preloading: the parent loads the Engine before its workers start, so that they inherit it.

An Engine's module often imports heavy libraries (numpy, scikit-learn: a second or more),
and its ``initialize`` may load a model. Each worker does that again, unless it inherits the
work from the process it is forked from:

* ``"module"`` with ``fork``: this process imports the Engine's module once; every worker
  (replacements too) is forked with it imported, sharing its pages until they are written.
* ``"engine"`` with ``fork``: this process also builds and initialises one Engine (with the
  Driver's config and extra arguments); every worker uses its inherited copy and does not
  call ``initialize`` at all. The Engine lives here until the Driver is finalized.
* ``"module"`` or ``"engine"`` with ``forkserver``: the module is added to the fork server's
  preload list (``multiprocessing``'s ``set_forkserver_preload``), so the fork server
  imports it once and forks workers with it imported. The fork server is shared by every
  Driver of the process and reads that list when it starts, so this takes effect only if it
  is not running yet (the first forkserver Driver of the process); each worker still builds
  its own Engine, the fork server knowing nothing of this Driver's config.
* ``spawn`` inherits nothing: ``preload`` is refused (ValueError at ``initialize``).

Caveats: the parent then holds the module (and, for ``"engine"``, the model) in its own
memory for as long as the Driver runs; a library that starts threads when imported (BLAS
thread pools) or in ``initialize`` has done so in the parent before the fork, and only the
forking thread exists in the child (``worker_env``, set in a worker before it imports the
module, comes too late for a module imported here: variables such as ``OMP_NUM_THREADS`` must
then be in this process's environment when it starts); and Python 3.12+ warns about forking
a process that runs threads, as ``fork`` always does here.
"""

from __future__ import annotations

import importlib
import multiprocessing.forkserver
from typing import Any

from .worker import WorkerSetup, build_engine


def preload(setup: WorkerSetup, start_method: str, what: str | None) -> Any:
    """Do what ``what`` asks before the first worker starts (see the module docstring).
    Returns the Engine the workers inherit (``"engine"`` with ``fork``), else None. Raises
    what importing the module, or building and initialising the Engine, raises."""
    if what is None:
        return None
    module_name = setup.engine.partition(":")[0]
    if start_method == "forkserver":
        add_to_forkserver_preload(module_name)
        return None
    importlib.import_module(module_name)
    if what == "engine":
        return build_engine(setup)
    return None


def add_to_forkserver_preload(module_name: str) -> None:
    """Add ``module_name`` to the modules the fork server imports when it starts, keeping
    those already listed (``__main__`` by default)."""
    server = multiprocessing.forkserver._forkserver
    listed = list(getattr(server, "_preload_modules", ["__main__"]))
    if module_name not in listed:
        multiprocessing.forkserver.set_forkserver_preload([*listed, module_name])
