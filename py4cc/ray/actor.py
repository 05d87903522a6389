"""The Engine's side of the Ray backend: one actor, on some node of the cluster, per Engine.

:class:`EngineActor` is a plain class; :mod:`py4cc.ray.backend` turns it into a Ray actor
class. It runs tasks exactly as a local worker process does (:func:`py4cc.worker.run_call`),
one at a time, so that an Engine cannot tell the two apart. Like :mod:`py4cc.worker`, it
imports nothing of the Driver's machinery, and not even Ray at import time.
"""

from __future__ import annotations

import os
import socket
import threading
import traceback
from typing import Any

from ..protocol import Call, decode_call
from ..worker import WorkerSetup, build_engine, run_batch, run_call, unchecked_answer

WATCH_GROUP = "watch"
"""The actor's second concurrency group (one thread), where :meth:`EngineActor.watch` waits,
so that the Driver learns of the actor's death even when it runs no task."""


class EngineActor:
    """Builds the Engine once, then answers tasks one at a time, in the order they come."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.stopped = threading.Event()

    def initialize(self, setup: WorkerSetup) -> tuple[bool, int, str, str]:
        """Build and initialise the Engine: ``(True, pid, node id, host name)``, or
        ``(False, pid, node id, traceback)`` when building or initialising it raised."""
        node_id = ""
        try:
            import ray  # here, on the cluster, where it is installed

            node_id = ray.get_runtime_context().get_node_id()
        except Exception:
            pass
        try:
            engine = build_engine(setup)
        except BaseException:  # a user's initialize may raise anything, even SystemExit
            return False, os.getpid(), node_id, traceback.format_exc()
        self.engine = engine
        return True, os.getpid(), node_id, socket.gethostname()

    def call(self, message: bytes) -> tuple:
        """Run one task, sent as :func:`py4cc.protocol.encode_call` makes it for a local
        worker (one argument: Ray serializes each argument of a call on its own):
        ``(flag, value, message, run_s)``, as a local worker answers it (a general task's
        value pickled here: an answer that cannot be pickled fails its task)."""
        call = decode_call(message)
        assert isinstance(call, Call)  # the Ray backend sends one Call here, a batch to call_batch
        try:
            answer = run_call(self.engine, call)
        except Exception:  # checking a strange answer failed: fail the task, not the actor
            answer = unchecked_answer(call.key)
        return answer.flag, answer.value, answer.message, answer.run_s

    def call_batch(self, calls: list[tuple]) -> list[tuple]:
        """Run one batch (a list of :class:`py4cc.protocol.Call` fields, in queue order) as a
        local worker does (:func:`py4cc.worker.run_batch`): one ``(flag, value, message,
        run_s)`` per call, in the same order."""
        answers = run_batch(self.engine, [Call(*fields) for fields in calls])
        return [(a.flag, a.value, a.message, a.run_s) for a in answers]

    def watch(self) -> None:
        """Returns only once the actor is stopped (its call then fails with the actor's death)."""
        self.stopped.wait()
