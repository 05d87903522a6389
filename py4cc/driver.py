"""The py4cc pool driver: runs an Engine in a pool of worker processes.

Protocol (every call may come from any thread, concurrently)::

    d = Driver(max_tasks=64, n_subprocesses=0, start_method="forkserver",
               engine="py4cc.engine:Engine", task_timeout=None, init_timeout=None)
    d.initialize(config_json, float_feature_names, str_feature_names, **extra)

    d.submit(float_features, str_features, int_feature) -> (flag, key, message)
        0  accepted; come back with ``key`` (a positive int, unique among held tasks)
        1  at capacity (``max_tasks`` tasks held, finished-not-retrieved ones included):
           "Model engine is working at capacity. Try again later."; key 0
        9  error (not initialised, finalized, wrong number of features, wrong type...);
           the message names the cause; key 0

    d.submit_call(args, kwargs) -> (flag, key, message)
        a general task: the Engine's ``call_method`` (``run`` by default) is called as
        ``engine.run(*args, **kwargs)``; any picklable arguments; same flags, keys and
        capacity as submit (flag 9 also for arguments that cannot be pickled)

    d.retrieve(key) -> (flag, value, message)
        0  done; ``value > 0`` is the model's answer; the task is removed
           (a general task: ``value`` is whatever the method returned, 0 and None included)
        1  "The requested task is not finished"; value 0; the task is kept
        2  the model failed or answered ``value <= 0``, its worker died, or the task
           timed out; ``message`` holds the traceback or the cause; the task is removed
           (a general task: its method raised, or its answer could not be pickled; value None)
        9  error (unknown key: never issued, already retrieved, ``<= 0``, not an int);
           value 0; nothing changes

    d.wait(key, timeout) -> (flag, value, message)
        blocks up to ``timeout`` seconds until the task is finished, then answers
        exactly as ``retrieve`` does (flag 1 if it is still not finished)

    d.cancel(key) -> bool
        drops a held task: a queued one never runs, a running one's answer is
        discarded, a finished one is removed; True if the driver held it. Retrieving
        it then answers flag 9, saying it was cancelled

    d.finalize()
        stops the pool; safe to call twice; afterwards submit answers flag 9
        ("... finalized ...")

    d.drain(timeout) -> int
        submit answers flag 9 ("... draining ...") from now on; the held tasks may
        finish for up to ``timeout`` seconds (None: no limit); then finalize. Answers
        how many tasks were still unfinished, and so answer flag 2

    d.stats() -> dict
        the counters of :mod:`py4cc.core.stats` (tasks held, queued, running, finished;
        workers; deaths; cancels and expiries; the Engine's run-time percentiles), one
        lock, cheap

A finished result not retrieved within ``result_ttl`` seconds (60 by default; None keeps
it until retrieved) is dropped, freeing its place among ``max_tasks``; retrieving it
then answers flag 9, saying it expired.

Only ``initialize`` ever raises (and ``drain``, for a timeout that is not a number);
every other failure comes back as a flag and a message, even a KeyboardInterrupt (or any
other exception) raised while the call runs: flag 9, and the message names it.

Every line a worker process writes to its stdout or stderr (fds 1 and 2, so C-level
writes too) reaches ``worker_output(pid, stream, line)`` in this process, or by default
this process's stderr as ``[py4cc worker <pid> <stream>] <line>``; so does each event the
pool notices (stream "event": a worker's death, a task timeout, a replacement). See
:mod:`py4cc.local.output`. ``worker_env`` (a dict, or (name, value) pairs) is set in every
worker process before its Engine's module is imported, whatever the start method.

The flags, fixed messages and the names another language's binding relies on are in
:mod:`py4cc.protocol`.

How a task travels (the local pool's trip in detail: :mod:`py4cc.local.pool`)::

    caller's threads       this process                           a worker process
    ----------------       ------------                           ----------------
    submit(f, s, n) -.     Calls: checked, and made one kind of task:
    submit_call(a, k) +--> Call(key, method, pickled (args, kwargs), demo)
                           TaskBook.admit: a Task in tasks[key], at the end of pending
                                |  dispatch (pick_runner): to an idle worker, or
                                v  behind a busy one's current task
                           Call ================ pipe / Ray =====>  run_call:
                                                                   engine.<method>(...)
                           dispatcher thread <===== pipe / Ray ==  Answer(key, flag,
                           (or Ray's callbacks)                      value, message)
                                |  complete(task): its answer is held,
                                v  its waiters are woken
    retrieve(key) <------- tasks[key] is done: the answer; the task is removed
    wait(key, t)  <------- the same, once the task's Event is set (or t runs out)

``initialize`` starts N worker processes (``multiprocessing`` context of
``start_method``), each with its own duplex pipe; each builds the Engine and reports
ready. Because the pool knows which tasks each worker holds, a worker that dies or
overruns ``task_timeout`` fails exactly its running task (flag 2), the tasks queued behind
it go back to the queue, and a replacement worker is started. A replacement that cannot
be started or initialised (or, with ``init_timeout``, is not ready in time) is retried
after a backoff, for as long as the Driver lives (:mod:`~py4cc.core.slots`); while no worker
is ready, queued tasks fail (flag 2) and ``submit`` answers flag 9 with the last cause.
Every worker dies with the process that runs the Driver (:mod:`~py4cc.lifeline`).

The Driver itself is this module (its options and lifecycle), :mod:`~py4cc.calls` (the
calls that never raise) and :mod:`~py4cc.validate` (their argument checks); it runs its
tasks through a backend, a :class:`~py4cc.core.tasks.TaskBook`: the local pool
(:mod:`~py4cc.local.pool`) or the Ray backend (:mod:`~py4cc.ray.backend`). The package's
docstring (:mod:`py4cc`) lists every module; ``docs/architecture.md`` the layers.

With ``start_method="fork"`` replacement workers are forked from a process that runs
threads (the dispatcher, the caller's); Python 3.12+ warns about that
(DeprecationWarning), and it is as safe as ``fork`` is in a threaded program: prefer
``forkserver`` (the default) or ``spawn``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any, Callable

from .calls import Calls
from .core.tasks import TaskBook
from .local.pool import Pool
from .options import Batching, Options, build_options
from .protocol import (
    AT_CAPACITY,
    CAPACITY_MESSAGE,
    DEFAULT_ENGINE,
    DEFAULT_RESULT_TTL,
    ERROR,
    FAILED,
    MAX_WORKERS,
    NOT_FINISHED,
    NOT_FINISHED_MESSAGE,
    OK,
    DeliverCallback,
    NotifyCallback,
    PipeReader,
)
from .validate import drain_limit

__all__ = [
    "AT_CAPACITY",
    "CAPACITY_MESSAGE",
    "ERROR",
    "FAILED",
    "MAX_WORKERS",
    "NOT_FINISHED",
    "NOT_FINISHED_MESSAGE",
    "OK",
    "Driver",
]


def make_backend(options: Options) -> TaskBook:
    """What runs the tasks: the local pool, or (imported only then) the Ray backend."""
    if options.backend == "ray":
        from .ray.backend import RayBackend

        return RayBackend(options)
    return Pool(options)


class Driver(Calls):
    """Runs an Engine (``"module:Class"``) in a pool of worker processes.

    ``submit``, ``retrieve``, ``wait`` and ``finalize`` follow the flag protocol of the
    module docstring: ``retrieve`` and ``wait`` answer flag 2 with ``value`` the model's own
    value if it answered one, else -1; ``wait(key, None)`` (or +inf) waits until the task
    finishes or the driver is finalized, ``timeout <= 0`` (or NaN) does not block. After
    ``finalize``, unfinished tasks answer flag 2 ("the driver was finalized before this task
    finished"), finished ones keep their answers (each retrieved once), ``submit`` answers
    flag 9 ("... finalized ...").

    ``worker_pids()`` lists the pids of the current worker processes (for tests and
    monitoring); ``held_tasks()`` counts the tasks held; ``n_subprocesses`` is the number
    of worker processes (as given until ``initialize`` resolves it). Every method is
    thread-safe; an internal lock is held only briefly and never while ``wait`` blocks. A
    task whose worker process dies, or which runs past ``task_timeout`` seconds (measured
    from when a worker starts it; its worker is then killed), answers flag 2 with a message
    saying so, and a replacement worker is started.

    ``init_timeout`` (seconds, None = no limit) bounds how long a worker process may take
    from its start until its Engine is initialised and it reports ready. ``initialize``
    then raises RuntimeError ("... did not become ready within N s (init_timeout) ...")
    after stopping every worker it started, instead of hanging. A replacement worker not
    ready in time is killed and counts as a failed start: it is retried like one that
    crashed while starting, after a backoff (0.1 s doubling up to 30 s), for ever; while
    no worker is ready, queued tasks answer flag 2 and ``submit`` flag 9, both saying
    why. Without it a hanging ``Engine.initialize`` blocks
    ``initialize`` (and a ``finalize`` from another thread) for ever, and a replacement
    that hangs keeps its slot, not ready, for ever.

    The Driver is a context manager; it is also finalized when garbage collected or at
    interpreter exit, so no worker process is left behind.
    """

    def __init__(
        self,
        max_tasks: int = 64,
        n_subprocesses: int = 0,
        start_method: str = "forkserver",
        engine: str = DEFAULT_ENGINE,
        task_timeout: float | None = None,
        init_timeout: float | None = None,
        *,
        prefetch: int = 1,
        call_method: str = "run",
        preload: str | None = None,
        notify: NotifyCallback | None = None,
        deliver: DeliverCallback | None = None,
        host_held: Callable[[], int] | None = None,
        result_ttl: float | None = DEFAULT_RESULT_TTL,
        worker_env: Any = None,
        worker_output: Callable[[int, str, str], None] | None = None,
        wait_readable: Callable[..., list[tuple[int, int]]] | None = None,
        pipe_reader: PipeReader | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        batching: Batching | Sequence[float] | None = None,
    ) -> None:
        """Store the options; nothing is checked or started until ``initialize``.

        ``prefetch`` (keyword only, >= 0): how many tasks may wait in a busy worker's
        pipe behind the one it runs, so that it starts the next one without a round trip
        through the parent. 1 (the default) removes that gap from the throughput; 0
        hands a task only to an idle worker (best when tasks are long and uneven:
        a prefetched task cannot move to another worker that frees up sooner). On the Ray
        backend, whose round trip is longer, any ``prefetch`` > 0 lets an actor hold at
        least 4 calls behind the one it runs (``py4cc.ray.backend.CALLS_AHEAD``). With
        ``prefetch`` > 0, tasks short enough that more of them would all run within 2 ms
        (``py4cc.core.scheduling.SHORT_QUEUE_S``, at the typical run time) queue deeper: for
        them the host's round trip per task is the cost.

        ``call_method`` (keyword only): the Engine's method that general tasks
        (``submit_call``) call; checked when each worker builds its Engine.

        ``preload`` (keyword only): None, ``"module"`` (import the Engine's module in this
        process before forking workers) or ``"engine"`` (also build and initialise one
        Engine here, which ``fork`` workers inherit instead of building their own); see
        :mod:`py4cc.local.forkserver` for what it does with ``forkserver`` and its caveats. Refused
        with ``spawn``.

        ``notify`` (keyword only): a callable ``notify(key, finished)``, called with the
        pool's lock held (so it must be quick and must not call the driver) whenever a task
        becomes finished (``True``) or a held task is dropped unretrieved (``False``: its
        result expired, or it was cancelled); see :mod:`py4cc.core.completion`. What it raises
        is counted and ignored.

        ``deliver`` and ``host_held`` (keyword only, both or neither): a host that keeps the
        answers itself (rs4py does) is handed every finished task's answer, in batches, as
        ``deliver([(key, flag, value, message), ...])``, called with the pool's lock held;
        the task then leaves this driver's book (``retrieve`` and ``wait`` no longer know
        it), and ``host_held()`` says how many of those answers the host still holds, which
        count against ``max_tasks`` and in ``held_tasks`` and ``stats``. ``value`` is a
        demo task's int (within the i64 range), None, or bytes: a pickled value (a general
        task's answer, or a demo value outside that range). See :mod:`py4cc.core.completion`.

        ``result_ttl`` (keyword only, seconds or None): how long a finished result is kept
        for retrieval; None keeps it until retrieved.

        ``worker_env`` (keyword only): environment variables set in every worker process
        before its Engine's module is imported, e.g. ``{"OMP_NUM_THREADS": "1"}`` so that
        N workers do not each start a BLAS thread per core. ``worker_output`` (keyword
        only): ``f(pid, stream, line)``, called on the pool's output thread for each line a
        worker writes (stream "stdout" or "stderr") and each event (stream "event"); if
        it raises, the line goes to stderr and the failure is told once.

        ``wait_readable`` (keyword only): what the dispatcher thread waits on the workers'
        pipes with, ``wait_readable(fds, timeout_ms) -> [(fd, revents)]`` as
        ``select.poll().poll`` answers (None: ``select.poll``); while bytes wait to go to
        a worker whose pipe is full it is called ``wait_readable(fds, timeout_ms,
        write_fds)`` and must poll ``write_fds`` for output (POLLOUT) too. A host that embeds Python
        passes its own to learn when the dispatcher is about to take the GIL back, and let
        it go first (rs4py does).

        ``pipe_reader`` (keyword only, with ``wait_readable``, ``deliver`` and
        ``host_held``): a host that reads the workers' pipes itself. The dispatcher then
        calls ``wait_readable(fds, timeout_ms, write_fds, pipes, eager, hold_wakes)``, which reads the
        ``pipes`` (the workers') with the GIL released, hands each answer to the host's
        table itself, and reports a pipe only when something else came (``Ready``, the
        pipe's end): ``pipe_reader.take(fd)`` gives those messages, ``pipe_reader.drain(fd)``
        reads an exited worker's pipe to its end, and ``pipe_reader.answered()`` lists the
        answers read since the last call, ``[(fd, key, flag, run_s)]``, for the pool to take
        off its book; ``pipe_reader.write(fd, data)`` is ``os.write`` without letting the GIL
        go (the pipes are non-blocking). With ``eager`` false it returns only when something other than answers
        happens (no task waits for a worker, so nothing is to be done on an answer). With
        ``hold_wakes`` true (batching) it wakes the waiters of the answers it reads at its
        next call, once the pool has sent the workers their next batches (the dispatcher
        calls ``wait_readable([], 0)`` once more as it ends, even after a crash).

        ``backend`` (keyword only): ``"local"`` runs the Engines in worker processes of
        this machine; ``"ray"`` runs each as an actor on a Ray cluster
        (:mod:`py4cc.ray.backend`): ``ray_address`` is the cluster's address
        (``"host:port"``), or None to start a local Ray instance for this process;
        ``n_subprocesses`` is then the number of actors (``<= 0``: one per CPU of the
        cluster). The calls and their answers are the same with either.

        ``batching`` (keyword only): None (tasks go one at a time), or
        :class:`~py4cc.options.Batching` ``(max_size, max_wait)`` (or such a pair): when a
        worker (or actor) is free it takes up to ``max_size`` queued tasks, in queue order,
        as one batch, waiting for more until the oldest queued task has waited ``max_wait``
        seconds (not at all once the batch is full); the Engine's ``run_batch(calls)``
        answers them at once (else its ``run`` is called once per task, in the worker).
        Each task keeps its key, answer, cancel and capacity; ``task_timeout`` bounds a
        batch's whole run (a batch is one model call), and a worker lost during a batch
        fails that batch's tasks. ``prefetch`` does not apply while batching.
        """
        self.max_tasks = max_tasks
        self.n_subprocesses = n_subprocesses
        """The number of worker processes: as given (``<= 0``: one per CPU) until
        ``initialize`` resolves it to the number it starts."""
        self.start_method = start_method
        self.engine = engine
        self.task_timeout = task_timeout
        self.init_timeout = init_timeout
        self.prefetch = prefetch
        self.call_method = call_method
        self.preload = preload
        self.notify = notify
        self.deliver = deliver
        self.host_held = host_held
        self.result_ttl = result_ttl
        self.worker_env = worker_env
        self.worker_output = worker_output
        self.wait_readable = wait_readable
        self.pipe_reader = pipe_reader
        self.backend = backend
        self.ray_address = ray_address
        self.batching = batching
        self.float_feature_names: list[str] = []
        self.str_feature_names: list[str] = []
        self.config: Any = None
        self._pool: TaskBook | None = None
        self._state_lock = threading.Lock()
        self._finalized = False
        self._finalizer: weakref.finalize | None = None

    # -- lifecycle ------------------------------------------------------------------

    def initialize(
        self,
        config_json: Any,
        float_feature_names: Sequence[str],
        str_feature_names: Sequence[str],
        **extra: Any,
    ) -> Driver:
        """Parse the JSON config, start the workers, and wait until all are ready.

        Each worker builds ``Class()`` from ``engine`` and calls ``initialize(config=
        <parsed config>, float_feature_names=[...], str_feature_names=[...], **extra)``.
        Returns ``self``. Raises ValueError (bad JSON, start method, engine name or
        option), TypeError (feature names not lists of str), ImportError (engine module
        not found), RuntimeError (called twice or after finalize; a worker failed to
        start or to initialise its Engine: the message carries its traceback; a worker
        was not ready within ``init_timeout`` seconds). When it raises, every worker
        process it started has been stopped.
        """
        with self._state_lock:
            if self._finalized:
                raise RuntimeError("Driver.initialize: the driver is finalized; create a new Driver")
            if self._pool is not None:
                raise RuntimeError("Driver.initialize: the driver is already initialized")
            options = build_options(
                config_json=config_json,
                float_feature_names=float_feature_names,
                str_feature_names=str_feature_names,
                extra=extra,
                start_method=self.start_method,
                max_tasks=self.max_tasks,
                n_subprocesses=self.n_subprocesses,
                task_timeout=self.task_timeout,
                init_timeout=self.init_timeout,
                prefetch=self.prefetch,
                engine=self.engine,
                call_method=self.call_method,
                preload=self.preload,
                notify=self.notify,
                deliver=self.deliver,
                host_held=self.host_held,
                result_ttl=self.result_ttl,
                worker_env=self.worker_env,
                worker_output=self.worker_output,
                wait_readable=self.wait_readable,
                pipe_reader=self.pipe_reader,
                backend=self.backend,
                ray_address=self.ray_address,
                batching=self.batching,
            )
            pool = make_backend(options)
            pool.start()
            options = pool.options  # as started: n_subprocesses resolved
            self.config = options.setup.config
            self.float_feature_names = options.setup.float_feature_names
            self.str_feature_names = options.setup.str_feature_names
            self.n_subprocesses = options.n_subprocesses
            self._pool = pool
            self._finalizer = weakref.finalize(self, pool.stop_when_collected)
            self._finalizer.atexit = False  # the pool's own exit hook covers that case
            return self

    def finalize(self) -> None:
        """Stop the dispatcher and every worker (terminate, join, kill stragglers).

        Safe to call twice and from any thread; never raises. Unfinished tasks answer
        flag 2; finished ones keep their answers until retrieved. Later submits answer
        flag 9 with a message containing "finalized". Interrupted (a KeyboardInterrupt
        while it joins a process, say), it takes up the stop once more where it was cut
        off; the exit hook finishes what a second interruption leaves.
        """
        try:
            with self._state_lock:
                self._finalized = True
                pool = self._pool
            if pool is not None:
                pool.stop()
        except BaseException:
            self._finalized = True
            try:
                if self._pool is not None:
                    self._pool.stop()
            except BaseException:
                pass

    def drain(self, timeout: float | None = None) -> int:
        """Stop accepting tasks, let the held ones finish, then finalize.

        From now on ``submit`` answers flag 9 with ``DRAINING_MESSAGE`` ("... draining
        ..."), then the finalized message. Queued and running tasks may finish for up to
        ``timeout`` seconds (None or +inf: no limit; ``<= 0``: none); ``retrieve`` and
        ``wait`` work as usual meanwhile, and finished tasks keep their answers after. Then
        the driver is finalized: the tasks still unfinished answer flag 2, and their number
        is returned (0 if it was not initialized or already finalized).

        Raises TypeError, before anything changes, if ``timeout`` is not a number or None;
        a NaN counts as 0. Interrupted (KeyboardInterrupt), it still finalizes, then lets
        the interruption through.
        """
        limit = drain_limit(timeout)
        with self._state_lock:
            pool = self._pool
            if pool is None:
                self._finalized = True
                return 0
        try:
            return pool.drain(limit)
        finally:
            self.finalize()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finalize()

    def __repr__(self) -> str:
        state = "finalized" if self._finalized else ("running" if self._pool else "new")
        return (
            f"Driver(max_tasks={self.max_tasks!r}, n_subprocesses={self.n_subprocesses!r}, "
            f"start_method={self.start_method!r}, engine={self.engine!r}, "
            f"task_timeout={self.task_timeout!r}, init_timeout={self.init_timeout!r}) "
            f"<{state}>"
        )
