"""The Python anchors of ``cargo bench --bench roundtrip``: the same no-op task's round trip
through py4cc's Driver from Python threads, ``multiprocessing.Pool.apply_async`` (a per-worker
initializer), ``concurrent.futures.ProcessPoolExecutor``, and the floor: the same tuple to
one child over a ``multiprocessing.Pipe`` and back; with ``--only ray --ray-address ADDRESS``,
plain Ray actor calls from Python threads (``ray.get(actor.run.remote(...))``, the same Engine
as ``--workers`` actors of one CPU each, a thread's task n going to actor n mod workers): the
anchor of the Rust Driver's Ray rows.

Puts this directory (the engine) and the repository's root (py4cc) on ``sys.path``; prints
one line per measurement: ``row<TAB>name<TAB>threads<TAB>tasks<TAB>tasks/s<TAB>p50 us<TAB>p99 us<TAB>host
ticks<TAB>workers' ticks``, the last two the CPU time (utime + stime, in clock ticks) that this
process and its descendants (the worker processes) spent during the timed part.

``--tasks`` takes one count or several (``3000,20000``): each row is measured once per count,
one after the other on the same pool, so that ``cargo bench --bench roundtrip`` can take the
marginal CPU per task as the difference between two counts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the engine, and py4cc from this source tree

import roundtrip_engine  # noqa: E402 (found through the path just set)

FLOATS = [1.5, -2.25]
STRS = ["abc", "de", "f"]


def process_ticks(pid: int | str) -> tuple[int, int]:
    """``(utime + stime, parent pid)`` of a process, from ``/proc/<pid>/stat``; the name (field
    2) may hold spaces and parentheses, so the fields are read after its last ``)``."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[1])


def cpu_ticks() -> tuple[int, int]:
    """CPU ticks so far of this process and of its live descendants (the workers, children of
    a forkserver that is itself our child, so not in our ``cutime``): each read while alive."""
    own, _ = process_ticks("self")
    ticks_and_parent: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ticks_and_parent[int(entry)] = process_ticks(entry)
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    children: dict[int, list[int]] = {}
    for pid, (_, parent) in ticks_and_parent.items():
        children.setdefault(parent, []).append(pid)
    descendants, pending = 0, list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        descendants += ticks_and_parent[pid][0]
        pending.extend(children.get(pid, []))
    return own, descendants


TASK_COUNTS: list[int] = [4000]


def measure(name: str, threads: int, _tasks: int, one: Callable[[int], int], warm_up: int = 200) -> None:
    """Measures once per count of ``TASK_COUNTS``, on the same pool."""
    for n in range(1, warm_up + 1):
        assert one(n) == n
    for tasks in TASK_COUNTS:
        measure_once(name, threads, tasks, one)


def measure_once(name: str, threads: int, tasks: int, one: Callable[[int], int]) -> None:
    """Runs ``tasks`` round trips, ``threads`` threads each doing its share in a loop; each
    ``one(n)`` must answer n."""
    per_thread = tasks // threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)

    def client(index: int) -> None:
        mine = latencies[index]
        start_line.wait()
        for i in range(per_thread):
            n = index * per_thread + i + 1
            began = time.perf_counter()
            answer = one(n)
            mine.append(time.perf_counter() - began)
            if answer != n:
                raise AssertionError(f"{name}: task {n} answered {answer}")

    clients = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    host_before, workers_before = cpu_ticks()
    for thread in clients:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    for thread in clients:
        thread.join()
    elapsed = time.perf_counter() - began
    host_after, workers_after = cpu_ticks()
    every = sorted(x for mine in latencies for x in mine)
    if len(every) != per_thread * threads:
        raise AssertionError(f"{name}: a client thread failed")
    p50 = every[len(every) // 2] * 1e6
    p99 = every[min(len(every) - 1, (len(every) * 99) // 100)] * 1e6
    print(
        f"row\t{name}\t{threads}\t{len(every)}\t{len(every) / elapsed:.1f}\t{p50:.1f}\t{p99:.1f}"
        f"\t{host_after - host_before}\t{workers_after - workers_before}",
        flush=True,
    )


def py4cc_driver(threads: list[int], tasks: int, workers: int) -> None:
    from py4cc.driver import Driver

    driver = Driver(
        n_subprocesses=workers, engine="roundtrip_engine:NoopEngine", start_method="forkserver", max_tasks=1024
    )
    driver.initialize("{}", ["f0", "f1"], ["a", "b", "c"])

    def one(n: int) -> int:
        flag, key, message = driver.submit(FLOATS, STRS, n)
        if flag != 0:
            raise AssertionError(message)
        flag, value, message = driver.wait(key, None)
        if flag != 0:
            raise AssertionError(message)
        return value

    try:
        for count in threads:
            measure("py4cc Driver, Python threads", count, tasks, one)
    finally:
        driver.finalize()


def mp_pool(threads: list[int], tasks: int, workers: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=roundtrip_engine.init_worker) as pool:

        def one(n: int) -> int:
            return pool.apply_async(roundtrip_engine.run_task, (FLOATS, STRS, n)).get()[0]

        for count in threads:
            measure("multiprocessing.Pool.apply_async", count, tasks, one)


def process_pool(threads: list[int], tasks: int, workers: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=roundtrip_engine.init_worker
    ) as executor:

        def one(n: int) -> int:
            return executor.submit(roundtrip_engine.run_task, FLOATS, STRS, n).result()[0]

        for count in threads:
            measure("ProcessPoolExecutor", count, tasks, one)


def pipe_child(conn) -> None:
    roundtrip_engine.init_worker()
    while True:
        message = conn.recv()
        if message is None:
            return
        _key, floats, strs, n = message
        conn.send(roundtrip_engine.run_task(floats, strs, n))


def pipe_floor(tasks: int) -> None:
    ctx = multiprocessing.get_context("forkserver")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=pipe_child, args=(child,))
    process.start()
    child.close()

    def one(n: int) -> int:
        parent.send((n, FLOATS, STRS, n))
        return parent.recv()[0]

    try:
        measure("Pipe round trip, one child", 1, tasks, one)
    finally:
        parent.send(None)
        process.join(10)


def ray_actors(threads: list[int], tasks: int, workers: int, address: str) -> None:
    import ray

    # This directory as the actors' working directory (uploaded, and on their sys.path):
    # they import the engine from it.
    ray.init(address=address, runtime_env={"working_dir": HERE}, logging_level="WARNING")
    try:
        actor_class = ray.remote(num_cpus=1)(roundtrip_engine.NoopEngine)
        actors = [actor_class.remote() for _ in range(workers)]
        names = {"config": {}, "float_feature_names": ["f0", "f1"], "str_feature_names": ["a", "b", "c"]}
        ray.get([actor.initialize.remote(**names) for actor in actors])

        def one(n: int) -> int:
            return ray.get(actors[n % workers].run.remote(FLOATS, STRS, n))[0]

        for count in threads:
            measure("plain Ray actor calls, Python threads", count, tasks, one)
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", default="1,16")
    parser.add_argument("--tasks", default="4000", help="a count, or several: 3000,20000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="py4cc,pool,executor,pipe", help="and ray, with --ray-address")
    parser.add_argument("--ray-address", help="a Ray cluster's address, for the ray row")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    TASK_COUNTS[:] = [int(count) for count in args.tasks.split(",")]
    args.tasks = max(TASK_COUNTS)
    only = args.only.split(",")
    if "py4cc" in only:
        py4cc_driver(threads, args.tasks, args.workers)
    if "pool" in only:
        mp_pool(threads, args.tasks, args.workers)
    if "executor" in only:
        process_pool(threads, args.tasks, args.workers)
    if "pipe" in only:
        pipe_floor(args.tasks)
    if "ray" in only:
        if not args.ray_address:
            parser.error("the ray row wants --ray-address")
        ray_actors(threads, args.tasks, args.workers, args.ray_address)


if __name__ == "__main__":
    main()
