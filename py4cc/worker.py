"""The worker process: builds the Engine, reports ready, then runs tasks one at a time.

This module is what a worker process imports (with :mod:`py4cc.protocol`); it must not
import the parent's machinery (the pool, the dispatcher, the Driver and its exit hook).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
import traceback
from typing import Any, NamedTuple

from .lifeline import Lifeline, arm
from .protocol import (
    DEFAULT_CALL_METHOD,
    FAILED,
    OK,
    Answer,
    Call,
    InitFailed,
    Ready,
    decode_arguments,
    decode_call,
    describe,
    encode_report,
    frame,
    pickle_answer,
    take_messages,
)


class WorkerSetup(NamedTuple):
    """What every worker process of a pool is started with."""

    engine: str
    """``"module:Class"``, the Engine to build."""
    config: Any
    """The parsed JSON config, given to ``Engine.initialize``."""
    float_feature_names: list[str]
    str_feature_names: list[str]
    extra: dict[str, Any]
    """The extra keyword arguments of ``Driver.initialize``, passed on."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment variables set in the worker before the Engine's module is imported."""
    call_method: str = DEFAULT_CALL_METHOD
    """The Engine's method that general tasks call."""


def load_engine_class(engine: str) -> Any:
    """The object named by ``"module:Class"`` (``Class`` may be dotted); raises if it is not there."""
    module_name, _, class_name = engine.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in class_name.split("."):
        obj = getattr(obj, part)
    return obj


def build_engine(setup: WorkerSetup) -> Any:
    """A new Engine, initialised from ``setup``, with the method general tasks call (checked
    here, so that a wrong name fails at start rather than task by task)."""
    engine = load_engine_class(setup.engine)()
    engine.initialize(
        config=setup.config,
        float_feature_names=list(setup.float_feature_names),
        str_feature_names=list(setup.str_feature_names),
        **setup.extra,
    )
    if not callable(getattr(engine, setup.call_method, None)):
        raise AttributeError(f"the engine {setup.engine!r} has no method {setup.call_method!r} (call_method)")
    return engine


def run_call(engine: Any, call: Call) -> Answer:
    """Run one task, ``engine.<call.method>(*args, **kwargs)``; never raises what the method
    raises. A demo task (``call.demo``) answers by the demo protocol's rule
    (:func:`check_answer`; may raise when a strange answer's checks do); any other task's
    success is no exception, whatever the answer (pickled here)."""
    key = call.key
    failed_value = -1 if call.demo else None
    try:
        args, kwargs = decode_arguments(call.payload)
    except BaseException:
        text = "the task's arguments could not be unpickled:\n" + traceback.format_exc()
        return Answer(key, FAILED, failed_value, text)
    started = time.perf_counter()
    try:
        value = getattr(engine, call.method)(*args, **kwargs)
    except BaseException:  # a user's method may raise anything, even SystemExit
        return Answer(key, FAILED, failed_value, traceback.format_exc(), time.perf_counter() - started)
    run_s = time.perf_counter() - started
    if call.demo:
        return check_answer(key, value, run_s)
    return pickle_answer(key, value, run_s)


def check_answer(key: int, answer: Any, run_s: float = 0.0) -> Answer:
    """The Answer for what ``Engine.run`` returned: a ``(value: int, message: str)`` pair,
    ``value > 0`` for a result. May raise when a strange answer's checks do (a user's int
    subclass whose comparison raises, say)."""
    pair = "Engine.run must return a (value: int, message: str) pair"
    if not (isinstance(answer, tuple) and len(answer) == 2):
        return Answer(key, FAILED, -1, f"{pair}; it returned {describe(answer)}", run_s)
    value, message = answer
    if not isinstance(value, int) or isinstance(value, bool):
        return Answer(key, FAILED, -1, f"{pair}; its value was {describe(value)}", run_s)
    if not isinstance(message, str):
        return Answer(key, FAILED, -1, f"{pair}; its message was {describe(message)}", run_s)
    if value > 0:
        return Answer(key, OK, int(value), str(message), run_s)
    if not message:
        message = f"the model answered {value} (a value <= 0 means the model failed)"
    return Answer(key, FAILED, int(value), str(message), run_s)


def unchecked_answer(key: int) -> Answer:
    """The answer of a demo task whose Engine's answer could not be checked (its checks raised)."""
    return Answer(key, FAILED, -1, "the engine's answer could not be checked:\n" + traceback.format_exc())


def redirect_output(stdout_conn: Any, stderr_conn: Any) -> None:
    """Point this process's fds 1 and 2 at the pipes the parent reads (so that C-level
    writes are caught too), and make every writer on them line-buffered, so that each
    line leaves at once and none is lost when the process dies."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            pass
    for conn, fd in ((stdout_conn, 1), (stderr_conn, 2)):
        os.dup2(conn.fileno(), fd)
        conn.close()
    sys.stdout = line_writer(sys.stdout, 1)
    sys.stderr = line_writer(sys.stderr, 2)
    line_buffer_c_stdout()


def line_writer(stream: Any, fd: int) -> Any:
    """``stream`` made line-buffered UTF-8 (what the parent decodes), or a new such writer
    on ``fd`` if it cannot be."""
    try:
        if stream is not None and stream.fileno() == fd:
            stream.reconfigure(encoding="utf-8", errors="backslashreplace", line_buffering=True)
            return stream
    except Exception:
        pass
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def line_buffer_c_stdout() -> None:
    """Make C's ``stdout`` line-buffered (it is fully buffered on a pipe), for extensions
    that ``printf``; C's ``stderr`` is unbuffered already. Best effort: glibc-like libcs."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        c_stdout = ctypes.c_void_p.in_dll(libc, "stdout")
        libc.setvbuf(c_stdout, None, 1, 0)  # 1: _IOLBF
    except Exception:
        pass


def apply_env(env: tuple[tuple[str, str], ...]) -> None:
    """Set ``env`` in this process (``os.environ`` and the C environment)."""
    for name, value in env:
        os.environ[name] = value


def worker_main(
    conn: Any,
    setup: WorkerSetup,
    close_fds: list[int],
    output: tuple[Any, Any] | None = None,
    engine: Any = None,
    lifeline: Lifeline | None = None,
) -> None:
    """Body of one worker process: build the Engine (unless ``engine`` is one the parent
    built before forking), report ready, then serve tasks until told to stop or until the
    parent goes away (its pipe end closes, and the ``lifeline`` kills this process whatever
    it is doing).

    ``output``: the write ends of the pipes the parent reads this worker's stdout and
    stderr from (None: leave fds 1 and 2 as inherited)."""
    arm(lifeline)
    # With "fork" the child inherits the parent's ends of every worker pipe; closing
    # them lets this worker see EOF (and exit) when the parent goes away.
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if output is not None:
        try:
            redirect_output(*output)
        except Exception:  # keep the inherited fds 1 and 2 rather than not run at all
            pass
    # Ctrl-C reaches the whole process group: the parent decides when workers stop.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    try:
        # Before the Engine's module is imported: libraries read some variables once, at load
        # (a module preloaded by the parent was imported before them: see py4cc.local.forkserver).
        apply_env(setup.env)
        if engine is None:
            engine = build_engine(setup)
    except BaseException:
        try:
            conn.send_bytes(encode_report(InitFailed(traceback.format_exc())))
        except Exception:
            pass
        return
    try:
        conn.send_bytes(encode_report(Ready(os.getpid())))
        serve(conn, engine)
    except (EOFError, OSError):
        return  # the parent has gone away


READ_SIZE = 1 << 16
"""The most one read of the parent's pipe takes in."""


def serve(conn: Any, engine: Any) -> None:
    """Answer tasks in the order they come, until STOP or EOF.

    Every read takes in all that is waiting (one wake-up for many messages). A single Call
    is answered as soon as it has run (prefetched ones wait in the buffer meanwhile); a
    batch (one message, a list of Calls) is answered with ONE write of one Answer per Call.
    """
    fd = conn.fileno()
    inbox = bytearray()
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            return
        if not data:
            return
        inbox += data
        for message in take_messages(inbox):
            call = decode_call(message)
            if call is None:
                return
            if isinstance(call, list):
                answers = run_batch(engine, call)
            else:
                try:
                    answers = [run_call(engine, call)]
                except Exception:  # checking a strange answer failed: fail the task, not the worker
                    answers = [unchecked_answer(call.key)]
            write_all(fd, b"".join([frame(encode_report(answer)) for answer in answers]))


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (a blocking pipe): one write, unless it was short."""
    while True:
        written = os.write(fd, data)
        if written == len(data):
            return
        data = data[written:]


def batch_method(method: str) -> str:
    """The Engine's batch method for tasks of ``method``: ``run_batch`` for ``run``, else
    ``<method>_batch``."""
    return f"{method}_batch"


def run_batch(engine: Any, calls: list[Call]) -> list[Answer]:
    """A batch's Answers, one per Call, in order; never raises.

    Calls of the same method and kind (demo or not), in queue order, go to the Engine's
    ``<method>_batch(calls)`` (``run_batch`` for ``run``) as a list of ``(args, kwargs)``
    pairs; it answers a list of the same length and order, whose items are answers as
    ``<method>`` gives them, or ``Exception`` instances that fail their task alone. Without
    such a method the worker calls ``<method>`` once per task. A task's run time is its
    group's time divided by the group's size (one clock reading pair per group).
    """
    answers: dict[int, Answer] = {}
    groups: dict[tuple[str, bool], list[tuple[Call, tuple[Any, ...], dict[str, Any]]]] = {}
    for call in calls:
        try:
            args, kwargs = decode_arguments(call.payload)
        except BaseException:
            text = "the task's arguments could not be unpickled:\n" + traceback.format_exc()
            answers[call.key] = Answer(call.key, FAILED, -1 if call.demo else None, text)
            continue
        groups.setdefault((call.method, call.demo), []).append((call, args, kwargs))
    for (method, demo), group in groups.items():
        for answer in run_group(engine, method, demo, group):
            answers[answer.key] = answer
    return [answers[call.key] for call in calls]


def run_group(
    engine: Any, method: str, demo: bool, group: list[tuple[Call, tuple[Any, ...], dict[str, Any]]]
) -> list[Answer]:
    """The Answers of one group of a batch (see :func:`run_batch`)."""
    failed_value = -1 if demo else None
    batched = getattr(engine, batch_method(method), None)
    started = time.perf_counter()
    if batched is None:
        single = getattr(engine, method)
        values: list[Any] = []
        for _, args, kwargs in group:
            try:
                values.append(single(*args, **kwargs))
            except BaseException as exc:  # a user's method may raise anything
                values.append(RaisedInRun(exc, traceback.format_exc()))
    else:
        try:
            values = batched([(args, kwargs) for _, args, kwargs in group])
        except BaseException:
            text = f"Engine.{batch_method(method)} raised for the batch of {len(group)} tasks:\n"
            text += traceback.format_exc()
            run_s = (time.perf_counter() - started) / len(group)
            return [Answer(call.key, FAILED, failed_value, text, run_s) for call, _, _ in group]
        if type(values) is not list or len(values) != len(group):
            size = f"a list of length {len(values)}" if isinstance(values, list) else describe(values)
            text = (
                f"Engine.{batch_method(method)} must return a list of {len(group)} answers "
                f"(one per call, in order); it returned {size}"
            )
            run_s = (time.perf_counter() - started) / len(group)
            return [Answer(call.key, FAILED, failed_value, text, run_s) for call, _, _ in group]
    run_s = (time.perf_counter() - started) / len(group)
    answers = []
    for (call, _, _), value in zip(group, values):
        key = call.key
        if isinstance(value, RaisedInRun):
            answers.append(Answer(key, FAILED, failed_value, value.text, run_s))
        elif isinstance(value, BaseException):
            answers.append(Answer(key, FAILED, failed_value, exception_text(value), run_s))
        elif demo:
            try:
                answers.append(check_answer(key, value, run_s))
            except Exception:
                answers.append(unchecked_answer(key))
        else:
            answers.append(pickle_answer(key, value, run_s))
    return answers


class RaisedInRun:
    """What a task's ``run`` raised when the worker ran a batch task by task (kept apart from
    an exception that ``run`` answered as its value)."""

    __slots__ = ("exc", "text")

    def __init__(self, exc: BaseException, text: str) -> None:
        self.exc = exc
        self.text = text


def exception_text(exc: BaseException) -> str:
    """An exception a batch answered for one task, as that task's message: its traceback if
    it has one (it was raised), else its type and message."""
    try:
        if exc.__traceback__ is not None:
            return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
    except Exception:
        return f"{type(exc).__name__} (its message could not be formatted)"
