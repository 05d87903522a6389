"""What py4cc's parts agree on: the answers' flags and fixed messages, the limits, and the
messages between the parent process and its workers.

Callers of ``Driver`` (the Rust side among them) rely on the flags, the fixed messages and
the names in :data:`DRIVER_CONTRACT`; the parent and its workers on the wire messages. A
worker process imports this module and :mod:`py4cc.worker` only, so it stays small and
imports nothing of the parent's machinery.
"""

from __future__ import annotations

import pickle
import signal
import struct
import traceback
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Protocol, Union

# -- the answers' flags and fixed messages ---------------------------------------------

OK = 0
"""submit: accepted. retrieve/wait: done, value > 0 (a general task: any value)."""
AT_CAPACITY = 1
"""submit: ``max_tasks`` tasks held."""
NOT_FINISHED = 1
"""retrieve/wait: the task is not finished yet (it is kept)."""
FAILED = 2
"""retrieve/wait: the model failed, its worker died, or it timed out (it is removed)."""
ERROR = 9
"""any call: a usage error; the message says what."""

CAPACITY_MESSAGE = "Model engine is working at capacity. Try again later."
NOT_FINISHED_MESSAGE = "The requested task is not finished"
FINALIZED_MESSAGE = "the driver is finalized; submit is no longer accepted"
DRAINING_MESSAGE = "the driver is draining (it finishes the tasks it holds, then stops); submit is no longer accepted"

DEFAULT_ENGINE = "py4cc.engine:Engine"
DEFAULT_CALL_METHOD = "run"
"""The Engine's method that a general task (``submit_call``) calls."""
PRELOAD_CHOICES = (None, "module", "engine")
"""What ``preload`` may name: nothing, the Engine's module, or one initialised Engine."""

OPTION_NAMES = (
    "max_tasks", "n_subprocesses", "start_method", "engine", "task_timeout", "init_timeout",
    "notify", "result_ttl", "worker_env", "worker_output", "call_method", "preload", "wait_readable",
    "backend", "ray_address", "batching", "deliver", "host_held", "pipe_reader",
)  # fmt: skip
"""The Driver's keyword options another language's binding passes."""

METHOD_NAMES = (
    "initialize", "submit", "retrieve", "wait", "finalize", "worker_pids", "cancel", "held_tasks", "stats", "drain",
    "submit_call", "submit_many",
)  # fmt: skip
"""The Driver's methods another language's binding calls."""

STAT_NAMES = (
    "state", "tasks_held", "tasks_queued", "tasks_running", "tasks_finished",
    "workers_wanted", "workers_alive", "workers_ready",
    "worker_starts", "worker_deaths", "last_death_cause", "replacement_failures",
    "tasks_done", "tasks_failed", "tasks_timed_out", "tasks_cancelled", "tasks_expired",
    "run_time_p50", "run_time_p99", "run_time_samples",
    "workers_degraded", "last_worker_failure",
    "cluster", "cluster_lost",
    "batches", "batch_size_mean", "batch_size_p50", "batch_size_p99", "queue_wait_p50_s", "queue_wait_p99_s",
)  # fmt: skip
"""The keys of ``Driver.stats()``, in order (see :mod:`py4cc.core.stats`)."""

DEMO_METHOD = "run"
"""The Engine's method that ``Driver.submit`` (the demo protocol) calls, whatever ``call_method``."""

FlagAnswer = tuple[int, Any, str]
"""``(flag, key or value, message)``, as the Driver's calls answer (a general task's value
may be anything)."""

NotifyCallback = Callable[[int, bool], object]
"""A host's ``notify(key, finished)`` (see :mod:`py4cc.core.completion`); what it returns is ignored."""

DeliverCallback = Callable[[list[tuple[int, int, Any, str]]], object]
"""A host's ``deliver(answers)``: each answer ``(key, flag, value, message)``, ``value`` an
int (a demo task's, in the i64 range), None, or bytes (a pickled value); see
:mod:`py4cc.core.completion`."""


class PipeReader(Protocol):
    """A host that reads the workers' pipes itself (``Driver(pipe_reader=...)``)."""

    def take(self, fd: int) -> tuple[list[bytes], bool]:
        """What pipe ``fd`` sent that is not an answer, and whether it has ended."""

    def drain(self, fd: int) -> tuple[list[bytes], bool]:
        """Read the pipe of an exited worker to its end, then as :meth:`take`."""

    def answered(self) -> list[tuple[int, int, int, float]]:
        """``[(fd, key, flag, run_s)]``: the answers read and handed to the host since the last call."""

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """``os.write`` for a non-blocking pipe, without letting the GIL go."""


DEFAULT_RESULT_TTL = 60.0
"""Seconds a finished result is kept for retrieval unless the Driver is told otherwise."""

DRIVER_CONTRACT: dict[str, Any] = {
    "module": "py4cc.driver",
    "class": "Driver",
    "options": [*OPTION_NAMES],
    "methods": [*METHOD_NAMES],
    "attributes": ["n_subprocesses"],
    "flags": {"OK": OK, "AT_CAPACITY": AT_CAPACITY, "NOT_FINISHED": NOT_FINISHED, "FAILED": FAILED, "ERROR": ERROR},
    "messages": {"CAPACITY_MESSAGE": CAPACITY_MESSAGE, "NOT_FINISHED_MESSAGE": NOT_FINISHED_MESSAGE},
    "stats": [*STAT_NAMES],
    "output_streams": ["stdout", "stderr", "event"],
}
"""Everything another language's binding reads off ``py4cc``: the module and class it
imports, the constructor's keyword options, the methods it calls, the attribute it reads,
the flags and fixed messages of the answers, the keys of ``Driver.stats()`` and the
stream names a ``worker_output`` callback receives. A binding checks its own copy against
this one; py4cc's tests check this one against the Driver."""

# -- limits ------------------------------------------------------------------------------

MAX_WORKERS = 1024
"""The most worker processes one Driver starts."""

STOP_GRACE_S = 1.0
"""How long finalize waits for idle workers to exit before killing them."""

RESTART_BACKOFF_FIRST_S = 0.1
"""How long a worker slot waits before it starts a worker again after one failed start
(a worker that died before it was ready, or could not be started at all)."""

RESTART_BACKOFF_MAX_S = 30.0
"""The wait doubles with each failed start in a row, up to this many seconds; a slot
never gives up."""

OUTPUT_GRACE_S = 2.0
"""How long finalize, once the workers are gone, waits for the rest of their output (a
process the Engine started may hold a worker's output pipe open longer)."""

OUTPUT_LINE_MAX = 64 * 1024
"""A line of worker output longer than this many bytes is handed on in pieces."""

RUN_TIME_WINDOW = 1024
"""How many of the latest Engine run times ``Driver.stats()`` takes its percentiles over."""

PREFETCH_BYTES = 32 * 1024
"""At most this many (estimated) bytes of tasks wait in a busy worker's pipe. Tasks are
sent with the pool's lock held; a send into a full pipe would block until the worker reads,
that is for the rest of its current task, or for ever if that task hangs (and the
dispatcher, needing the lock, could then never enforce task_timeout). A Linux socket pair
holds about 208 KiB by default; a larger task waits for an idle worker instead."""


def call_wire_size(payload: bytes) -> int:
    """A generous estimate of the kernel memory a task's message takes in a pipe."""
    return 2 * (64 + len(payload)) + 1024


# -- messages between the parent and a worker ------------------------------------------


class Call(NamedTuple):
    """parent -> worker: run one task, ``engine.<method>(*args, **kwargs)``, and answer it.
    The one kind of task: ``Driver.submit``'s demo call is ``run`` with the features as
    keyword arguments and ``demo`` True; ``Driver.submit_call``'s is ``call_method``.

    ``payload`` is the pickle of ``(args, kwargs)``, made at the Driver's front before the
    task is taken: arguments that cannot be pickled are refused there and then, and the
    backend sends the bytes as they are. ``demo``: the demo protocol's answer rule applies
    (the method answers ``(value: int, message: str)``, ``value > 0`` for a result, checked
    in the worker: :func:`py4cc.worker.check_answer`); else any answer is a result, pickled
    by the worker."""

    key: int
    method: str
    payload: bytes
    demo: bool


STOP = None
"""parent -> worker: exit now (sent only to an idle worker)."""


class Ready(NamedTuple):
    """worker -> parent: its Engine is initialised; tasks may come."""

    pid: int


class InitFailed(NamedTuple):
    """worker -> parent: building or initialising the Engine raised (the worker then exits)."""

    traceback: str


class Answer(NamedTuple):
    """worker -> parent: how task ``key`` ended (``flag`` OK or FAILED), and how many
    seconds ``Engine.run`` took (0.0 when it did not run to an answer).

    A demo task's ``value`` is an int (``Call.demo``). A general task's is its answer, pickled by the worker
    on its own (``pickled`` True), so that an answer that cannot be pickled fails its task in
    the worker, and one that cannot be unpickled here fails its task, not the worker's pipe
    (:func:`unpickle_answer`); a failed general task's value is None."""

    key: int
    flag: int
    value: Any
    message: str
    run_s: float = 0.0
    pickled: bool = False


Report = Union[Ready, InitFailed, Answer]
"""What a worker sends."""

# A Call or Answer, one per task each way, travels as a plain tuple of its fields: a named
# tuple would carry its class's module and name, which pickle looks up on both ends for
# every message. Ready and InitFailed, once
# per worker, travel as themselves.
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_dumps = pickle.dumps
_loads = pickle.loads
_as_tuple = tuple.__new__


def encode_call(call: Call | None) -> bytes:
    """The bytes of a Call (or of STOP) for ``Connection.send_bytes``."""
    return _dumps(None if call is None else call[:], _PROTOCOL)


def encode_batch(calls: Sequence[Call]) -> bytes:
    """The bytes of a batch: ONE message holding its Calls, in queue order (a list, where a
    single Call is a tuple). The worker answers it with one write of one Answer per Call."""
    return _dumps([call[:] for call in calls], _PROTOCOL)


def decode_call(data: bytes) -> Call | list[Call] | None:
    """The Call, the batch (a list of Calls) or STOP that :func:`encode_call` or
    :func:`encode_batch` made."""
    fields = _loads(data)
    if fields is None:
        return None
    if type(fields) is list:
        return [_as_tuple(Call, one) for one in fields]
    return _as_tuple(Call, fields)


def encode_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The payload of a Call; raises what pickle raises."""
    return _dumps((args, kwargs), _PROTOCOL)


def decode_arguments(payload: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``(args, kwargs)`` of a Call's payload."""
    args, kwargs = _loads(payload)
    return args, kwargs


def pickle_answer(key: int, value: Any, run_s: float = 0.0) -> Answer:
    """A general task's answer, its value pickled; FAILED with the reason if it cannot be.
    ``run_s``: how long the Engine took to answer it."""
    try:
        data = _dumps(value, _PROTOCOL)
    except BaseException:  # a user's __reduce__ may raise anything
        text = traceback.format_exc()
        return Answer(key, FAILED, None, f"the engine's answer {describe(value)} cannot be pickled:\n{text}", run_s)
    return Answer(key, OK, data, "", run_s, True)


def unpickle_answer(answer: Answer) -> Answer:
    """The Answer with a general task's value unpickled; FAILED with the reason if it
    cannot be (a class this process cannot import, say)."""
    try:
        value = _loads(answer.value)
    except Exception:
        text = traceback.format_exc()
        message = f"the engine's answer could not be unpickled by the driver:\n{text}"
        return Answer(answer.key, FAILED, None, message, answer.run_s)
    return Answer(answer.key, answer.flag, value, answer.message, answer.run_s)


# An Answer, one per task, travels as a fixed little-endian frame that a host reads without
# Python (rs4py's src/driver/pipes.rs): the tag, key, flag, run time, the value's kind and
# the message's length in bytes; then the message (UTF-8); then the value: 8 bytes (an int),
# nothing (None), or the rest (a pickle: a general task's answer, or an int outside i64).
ANSWER_TAG = b"A"  # a pickle starts with 0x80
_ANSWER_HEAD = struct.Struct("<cqqdBI")
_I64 = struct.Struct("<q")
VALUE_INT, VALUE_NONE, VALUE_PICKLED = 0, 1, 2
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def encode_answer(answer: Answer) -> bytes:
    """The bytes of an Answer (the frame above)."""
    value = answer.value
    if answer.pickled:
        kind, tail = VALUE_PICKLED, value
    elif value is None:
        kind, tail = VALUE_NONE, b""
    elif type(value) is int and I64_MIN <= value <= I64_MAX:
        kind, tail = VALUE_INT, _I64.pack(value)
    else:
        kind, tail = VALUE_PICKLED, _dumps(value, _PROTOCOL)
    text = answer.message.encode("utf-8", "surrogatepass")
    try:
        head = _ANSWER_HEAD.pack(ANSWER_TAG, answer.key, answer.flag, answer.run_s, kind, len(text))
    except struct.error:  # a key or flag outside i64 (never py4cc's own): its fields, pickled
        return _dumps(answer[:], _PROTOCOL)
    return b"".join((head, text, tail))


def decode_answer(data: bytes) -> Answer:
    """The Answer :func:`encode_answer` made (its value still pickled if it was)."""
    _, key, flag, run_s, kind, length = _ANSWER_HEAD.unpack_from(data)
    start = _ANSWER_HEAD.size
    message = data[start : start + length].decode("utf-8", "surrogatepass")
    tail = data[start + length :]
    if kind == VALUE_INT:
        return Answer(key, flag, _I64.unpack(tail)[0], message, run_s)
    if kind == VALUE_NONE:
        return Answer(key, flag, None, message, run_s)
    return Answer(key, flag, bytes(tail), message, run_s, True)


def encode_report(report: Report) -> bytes:
    """The bytes of what a worker sends, for ``Connection.send_bytes``: an Answer as its
    frame, anything else pickled."""
    if type(report) is Answer:
        return encode_answer(report)
    return _dumps(report, _PROTOCOL)


def decode_report(data: bytes) -> Any:
    """What :func:`encode_report` made: a Ready, InitFailed or Answer (anything else is
    the worker's mistake, and is returned as is)."""
    if data[:1] == ANSWER_TAG:
        return decode_answer(data)
    report = _loads(data)
    if type(report) is tuple and len(report) == 6:  # encode_answer's fallback
        return _as_tuple(Answer, report)
    return report


# -- framing: what Connection.send_bytes puts around a message -----------------------------

_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
_LONG_MARK = _LENGTH.pack(-1)


def frame(message: bytes) -> bytes:
    """``message`` framed as ``Connection.send_bytes`` frames it (a 4-byte big-endian length,
    or -1 and an 8-byte length from 2 GiB on), so that several can go in one write."""
    return frame_header(len(message)) + message


def frame_header(size: int) -> bytes:
    """The length prefix :func:`frame` puts before a message of ``size`` bytes (on its own,
    for a writer that sends a large message without copying it)."""
    if size < 0x7FFFFFFF:
        return _LENGTH.pack(size)
    return _LONG_MARK + _LONG_LENGTH.pack(size)


def take_messages(inbox: bytearray) -> list[bytes]:
    """Remove the whole messages at the front of ``inbox`` (framed as :func:`frame` and
    ``Connection.send_bytes`` do) and return them; a partial one stays for the rest.

    Reading a pipe this way takes in every message waiting with one read, where
    ``Connection.poll`` and ``recv_bytes`` would cost two reads and two polls per message.
    """
    messages = []
    at = 0
    end = len(inbox)
    while end - at >= 4:
        (size,) = _LENGTH.unpack_from(inbox, at)
        start = at + 4
        if size == -1:
            if end - start < 8:
                break
            (size,) = _LONG_LENGTH.unpack_from(inbox, start)
            start += 8
        if start + size > end:
            break
        messages.append(bytes(inbox[start : start + size]))
        at = start + size
    del inbox[:at]
    return messages


# -- describing values and exits in messages -------------------------------------------


def short_repr(value: Any) -> str:
    """repr(value), cut at 200 characters; never raises."""
    try:
        text = repr(value)
    except Exception as exc:  # a user's __repr__ may raise; so may a huge int's
        text = f"<repr() raised {type(exc).__name__}>"
    if len(text) > 200:
        text = text[:200] + "..."
    return text


def describe(value: Any) -> str:
    """``short_repr(value)`` and its type's name, for a message about a wrong value."""
    return f"{short_repr(value)} (type {type(value).__name__})"


def exit_text(exitcode: int | None) -> str:
    """How a worker process ended, from its exit code (negative: killed by a signal)."""
    if exitcode is None:
        return "an unknown exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"exit code {exitcode} (killed by {name})"
    return f"exit code {exitcode}"


def unknown_key(key: Any) -> str:
    """The message of retrieve/wait for a key the driver does not hold."""
    return f"unknown key {short_repr(key)}: it was never issued, was already retrieved, or is not a positive int"
