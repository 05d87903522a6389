"""Helpers shared by the py4cc tests."""

from __future__ import annotations

import os
import sys
import time
import unittest
from typing import Any, Callable

from py4cc.driver import Driver

ENGINES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engines")
"""The directory of ``py4cc_user_engines`` (a plain module, reached through sys.path)."""

FLOAT_NAMES = ["f0", "f1"]
STR_NAMES = ["name", "sentence", "uuid"]
TASK = ([1.5, -2.25], ["abc", "de", "f"], 3)
"""A valid task for FLOAT_NAMES/STR_NAMES: big_model gives 3 + 6 + 3 = 12."""


def add_engines_dir() -> None:
    if ENGINES_DIR not in sys.path:
        sys.path.insert(0, ENGINES_DIR)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_running(pid: int) -> bool:
    """True if the process exists and is not a zombie (whose parent has not reaped it)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return pid_alive(pid)
    return state not in ("Z", "X")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class DriverTestCase(unittest.TestCase):
    """Builds initialised Drivers and finalizes them after each test."""

    def make_driver(
        self, config: str = "{}", float_names: Any = None, str_names: Any = None, extra: Any = None, **options: Any
    ) -> Driver:
        options.setdefault("n_subprocesses", 1)
        if "py4cc_user_engines" in str(options.get("engine", "")):
            add_engines_dir()
        driver = Driver(**options)
        self.addCleanup(driver.finalize)
        driver.initialize(
            config,
            FLOAT_NAMES if float_names is None else float_names,
            STR_NAMES if str_names is None else str_names,
            **(extra or {}),
        )
        return driver

    def assertAllGone(self, pids: Any) -> None:
        alive = [pid for pid in pids if pid_alive(pid)]
        self.assertEqual(alive, [], f"worker processes still alive: {alive}")


def descendants(pid: int) -> list[int]:
    """The pids of every process below ``pid`` (its children, theirs, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def forkserver_pid() -> int | None:
    """The pid of this process's multiprocessing forkserver, if it runs."""
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]


def ready_workers(driver: Driver) -> int:
    """How many of the driver's worker processes are ready (for tests only)."""
    pool: Any = driver._pool
    if pool is None:
        return 0
    with pool.lock:
        return sum(1 for w in pool.workers if w.usable())
