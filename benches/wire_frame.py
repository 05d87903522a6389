"""Pickle against a fixed binary frame for the demo protocol's task and answer (issue 17).

Each side's cost per task, encode plus decode, in one Python process: the host encodes a
task and decodes its answer, a worker decodes the task and encodes the answer. Measured one
task per message (today's wire) and 64 tasks per message (a batch), the best of 5 timings.

The frame, little-endian:

- task: ``key i64, int_feature i64, floats u16, strs u16``, then the floats as ``f64`` each,
  then each string as ``u32`` length and its UTF-8 bytes;
- answer: ``key i64, flag i8, value i64, run_s f64, message u32`` length, then its UTF-8 bytes.

``python3 benches/wire_frame.py``
"""

from __future__ import annotations

import pickle
import struct
import timeit
from collections.abc import Callable
from typing import Any

FLOATS = [1.5, -2.25]
STRS = ["abc", "de", "f"]
PROTOCOL = pickle.HIGHEST_PROTOCOL

TASK_HEAD = struct.Struct("<qqHH")
ANSWER_HEAD = struct.Struct("<qbqdI")
LENGTH = struct.Struct("<I")
_floats_formats: dict[int, struct.Struct] = {}


def floats_format(count: int) -> struct.Struct:
    known = _floats_formats.get(count)
    if known is None:
        known = _floats_formats[count] = struct.Struct(f"<{count}d")
    return known


def encode_task(key: int, floats: list[float], strs: list[str], n: int) -> bytes:
    parts = [TASK_HEAD.pack(key, n, len(floats), len(strs)), floats_format(len(floats)).pack(*floats)]
    for text in strs:
        data = text.encode()
        parts.append(LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def decode_task(frame: bytes, at: int = 0) -> tuple[tuple[int, list[float], list[str], int], int]:
    key, n, float_count, str_count = TASK_HEAD.unpack_from(frame, at)
    at += TASK_HEAD.size
    shape = floats_format(float_count)
    floats = list(shape.unpack_from(frame, at))
    at += shape.size
    strs = []
    for _ in range(str_count):
        (size,) = LENGTH.unpack_from(frame, at)
        at += 4
        strs.append(frame[at : at + size].decode())
        at += size
    return (key, floats, strs, n), at


def shaped_format(float_count: int, str_count: int) -> struct.Struct:
    """The head of a task whose counts the Driver fixes at ``initialize`` (the feature names):
    ``key, int_feature``, the floats, then every string's length, in one unpack."""
    return struct.Struct(f"<qq{float_count}d{str_count}I")


SHAPED = shaped_format(len(FLOATS), len(STRS))


def encode_shaped_task(key: int, floats: list[float], strs: list[str], n: int) -> bytes:
    data = [text.encode() for text in strs]
    return b"".join([SHAPED.pack(key, n, *floats, *map(len, data)), *data])


def decode_shaped_task(frame: bytes, at: int = 0) -> tuple[tuple[int, list[float], list[str], int], int]:
    head = SHAPED.unpack_from(frame, at)
    float_end = 2 + len(FLOATS)
    at += SHAPED.size
    strs = []
    for size in head[float_end:]:
        strs.append(frame[at : at + size].decode())
        at += size
    return (head[0], list(head[2:float_end]), strs, head[1]), at


def encode_answer(key: int, flag: int, value: int, message: str, run_s: float) -> bytes:
    data = message.encode()
    return ANSWER_HEAD.pack(key, flag, value, run_s, len(data)) + data


def decode_answer(frame: bytes, at: int = 0) -> tuple[tuple[int, int, int, str, float], int]:
    key, flag, value, run_s, size = ANSWER_HEAD.unpack_from(frame, at)
    at += ANSWER_HEAD.size
    return (key, flag, value, frame[at : at + size].decode(), run_s), at + size


def best_us(work: Callable[[], Any], per_call_tasks: int) -> float:
    """The best of 5 timings of ``work``, in microseconds per task."""
    loops = max(1, 20000 // per_call_tasks)
    return min(timeit.repeat(work, number=loops, repeat=5)) / loops / per_call_tasks * 1e6


def main() -> None:
    task = (7, FLOATS, STRS, 42)
    answer = (7, 0, 42, "", 1.5e-6)
    pickled_task = pickle.dumps(task, PROTOCOL)
    pickled_answer = pickle.dumps(answer, PROTOCOL)
    framed_task = encode_task(*task)
    framed_answer = encode_answer(*answer)
    assert decode_task(framed_task)[0] == task and decode_answer(framed_answer)[0] == answer
    batch = 64
    # Fresh objects per task, as a host converting each request makes them: pickle's memo
    # would otherwise send a shared list once for the whole batch.
    tasks = [(key, [1.5 + key, -2.25], [f"abc{key}", f"de{key}", f"f{key}"], key) for key in range(batch)]
    answers = [(key, 0, key, str(key)[:0], 1.5e-6 + key) for key in range(batch)]
    pickled_tasks = pickle.dumps(tasks, PROTOCOL)
    pickled_answers = pickle.dumps(answers, PROTOCOL)
    framed_tasks = b"".join(encode_task(*t) for t in tasks)
    shaped_task = encode_shaped_task(*task)
    shaped_tasks = b"".join(encode_shaped_task(*t) for t in tasks)
    assert decode_shaped_task(shaped_task)[0] == task
    framed_answers = b"".join(encode_answer(*a) for a in answers)

    def decode_all(frames: bytes, decode: Callable[[bytes, int], tuple[Any, int]]) -> list[Any]:
        items, at = [], 0
        while at < len(frames):
            item, at = decode(frames, at)
            items.append(item)
        return items

    assert decode_all(shaped_tasks, decode_shaped_task) == tasks
    assert decode_all(framed_tasks, decode_task) == tasks and decode_all(framed_answers, decode_answer) == answers
    loads, dumps = pickle.loads, pickle.dumps
    rows: list[tuple[str, Callable[[], Any] | None, Callable[[], Any], int]] = [
        ("task: host encodes", lambda: dumps(task, PROTOCOL), lambda: encode_task(*task), 1),
        ("task: worker decodes", lambda: loads(pickled_task), lambda: decode_task(framed_task), 1),
        ("task, shaped frame: host encodes", None, lambda: encode_shaped_task(*task), 1),
        ("task, shaped frame: worker decodes", None, lambda: decode_shaped_task(shaped_task), 1),
        ("answer: worker encodes", lambda: dumps(answer, PROTOCOL), lambda: encode_answer(*answer), 1),
        ("answer: host decodes", lambda: loads(pickled_answer), lambda: decode_answer(framed_answer), 1),
        (
            f"batch of {batch} tasks: host encodes",
            lambda: dumps(tasks, PROTOCOL),
            lambda: b"".join([encode_task(*t) for t in tasks]),
            batch,
        ),
        (
            f"batch of {batch} tasks: worker decodes",
            lambda: loads(pickled_tasks),
            lambda: decode_all(framed_tasks, decode_task),
            batch,
        ),
        (
            f"batch of {batch} tasks, shaped: worker decodes",
            None,
            lambda: decode_all(shaped_tasks, decode_shaped_task),
            batch,
        ),
        (
            f"batch of {batch} answers: worker encodes",
            lambda: dumps(answers, PROTOCOL),
            lambda: b"".join([encode_answer(*a) for a in answers]),
            batch,
        ),
        (
            f"batch of {batch} answers: host decodes",
            lambda: loads(pickled_answers),
            lambda: decode_all(framed_answers, decode_answer),
            batch,
        ),
    ]
    print(
        f"bytes per task: pickle {len(pickled_task)}, frame {len(framed_task)}; per answer: pickle "
        f"{len(pickled_answer)}, frame {len(framed_answer)}"
    )
    print(f"{'us per task (best of 5)':<40} {'pickle':>8} {'frame':>8}")
    for name, with_pickle, with_frame, per_call in rows:
        pickled = "-" if with_pickle is None else f"{best_us(with_pickle, per_call):.2f}"
        print(f"{name:<40} {pickled:>8} {best_us(with_frame, per_call):>8.2f}")


if __name__ == "__main__":
    main()
