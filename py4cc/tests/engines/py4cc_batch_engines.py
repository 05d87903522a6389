"""Engines for the batching tests (reached through sys.path, never imported by the tests'
own process with "fork")."""

from __future__ import annotations

import os
import time


class BatchEngine:
    """``run(x)`` answers ``2 * x``; ``run_batch`` answers the same per call and records the
    batches it got. An item ``"raise"`` answers a ValueError for that call alone; a batch
    holding ``"explode"`` raises; one holding ``"short"`` answers a list one too short, one
    holding ``"not a list"`` a tuple; ``("sleep", s)`` sleeps ``s`` seconds first and answers
    ``"sleep"``; a batch holding ``"history"`` answers the batches seen before it to that item, 0 to the others."""

    def initialize(self, **kwargs):
        self.batches = []

    def run(self, x):
        if x == "raise":
            raise ValueError("bad item")
        return 2 * x

    def run_batch(self, calls):
        items = [args[0] for args, kwargs in calls]
        if "history" in items:  # the batches before this one, for that item; 0 for the others
            return [list(self.batches) if item == "history" else 0 for item in items]
        self.batches.append(items)
        for item in items:
            if isinstance(item, tuple) and item[0] == "sleep":
                time.sleep(item[1])
        if "explode" in items:
            raise RuntimeError("the whole batch exploded")
        if "short" in items:
            return [0] * (len(items) - 1)
        if "not a list" in items:
            return tuple(items)
        answers = []
        for item in items:
            if item == "raise":
                answers.append(ValueError(f"bad item at {items.index(item)}"))
            elif isinstance(item, tuple):
                answers.append(item[0])
            else:
                answers.append(2 * item)
        return answers

    def pid(self):
        return os.getpid()


class PlainEngine:
    """No ``run_batch``: the worker calls ``run`` once per task of a batch."""

    def initialize(self, **kwargs):
        self.calls = 0

    def run(self, x):
        self.calls += 1
        if x == "raise":
            raise KeyError("plain engine refuses")
        if isinstance(x, tuple):
            time.sleep(x[1])
            return x[0]
        return x + 1
