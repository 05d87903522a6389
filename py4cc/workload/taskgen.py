"""Seeded, reproducible test data for the reference workload.

The Rust side of the workload (the example's and the benchmarks' task lists) reimplements
this module and must produce the identical task list and digest for the same seed, so
every step here is specified exactly and nothing depends on Python-specific randomness:

* :class:`SplitMix64` is the 64-bit generator (one per run, seeded with the seed).
* :func:`make_tasks` draws each task's values in a fixed order (see its docstring).
* :func:`task_digest` is FNV-1a 64 over a fixed byte encoding of the task list.
* The word lists come from ``words.txt`` next to this file (sections ``[first]``,
  ``[last]``, ``[words]``; one UTF-8 entry per line; no blank entries), which the
  Rust side reads too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

MASK64 = (1 << 64) - 1
"""All SplitMix64 arithmetic is modulo 2**64."""

_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3

WORDS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "words.txt")
"""The shared word-list file, found relative to this module."""


class SplitMix64:
    """The SplitMix64 generator (Steele, Lea and Flood), with two derived draws."""

    __slots__ = ("state",)

    def __init__(self, seed: int) -> None:
        self.state = seed & MASK64

    def next_u64(self) -> int:
        """Advance the state and return the next 64-bit output."""
        self.state = (self.state + _GOLDEN_GAMMA) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * _MIX1) & MASK64
        z = ((z ^ (z >> 27)) * _MIX2) & MASK64
        return z ^ (z >> 31)

    def uniform(self) -> float:
        """A float in [0, 1): the top 53 bits of one output, scaled by 2**-53."""
        return (self.next_u64() >> 11) * 2.0**-53

    def below(self, n: int) -> int:
        """An integer in [0, n) (plain modulo; the tiny bias is part of the spec)."""
        if n <= 0:
            raise ValueError(f"below() needs a positive bound, got {n}")
        return self.next_u64() % n


class Task(NamedTuple):
    """One task of the workload: the three arguments of ``Driver.submit``."""

    float_features: list[float]
    str_features: list[str]
    int_feature: int


def load_word_lists(path: str = WORDS_FILE) -> dict[str, list[str]]:
    """Read ``words.txt``: returns ``{"first": [...], "last": [...], "words": [...]}``.

    A line ``[name]`` starts a section; every other non-empty line (stripped of
    surrounding whitespace) is one entry of the current section.
    """
    sections: dict[str, list[str]] = {}
    current = None
    with open(path, encoding="utf-8") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1]
                sections.setdefault(current, [])
            elif current is None:
                raise ValueError(f"{path}:{lineno}: entry before any [section] header")
            else:
                sections[current].append(line)
    for name in ("first", "last", "words"):
        if not sections.get(name):
            raise ValueError(f"{path}: section [{name}] is missing or empty")
    return sections


_WORD_LISTS: dict[str, list[str]] = {}


def word_lists() -> dict[str, list[str]]:
    """The word lists of ``words.txt``, read once and cached."""
    if not _WORD_LISTS:
        _WORD_LISTS.update(load_word_lists())
    return _WORD_LISTS


def make_uuid(rng: SplitMix64) -> str:
    """A version-4-shaped UUID string from two 64-bit draws (``a`` then ``b``)."""
    a = rng.next_u64()
    b = rng.next_u64()
    h = f"{a:016x}{b:016x}"
    variant = "89ab"[int(h[16], 16) & 3]
    return f"{h[0:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:32]}"


def make_task(rng: SplitMix64, lists: dict[str, list[str]]) -> Task:
    """Draw one task; the order of the draws is part of the specification."""
    first, last, words = lists["first"], lists["last"], lists["words"]
    f0 = rng.uniform() * 2000.0 - 1000.0
    f1 = rng.uniform() * 2000.0 - 1000.0
    name = first[rng.below(len(first))] + " " + last[rng.below(len(last))]
    nwords = 4 + rng.below(6)
    picked = []
    for _ in range(nwords):
        picked.append(words[rng.below(len(words))])
    sentence = " ".join(picked) + "."
    uuid = make_uuid(rng)
    int_feature = rng.below(1000)
    return Task([f0, f1], [name, sentence, uuid], int_feature)


def make_tasks(n: int, seed: int) -> list[Task]:
    """The ``n`` tasks of a run, drawn in order from one ``SplitMix64(seed)``.

    Per task, in this order: ``f0`` and ``f1`` (``uniform() * 2000 - 1000``), the first
    name index, the last name index, ``nwords = 4 + below(6)``, ``nwords`` word indices,
    two raw outputs for the UUID, and ``int_feature = below(1000)``.
    """
    rng = SplitMix64(seed)
    lists = word_lists()
    return [make_task(rng, lists) for _ in range(n)]


def task_bytes(task: Task) -> bytes:
    """The byte encoding that the digest hashes for one task.

    Each float as little-endian IEEE-754 double, each string as UTF-8 followed by one
    NUL byte, then the int feature as a little-endian signed 64-bit integer.
    """
    parts = [struct.pack("<d", float(f)) for f in task.float_features]
    for s in task.str_features:
        parts.append(s.encode("utf-8"))
        parts.append(b"\x00")
    parts.append(struct.pack("<q", task.int_feature))
    return b"".join(parts)


def fnv1a64(data: bytes, h: int = FNV_OFFSET) -> int:
    """FNV-1a, 64-bit, continuing from ``h``."""
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & MASK64
    return h


def task_digest(tasks: Iterable[Task]) -> str:
    """FNV-1a 64 over every task's :func:`task_bytes`, in order, as 16 hex digits."""
    h = FNV_OFFSET
    for task in tasks:
        h = fnv1a64(task_bytes(task), h)
    return f"{h:016x}"


def digest_of(float_features: Sequence[float], str_features: Sequence[str], int_feature: int) -> str:
    """The digest of a single task given as its three parts (a convenience)."""
    return task_digest([Task(list(float_features), list(str_features), int_feature)])
