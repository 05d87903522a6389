"""The reference workload in pure Python: ``python3 -m py4cc.workload.harness``.

Threads share the seeded task list (:mod:`py4cc.workload.taskgen`), strided: thread ``t``
runs tasks ``t, t + threads, t + 2 * threads, ...``. Per task, in ``poll`` mode: submit
(at capacity: sleep 1 ms, submit again); sleep 1 ms; retrieve, sleeping 1 ms between
tries while it is not finished. In ``wait`` mode: submit the same
way, then ``Driver.wait(key, timeout)`` until the answer is not "not finished".

Each result is checked against ``big_model`` computed here. The run ends with a short
summary on stderr and one JSON line on stdout with the keys of :data:`JSON_KEYS`; the
exit status is non-zero if any result is wrong or missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..driver import AT_CAPACITY, NOT_FINISHED, OK, Driver
from ..engine import big_model, task_sleep_seconds
from .taskgen import Task, make_tasks, task_digest

JSON_KEYS = (
    "tasks",
    "threads",
    "workers",
    "mode",
    "seconds",
    "tasks_per_s",
    "p50_ms",
    "p99_ms",
    "verified",
    "errors",
    "limit_s",
    "efficiency",
    "digest",
)
"""The keys of the final JSON line, in their order."""

FLOAT_FEATURE_NAMES = ["f0", "f1"]
STR_FEATURE_NAMES = ["name", "sentence", "uuid"]
CONFIG_JSON = '{"model": "big_model"}'

POLL_SLEEP_S = 0.001
"""The poll loop's 1 ms sleep (at capacity, after submit, and between retrieves)."""
WAIT_SLICE_S = 1.0
"""How long one ``Driver.wait`` call blocks in ``wait`` mode before trying again."""
GIVE_UP_S = 600.0
"""A task not answered after this long counts as missing (guards against a hang)."""


class Outcome(NamedTuple):
    """What one task came back with, and how long it took (first submit to result)."""

    flag: int
    value: int
    message: str
    latency_s: float


def resolve_workers(workers: int) -> int:
    """``workers <= 0`` means one per CPU, as in the Driver."""
    return workers if workers > 0 else (os.cpu_count() or 1)


def expected_values(tasks: Sequence[Task]) -> list[int]:
    """The model's answer for every task, computed in this process."""
    return [big_model(t.float_features, t.str_features, t.int_feature) for t in tasks]


def limit_seconds(tasks: Sequence[Task], workers: int) -> float:
    """The theoretical limit: every task's sleep, summed, divided by the workers."""
    total = 0.0
    for value in expected_values(tasks):
        total += task_sleep_seconds(value)
    return total / workers


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: ``sorted_values[ceil(p / 100 * n) - 1]`` (0 if empty)."""
    n = len(sorted_values)
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * n))
    return sorted_values[min(rank, n) - 1]


def submit_until_accepted(driver: Driver, task: Task, deadline: float) -> tuple:
    """Submit, sleeping 1 ms and retrying while the driver is at capacity."""
    while True:
        answer = driver.submit(task.float_features, task.str_features, task.int_feature)
        if answer[0] != AT_CAPACITY or time.monotonic() > deadline:
            return answer
        time.sleep(POLL_SLEEP_S)


def run_one(driver: Driver, task: Task, mode: str) -> Outcome:
    """Run one task the way the chosen mode does; never raises."""
    start = time.perf_counter()
    deadline = time.monotonic() + GIVE_UP_S
    flag, key, message = submit_until_accepted(driver, task, deadline)
    if flag != OK:
        return Outcome(flag, 0, f"submit answered {flag}: {message}", time.perf_counter() - start)
    if mode == "poll":
        time.sleep(POLL_SLEEP_S)
        while True:
            flag, value, message = driver.retrieve(key)
            if flag != NOT_FINISHED or time.monotonic() > deadline:
                break
            time.sleep(POLL_SLEEP_S)
    else:
        while True:
            flag, value, message = driver.wait(key, WAIT_SLICE_S)
            if flag != NOT_FINISHED or time.monotonic() > deadline:
                break
    return Outcome(flag, value, message, time.perf_counter() - start)


def run_workload(driver: Driver, tasks: Sequence[Task], threads: int, mode: str) -> list[Outcome | None]:
    """Run every task on ``threads`` threads (strided split); outcomes in task order."""
    if mode not in ("poll", "wait"):
        raise ValueError(f"mode must be 'poll' or 'wait', got {mode!r}")
    outcomes: list[Outcome | None] = [None] * len(tasks)

    def body(t: int) -> None:
        for i in range(t, len(tasks), threads):
            try:
                outcomes[i] = run_one(driver, tasks[i], mode)
            except Exception as exc:  # keep going; the task counts as an error
                outcomes[i] = Outcome(-1, 0, f"{type(exc).__name__}: {exc}", 0.0)

    pool = [threading.Thread(target=body, args=(t,), name=f"harness-{t}") for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return outcomes


def check_outcomes(outcomes: Sequence[Outcome | None], expected: Sequence[int]) -> list[str]:
    """One line per wrong or missing result (empty when everything is right)."""
    problems = []
    for i, (out, want) in enumerate(zip(outcomes, expected)):
        if out is None:
            problems.append(f"task {i}: no result")
        elif out.flag != OK or out.value != want:
            problems.append(
                f"task {i}: flag {out.flag}, value {out.value}, expected {want}: {out.message.strip()[-300:]}"
            )
    return problems


def summarize(
    tasks: Sequence[Task], threads: int, workers: int, mode: str, seconds: float, outcomes: Sequence[Outcome | None]
) -> dict[str, Any]:
    """The JSON record of a run (keys in :data:`JSON_KEYS` order)."""
    expected = expected_values(tasks)
    problems = check_outcomes(outcomes, expected)
    n = len(tasks)
    latencies = sorted(o.latency_s for o in outcomes if o is not None)
    limit = limit_seconds(tasks, workers)
    return {
        "tasks": n,
        "threads": threads,
        "workers": workers,
        "mode": mode,
        "seconds": round(seconds, 4),
        "tasks_per_s": round(n / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000.0, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000.0, 3),
        "verified": n - len(problems),
        "errors": len(problems),
        "limit_s": round(limit, 4),
        "efficiency": round(limit / seconds, 4) if seconds > 0 else 0.0,
        "digest": task_digest(tasks),
    }


def run(
    tasks_n: int = 1000,
    threads: int = 16,
    workers: int = 0,
    seed: int = 42,
    start_method: str = "forkserver",
    mode: str = "poll",
    stream: Any = None,
    backend: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Build the tasks, start a Driver, run the workload, return the JSON record.

    A human summary (and the first few problems, if any) goes to ``stream``
    (default ``sys.stderr``). ``backend`` and ``ray_address`` are the Driver's.
    """
    stream = sys.stderr if stream is None else stream
    n_workers = resolve_workers(workers)
    tasks = make_tasks(tasks_n, seed)
    options: dict[str, Any] = {} if backend == "local" else {"backend": backend, "ray_address": ray_address}
    with Driver(n_subprocesses=n_workers, start_method=start_method, **options) as driver:
        driver.initialize(CONFIG_JSON, FLOAT_FEATURE_NAMES, STR_FEATURE_NAMES)
        n_workers = driver.n_subprocesses
        started = time.perf_counter()
        outcomes = run_workload(driver, tasks, threads, mode)
        seconds = time.perf_counter() - started
    record = summarize(tasks, threads, n_workers, mode, seconds, outcomes)
    problems = check_outcomes(outcomes, expected_values(tasks))
    print(
        f"py4cc harness: {record['tasks']} tasks, {threads} threads, {n_workers} workers "
        f"({start_method if backend == 'local' else backend}), mode {mode}: {record['seconds']:.3f} s, "
        f"{record['tasks_per_s']:.1f} tasks/s, p50 {record['p50_ms']:.2f} ms, "
        f"p99 {record['p99_ms']:.2f} ms, limit {record['limit_s']:.3f} s "
        f"(efficiency {record['efficiency']:.2f}), {record['verified']} verified, "
        f"{record['errors']} errors",
        file=stream,
    )
    for line in problems[:10]:
        print("  " + line, file=stream)
    return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m py4cc.workload.harness",
        description="The reference multi-threaded workload against py4cc.Driver.",
    )
    parser.add_argument("--tasks", type=int, default=1000, help="number of tasks (1000)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (16)")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = one per CPU)")
    parser.add_argument("--seed", type=int, default=42, help="task generator seed (42)")
    parser.add_argument(
        "--start-method",
        default="forkserver",
        choices=["fork", "forkserver", "spawn"],
        help="multiprocessing start method",
    )
    parser.add_argument(
        "--mode",
        default="poll",
        choices=["poll", "wait"],
        help="poll: submit, then retrieve every 1 ms; wait: Driver.wait",
    )
    parser.add_argument(
        "--backend",
        default="local",
        choices=["local", "ray"],
        help="local: worker processes; ray: Engine actors on a Ray cluster",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="with --backend ray: the cluster's address (host:port); none: a local Ray instance",
    )
    args = parser.parse_args(argv)
    if args.ray_address is not None and args.backend != "ray":
        parser.error("--ray-address needs --backend ray")
    if args.tasks < 0:
        parser.error("--tasks must be >= 0")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    record = run(
        args.tasks,
        args.threads,
        args.workers,
        args.seed,
        args.start_method,
        args.mode,
        backend=args.backend,
        ray_address=args.ray_address,
    )
    print(json.dumps(record), flush=True)
    return 0 if record["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
