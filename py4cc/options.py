"""A Driver's options, checked once by ``initialize`` into one frozen :class:`Options`."""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import numbers
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .protocol import (
    DEFAULT_CALL_METHOD,
    DEFAULT_ENGINE,
    MAX_WORKERS,
    PRELOAD_CHOICES,
    DeliverCallback,
    NotifyCallback,
    PipeReader,
    describe,
    short_repr,
)
from .worker import WorkerSetup


class Batching(NamedTuple):
    """Dynamic batching (``Driver(batching=...)``): when a worker is free it takes up to
    ``max_size`` queued tasks, in queue order, as one batch; with fewer queued it waits for
    more until the oldest has waited ``max_wait`` seconds (never when the batch is full)."""

    max_size: int
    """The most tasks in one batch, >= 1."""
    max_wait: float
    """Seconds the oldest queued task may wait for a batch to fill, finite and >= 0."""


@dataclass(frozen=True)
class Options:
    """Everything a pool is started with, each value checked and resolved."""

    start_method: str
    """A ``multiprocessing`` start method this platform has."""
    n_subprocesses: int
    """The number of worker processes, 1 to MAX_WORKERS (``<= 0`` was resolved to one per CPU)."""
    max_tasks: int
    """The most tasks held at once (queued, running, or finished and not retrieved), >= 1."""
    task_timeout: float | None
    """Seconds a task may run (None: no limit), positive and finite."""
    init_timeout: float | None
    """Seconds a worker may take to become ready (None: no limit), positive and finite."""
    prefetch: int
    """How many tasks may wait behind a busy worker's current one, >= 0."""
    setup: WorkerSetup
    """What each worker builds its Engine from (and its environment)."""
    preload: str | None = None
    """None, ``"module"`` or ``"engine"``: what the parent loads before workers start
    (:mod:`py4cc.local.forkserver`); never set with ``spawn``."""
    notify: NotifyCallback | None = None
    """Called as ``notify(key, finished)`` when a task finishes or is dropped (see
    :mod:`py4cc.core.completion`); None: nobody is told."""
    deliver: DeliverCallback | None = None
    """The host's ``deliver(answers)``, which takes finished tasks off the book (see
    :mod:`py4cc.core.completion`); None: answers stay in the book until retrieved."""
    host_held: Callable[[], int] | None = None
    """With ``deliver``: how many delivered answers the host still holds (they count
    against ``max_tasks``)."""
    result_ttl: float | None = None
    """Seconds a finished result is kept for retrieval (None: until retrieved), positive."""
    worker_output: Callable[[int, str, str], None] | None = None
    """Where the workers' output lines and events go (None: the host's stderr)."""
    wait_readable: Callable[..., list[tuple[int, int]]] | None = None
    """What the dispatcher waits on the workers' pipes with (None: ``select.poll``)."""
    pipe_reader: PipeReader | None = None
    """With ``wait_readable``: the host reads the workers' pipes itself (see ``Driver``)."""
    backend: str = "local"
    """What runs the Engines: ``"local"`` (worker processes) or ``"ray"`` (actors on a Ray cluster)."""
    ray_address: str | None = None
    """The Ray cluster to connect to (``"host:port"`` or ``"auto"``); None: start a local
    Ray instance for this process. Only for the ``"ray"`` backend."""
    batching: Batching | None = None
    """Dynamic batching (None: tasks go one by one, as ``prefetch`` says)."""


def build_options(
    *,
    config_json: Any,
    float_feature_names: Any,
    str_feature_names: Any,
    extra: dict[str, Any],
    start_method: Any,
    max_tasks: Any,
    n_subprocesses: Any,
    task_timeout: Any,
    init_timeout: Any,
    prefetch: Any,
    engine: Any,
    call_method: Any = DEFAULT_CALL_METHOD,
    preload: Any = None,
    notify: Any = None,
    deliver: Any = None,
    host_held: Any = None,
    result_ttl: Any = None,
    worker_env: Any = None,
    worker_output: Any = None,
    wait_readable: Any = None,
    pipe_reader: Any = None,
    backend: Any = "local",
    ray_address: Any = None,
    batching: Any = None,
) -> Options:
    """Check every option (in this order) and resolve ``n_subprocesses`` (for the Ray
    backend, ``<= 0`` stays 0: the backend counts the cluster's CPUs once connected).

    Raises ValueError (bad JSON, start method, engine name or option, environment
    variable), TypeError (config not text, feature names not lists of str, worker_env not
    a mapping or pairs of str, worker_output not callable) or ImportError (engine module
    not found).
    """
    config = parse_config(config_json)
    float_names = check_names("float_feature_names", float_feature_names)
    str_names = check_names("str_feature_names", str_feature_names)
    method = check_start_method(start_method)
    tasks = check_int_at_least("max_tasks", max_tasks, 1)
    backend = check_backend(backend)
    workers = check_workers(n_subprocesses, backend)
    run_limit = check_timeout("task_timeout", task_timeout)
    start_limit = check_timeout("init_timeout", init_timeout)
    ahead = check_int_at_least("prefetch", prefetch, 0)
    engine = check_engine(engine)
    method_name = check_call_method(call_method)
    preloaded = check_preload(preload, method)
    if notify is not None and not callable(notify):
        raise ValueError(f"notify must be None or a callable notify(key, finished), got {describe(notify)}")
    if (deliver is None) != (host_held is None) or not all(f is None or callable(f) for f in (deliver, host_held)):
        raise ValueError(
            f"deliver and host_held go together, both callables or both None, got {describe(deliver)} "
            f"and {describe(host_held)}"
        )
    keep_for = check_timeout("result_ttl", result_ttl)
    env = check_env(worker_env)
    if worker_output is not None and not callable(worker_output):
        raise TypeError(f"worker_output must be None or a callable (pid, stream, line), got {describe(worker_output)}")
    if wait_readable is not None and not callable(wait_readable):
        raise TypeError(f"wait_readable must be None or a callable (fds, timeout_ms), got {describe(wait_readable)}")
    if pipe_reader is not None and (
        wait_readable is None
        or deliver is None
        or not all(callable(getattr(pipe_reader, name, None)) for name in ("take", "drain", "answered", "write"))
    ):
        raise TypeError(
            f"pipe_reader must be None or have take(fd), drain(fd), answered() and write(fd, data), and come with "
            f"wait_readable, deliver and host_held; got {describe(pipe_reader)}"
        )
    address = check_ray_address(ray_address, backend)
    batches = check_batching(batching)
    if preloaded is not None and backend == "ray":
        raise ValueError(
            f"preload={preloaded!r} is for the local pool's worker processes; with backend='ray' "
            f"each actor imports the Engine's module and builds its Engine"
        )
    return Options(
        start_method=method,
        n_subprocesses=workers,
        max_tasks=tasks,
        task_timeout=run_limit,
        init_timeout=start_limit,
        prefetch=ahead,
        setup=WorkerSetup(engine, config, float_names, str_names, dict(extra), env, call_method=method_name),
        preload=preloaded,
        notify=notify,
        deliver=deliver,
        host_held=host_held,
        result_ttl=keep_for,
        worker_output=worker_output,
        wait_readable=wait_readable,
        pipe_reader=pipe_reader,
        backend=backend,
        ray_address=address,
        batching=batches,
    )


def is_real(value: Any) -> bool:
    """A real number that is not a bool."""
    kind = type(value)
    if kind is float or kind is int:  # the usual case, without the ABC's isinstance
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An integral number that is not a bool."""
    if type(value) is int:  # the usual case, without the ABC's isinstance
        return True
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_config(config_json: Any) -> Any:
    if not isinstance(config_json, (str, bytes, bytearray)):
        raise TypeError(f"config_json must be a JSON text (str), got {describe(config_json)}")
    try:
        return json.loads(config_json)
    except ValueError as exc:
        raise ValueError(f"config_json is not valid JSON: {exc}") from None


def check_names(what: str, names: Any) -> list[str]:
    if not isinstance(names, (list, tuple)):
        raise TypeError(f"{what} must be a list of str, got {describe(names)}")
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(f"{what}[{i}] must be a str, got {describe(name)}")
    return [str(n) for n in names]


def check_start_method(method: Any) -> str:
    valid = multiprocessing.get_all_start_methods()
    if not isinstance(method, str) or method not in valid:
        raise ValueError(f"start_method must be one of {', '.join(map(repr, valid))}; got {method!r}")
    return method


def check_int_at_least(name: str, value: Any, minimum: int) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {short_repr(value)}")
    return int(value)


def check_workers(value: Any, backend: str = "local") -> int:
    if not is_int(value):
        raise ValueError(f"n_subprocesses must be an int (<= 0 means one per CPU), got {value!r}")
    count = int(value)
    if count > MAX_WORKERS:
        # A typo (or usize::MAX from Rust) would otherwise fork until the system refuses.
        raise ValueError(f"n_subprocesses must be at most {MAX_WORKERS}, got {short_repr(count)}")
    if count <= 0:
        count = 0 if backend == "ray" else (os.cpu_count() or 1)
    return count


def check_timeout(name: str, value: Any) -> float | None:
    if value is None:
        return None
    problem = ValueError(f"{name} must be None or a positive, finite number of seconds, got {short_repr(value)}")
    if not is_real(value):
        raise problem
    try:
        seconds = float(value)
    except (OverflowError, ValueError, TypeError):  # e.g. an int beyond float's range
        raise problem from None
    if not (seconds > 0) or math.isinf(seconds):
        raise problem
    return seconds


def check_batching(value: Any) -> Batching | None:
    """None, or a :class:`Batching` (or a 2-sequence ``(max_size, max_wait)``) checked:
    ``max_size`` an int >= 1, ``max_wait`` a finite number of seconds >= 0 (bools refused)."""
    if value is None:
        return None
    shape = "batching must be None, py4cc.options.Batching(max_size, max_wait) or a (max_size, max_wait) pair"
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{shape}, got {describe(value)}")
    max_size, max_wait = value
    if not is_int(max_size) or max_size < 1:
        raise ValueError(f"batching: max_size must be an int >= 1, got {describe(max_size)}")
    problem = ValueError(f"batching: max_wait must be a finite number of seconds >= 0, got {describe(max_wait)}")
    if not is_real(max_wait):
        raise problem
    try:
        seconds = float(max_wait)
    except (OverflowError, ValueError, TypeError):
        raise problem from None
    if not (seconds >= 0) or math.isinf(seconds):
        raise problem
    return Batching(int(max_size), seconds)


BACKENDS = ("local", "ray")
"""The values of the ``backend`` option."""


def check_backend(backend: Any) -> str:
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {short_repr(backend)}")
    return backend


def check_ray_address(address: Any, backend: str) -> str | None:
    """None, or a non-empty address without surrounding blanks; only with the Ray backend."""
    if address is None:
        return None
    if not isinstance(address, str) or not address.strip() or address != address.strip():
        raise ValueError(
            f"ray_address must be None or a cluster address such as '10.0.0.5:6379', got {describe(address)}"
        )
    if backend != "ray":
        raise ValueError(f"ray_address ({address!r}) is only used with backend='ray'; the backend is {backend!r}")
    return address


def check_engine(engine: Any) -> str:
    if not isinstance(engine, str):
        raise ValueError(f"engine must be a 'module:Class' string, got {describe(engine)}")
    module_name, sep, class_name = engine.partition(":")
    parts_ok = all(p.isidentifier() for p in module_name.split(".")) and all(
        p.isidentifier() for p in class_name.split(".")
    )
    if not sep or ":" in class_name or not parts_ok:
        raise ValueError(f"engine must be named 'module:Class' (e.g. {DEFAULT_ENGINE!r}), got {engine!r}")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise ImportError(f"engine module {module_name!r} cannot be imported: {exc}") from exc
    if spec is None:
        searched = "".join(f"\n  {os.path.abspath(entry or os.curdir)}" for entry in sys.path)
        raise ImportError(
            f"engine module {module_name!r} was not found on sys.path; searched, in order:{searched}\n"
            "Put its directory in DriverOptions::python_path (from Rust; a relative entry is resolved "
            "against the working directory), or on sys.path before making the Driver (from Python)"
        )
    return engine


def check_call_method(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"call_method must be the name of the engine's method (an identifier), got {short_repr(name)}")
    return name


def check_preload(preload: Any, start_method: str) -> str | None:
    if preload not in PRELOAD_CHOICES:
        choices = ", ".join(map(repr, PRELOAD_CHOICES))
        raise ValueError(f"preload must be one of {choices}; got {short_repr(preload)}")
    if preload is not None and start_method == "spawn":
        raise ValueError(
            f"preload={preload!r} needs start_method 'fork' or 'forkserver': a spawned worker "
            f"starts a fresh interpreter and inherits nothing from this process"
        )
    return preload


def check_env(env: Any) -> tuple[tuple[str, str], ...]:
    """``worker_env`` (None, a mapping or pairs of str) as a tuple of pairs, each name
    non-empty without "=" or NUL, each value without NUL (what ``putenv`` can take)."""
    if env is None:
        return ()
    pairs = list(env.items()) if isinstance(env, dict) else env
    if not isinstance(pairs, (list, tuple)):
        raise TypeError(f"worker_env must be a dict or a list of (name, value) pairs of str, got {describe(env)}")
    checked: list[tuple[str, str]] = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise TypeError(f"worker_env[{i}] must be a (name, value) pair of str, got {describe(pair)}")
        name, value = pair
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"worker_env: {name!r} is not an environment variable name (empty, or holds '=' or NUL)")
        if "\0" in value:
            raise ValueError(f"worker_env: the value of {name!r} holds a NUL character")
        checked.append((str(name), str(value)))
    return tuple(checked)
