//! The safe Driver: `py4cc.driver.Driver` (a pool of worker processes running an Engine)
//! behind a typed, `Send + Sync` Rust face whose task calls never fail with `Err`.

mod access;
mod combine;
mod completion;
mod future;
mod general;
mod options;
mod output;
mod package;
mod pipes;
mod protocol;
mod stats;
#[cfg(test)]
mod table_tests;
mod turn;

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::convert::{IntoArgs, IntoKwargs, ToPython};
use crate::error::{Error, Result, without_py4cc_frames};
use crate::gil::Gil;
use crate::interpreter::{self, StartOptions};
use crate::object::{Handle, Object};

use access::{Access, INITIALIZING_MESSAGE};
use combine::Combiner;
use completion::{Answer, AnswerValue, Completions, Gone, Lookup, Standing};
pub use future::TaskFuture;
pub use general::{Key, TaskKey};
pub use options::{Backend, Batching, DriverOptions, Preload, StartMethod};
pub use output::{WorkerLine, WorkerOutput, WorkerStream};
use pipes::PipeReader;
use protocol::{COMPLETION_MODULE, DRIVER_CLASS, DRIVER_MODULE, N_SUBPROCESSES, NOT_FINISHED_MESSAGE, method, option};
pub use protocol::{ResultStatus, SubmitStatus};
pub use stats::{DriverState, DriverStats};
use turn::DispatcherTurn;

/// How long a task call waits for the Driver's mutex before it looks again whether
/// `initialize` has begun meanwhile (and then answers that it runs, rather than wait for it).
const LOOK_AGAIN: Duration = Duration::from_millis(5);

/// The answer to [`Driver::submit`] (whose key is an `i64`) and [`Driver::submit_call`]
/// (whose key is a [`Key<T>`]): a status, the task's key (0 unless accepted) and a message
/// (empty when accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReceipt<K = i64> {
    /// What became of the task.
    pub status: SubmitStatus,
    /// The key to retrieve the result with; 0 unless accepted.
    pub key: K,
    /// Why, when not accepted.
    pub message: String,
}

/// The answer to [`Driver::retrieve`] and [`Driver::wait`]: `TaskResult<i64>` for a
/// demo-protocol task, `TaskResult<T>` for a general task whose key is a [`Key<T>`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult<T = i64> {
    /// Where the task stands.
    pub status: ResultStatus,
    /// The key asked about (its number).
    pub key: i64,
    /// The model's answer when `Done`; `T::default()` otherwise (a demo task that failed:
    /// the model's own value, if it answered one).
    pub value: T,
    /// The traceback or cause when `Failed`, the reason when `Error`.
    pub message: String,
}

/// The Python driver object and its bound methods, looked up once.
struct PythonDriver {
    driver: Handle,
    submit_many: Handle,
    submit_call: Handle,
    retrieve: Handle,
    cancel: Handle,
    stats: Handle,
    drain: Handle,
    /// `pickle.loads`, for general tasks' answers.
    loads: Handle,
    /// py4cc's `cancelled_message(key)` and `expired_message(key, ttl)`, for keys the
    /// completion table dropped.
    cancelled_message: Handle,
    expired_message: Handle,
}

/// Runs an Engine in a pool of Python worker processes; shared by many threads.
///
/// `submit`, `retrieve`, `wait`, `wait_async` and `cancel` never panic and never return
/// `Err`: every failure, in Python or in Rust, comes back as a status and a message. A mutex
/// serialises the calls into Python. The pool hands finished tasks' answers to the driver
/// directly (a C function it calls once per batch of answers), so `wait` and
/// [`wait_async`](Self::wait_async) hold neither the mutex nor the GIL while they wait, and
/// `retrieve`, `wait` and `wait_async` read a demo task's answer (or a failure) without taking
/// either; a general task's answer is unpickled and converted with the GIL (not the mutex). A
/// thread that holds a [`Gil`] may call in too: the driver lets the GIL go while it waits.
///
/// Every accepted task is held (and counts against `max_tasks`) until its answer is collected
/// by `retrieve`, `wait` or `wait_async`, it is [`cancel`](Self::cancel)led, or, once finished,
/// [`DriverOptions::result_ttl`] runs out: a caller that gives up on a task should cancel it.
///
/// Keys belong to the Driver that issued them: each Driver of a process issues keys from its
/// own range, and a key it did not issue (another Driver's, a made-up number) answers `Error`
/// "unknown key" and changes nothing. A Driver belongs to the process that made it: in a
/// child made by `fork()`, every call answers at once with `Error` (or `Err`, `false`, 0)
/// saying "this Driver belongs to process N", without touching Python, the workers or their
/// pipes, and dropping it there leaves the parent's workers alone. While one thread runs
/// [`initialize`](Self::initialize), the task calls of others answer `Error` at once, saying
/// the Driver is initializing.
///
/// ```
/// use rs4py::{Driver, DriverOptions, ResultStatus, SubmitStatus};
/// use std::time::Duration;
///
/// let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() })?;
/// driver.initialize("{}", &["a", "b"], &["name"])?;
/// let receipt = driver.submit(&[1.5, -2.5], &["Zoë"], 7);
/// assert_eq!(receipt.status, SubmitStatus::Accepted);
/// let result = driver.wait(receipt.key, Duration::from_secs(10));
/// assert_eq!((result.status, result.value), (ResultStatus::Done, 4 + 3 + 7));
/// let wrong = driver.submit(&[1.0], &["x"], 0);
/// assert_eq!(wrong.status, SubmitStatus::Error);
/// driver.finalize();
/// # Ok::<(), rs4py::Error>(())
/// ```
pub struct Driver {
    calls: Mutex<()>,
    /// Dropped only in the process that made it (see `Drop`).
    python: ManuallyDrop<PythonDriver>,
    finalized: AtomicBool,
    completions: Arc<Completions>,
    turn: Arc<DispatcherTurn>,
    access: Access,
    result_ttl: Option<Duration>,
    /// Demo tasks on their way into py4cc, handed over in batches (see `combine.rs`).
    submissions: Combiner<DemoTask, Result<(i64, i64, String)>>,
    /// Answers py4cc counted done that did not convert to the caller's type, so failed.
    unconvertible: AtomicU64,
}

impl Driver {
    /// Starts the interpreter if needed (with rs4py's own `py4cc` first on `sys.path`, and
    /// `options.python_path` after the standard library: see [`DriverOptions::python_path`])
    /// and builds the Python driver. Nothing runs until [`initialize`](Self::initialize).
    pub fn new(options: DriverOptions) -> Result<Driver> {
        let package_dir = package::package_parent_dir()?.to_path_buf();
        interpreter::start(&StartOptions { python_path: vec![package_dir] })?;
        let gil = Gil::acquire()?;
        interpreter::insert_sys_path_after_stdlib(&gil, &options.python_path)?;
        let completions = Arc::new(Completions::new(options.result_ttl));
        let host = completions.functions(gil.token())?;
        let reader = Arc::new(PipeReader::new(Arc::clone(&completions)));
        let pipe_reader = reader.functions(gil.token())?;
        let turn = Arc::new(DispatcherTurn::new(reader));
        let wait_readable = turn.function(gil.token())?;
        let class = gil.import(DRIVER_MODULE)?.getattr(DRIVER_CLASS)?;
        let worker_output = options.worker_output.as_ref().map(|output| output.sink(gil.token())).transpose()?;
        let driver = class.call(
            (),
            [
                (option::MAX_TASKS, &options.max_tasks as &dyn crate::ToPython),
                (option::N_SUBPROCESSES, &options.n_subprocesses),
                (option::START_METHOD, &options.start_method.as_str()),
                (option::ENGINE, &options.engine),
                (option::TASK_TIMEOUT, &options.task_timeout.map(|timeout| timeout.as_secs_f64())),
                (option::INIT_TIMEOUT, &options.init_timeout.map(|timeout| timeout.as_secs_f64())),
                (option::NOTIFY, &host.notify),
                (option::DELIVER, &host.deliver),
                (option::HOST_HELD, &host.held),
                (option::WAIT_READABLE, &wait_readable),
                (option::PIPE_READER, &pipe_reader),
                (option::RESULT_TTL, &options.result_ttl.map(|ttl| ttl.as_secs_f64())),
                (option::WORKER_ENV, &options.worker_env),
                (option::WORKER_OUTPUT, &worker_output),
                (option::CALL_METHOD, &options.call_method),
                (option::PRELOAD, &options.preload.as_python()),
                (option::BACKEND, &options.backend.name()),
                (option::RAY_ADDRESS, &options.backend.ray_address()),
                (
                    option::BATCHING,
                    &options.batching.map(|batching| (batching.max_size, batching.max_wait.as_secs_f64())),
                ),
            ],
        )?;
        let bound = |name| driver.getattr(name).map(Object::unbind);
        let python = PythonDriver {
            submit_many: bound(method::SUBMIT_MANY)?,
            submit_call: bound(method::SUBMIT_CALL)?,
            retrieve: bound(method::RETRIEVE)?,
            cancel: bound(method::CANCEL)?,
            stats: bound(method::STATS)?,
            drain: bound(method::DRAIN)?,
            driver: driver.clone().unbind(),
            loads: gil.import("pickle")?.getattr("loads")?.unbind(),
            cancelled_message: gil.import(COMPLETION_MODULE)?.getattr("cancelled_message")?.unbind(),
            expired_message: gil.import(COMPLETION_MODULE)?.getattr("expired_message")?.unbind(),
        };
        Ok(Driver {
            result_ttl: options.result_ttl,
            submissions: Combiner::default(),
            calls: Mutex::new(()),
            python: ManuallyDrop::new(python),
            finalized: AtomicBool::new(false),
            completions,
            turn,
            access: Access::new(),
            unconvertible: AtomicU64::new(0),
        })
    }

    /// Parses the JSON config and starts the workers, each building the Engine from it and
    /// the feature names; returns when all are ready. Fails with the Python exception (bad
    /// JSON, unknown Engine, a worker whose Engine failed to initialise, called twice, ...),
    /// or with [`Error::Unavailable`] in a forked child or while another thread initializes.
    /// Meanwhile the task calls of other threads answer `Error` at once ("initializing").
    pub fn initialize(
        &self,
        config_json: &str,
        float_feature_names: &[impl AsRef<str>],
        str_feature_names: &[impl AsRef<str>],
    ) -> Result<()> {
        self.initialize_with(config_json, float_feature_names, str_feature_names, ())
    }

    /// [`initialize`](Self::initialize), with keyword arguments that reach every worker's
    /// `Engine.initialize(config, float_feature_names, str_feature_names, **extra)` as
    /// `extra`: any convertible values, such as a model's path or a byte string. With `spawn`
    /// or `forkserver` they are pickled to each worker.
    ///
    /// ```
    /// use rs4py::{Driver, DriverOptions, ToPython};
    ///
    /// let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() })?;
    /// let extra = [("model_path", &"/srv/model.joblib" as &dyn ToPython), ("threshold", &0.5)];
    /// driver.initialize_with("{}", &["a"], &[] as &[&str], extra)?;
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn initialize_with(
        &self,
        config_json: &str,
        float_feature_names: &[impl AsRef<str>],
        str_feature_names: &[impl AsRef<str>],
        extra: impl IntoKwargs,
    ) -> Result<()> {
        let float_names: Vec<&str> = float_feature_names.iter().map(AsRef::as_ref).collect();
        let str_names: Vec<&str> = str_feature_names.iter().map(AsRef::as_ref).collect();
        self.access.check_process().map_err(Error::Unavailable)?;
        let initializing = self.access.begin_initialize().map_err(Error::Unavailable)?;
        let _serial = self.lock_calls();
        let gil = Gil::acquire()?;
        let driver = self.python.driver.bind(&gil);
        driver.call_method(method::INITIALIZE, (config_json, float_names, str_names), extra)?;
        initializing.succeeded();
        Ok(())
    }

    /// Submits one task. Never fails: a refusal is a status and a message.
    ///
    /// An accepted task holds one of [`DriverOptions::max_tasks`] slots until one of these:
    /// its answer is retrieved ([`retrieve`](Self::retrieve), [`wait`](Self::wait) or
    /// [`wait_async`](Self::wait_async) answering `Done` or `Failed`); it is cancelled
    /// ([`cancel`](Self::cancel), or its `wait_async` future dropped unanswered); or, once
    /// finished, nobody retrieves it within [`DriverOptions::result_ttl`] (it expires). So a
    /// key that is abandoned (a request that timed out, a handler that panicked) frees its
    /// slot at the latest `result_ttl` after its task finishes; with `result_ttl: None` it
    /// keeps it until retrieved. When the driver holds `max_tasks` tasks, `submit` answers
    /// `AtCapacity`.
    ///
    /// Submissions from many threads at once are combined: one of the callers hands every
    /// task queued meanwhile to py4cc in one call (one GIL acquisition), and each caller gets
    /// its own answer, exactly as if the tasks had been submitted one after the other.
    pub fn submit(&self, float_features: &[f64], str_features: &[impl AsRef<str>], int_feature: i64) -> TaskReceipt {
        let answer = self.access.check_task_call().map_err(Error::Unavailable).and_then(|()| {
            let task = DemoTask {
                float_features: float_features.to_vec(),
                str_features: str_features.iter().map(|text| text.as_ref().to_owned()).collect(),
                int_feature,
            };
            self.submissions.submit(task, |batch| self.submit_batch(batch))
        });
        self.receipt(answer, method::SUBMIT)
    }

    /// py4cc's answers to a batch of demo tasks, one each, in order (the combiner's call).
    fn submit_batch(&self, batch: Vec<DemoTask>) -> Vec<Result<(i64, i64, String)>> {
        let count = batch.len();
        let answers = self.lock_for_task().and_then(|_serial| {
            let gil = Gil::acquire()?;
            let token = gil.token();
            let tasks = Object::new_list(
                token,
                batch.iter().map(|task| {
                    (task.float_features.as_slice(), task.str_features.as_slice(), task.int_feature).to_python(token)
                }),
            )?;
            let answers: Vec<(i64, i64, String)> = self.python.submit_many.bind(&gil).call((tasks,), ())?.extract()?;
            if answers.len() != count {
                return Err(Error::Conversion(format!("py4cc answered {} of {count} tasks", answers.len())));
            }
            Ok(answers)
        });
        match answers {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(error) => {
                // Every task of the batch gets the failure, worded as `receipt` words it.
                let message = match error {
                    Error::Unavailable(message) => message,
                    error => format!("{} failed: {error}", method::SUBMIT),
                };
                (0..count).map(|_| Err(Error::Unavailable(message.clone()))).collect()
            }
        }
    }

    /// Submits one general task: the Engine's `call_method` (`run` by default) is called as
    /// `engine.run(*args, **kwargs)` in a worker, and its answer, whatever it is, is read as
    /// a `T` by [`retrieve`](Self::retrieve) or [`wait`](Self::wait) with the receipt's
    /// [`Key<T>`]. Success is "no exception": 0, negative numbers and `None` are answers
    /// like any other; an exception is `Failed` with its traceback, and so is an answer that
    /// does not convert to `T` (the message names its Python type and `T`). Capacity,
    /// timeouts and keys are shared with [`submit`](Self::submit). Never fails: a refusal
    /// (at capacity, arguments that do not convert, ...) is a status and a message.
    ///
    /// ```
    /// use rs4py::{Driver, DriverOptions, ResultStatus, ToPython};
    /// use std::time::Duration;
    ///
    /// // The demo Engine's run takes keywords, so a general task can call it too; its
    /// // answer is then the (value, message) pair it returns, read here as a tuple.
    /// let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() })?;
    /// driver.initialize("{}", &["a"], &["b"])?;
    /// let kwargs = [("float_features", &[-2.5] as &dyn ToPython), ("str_features", &["xy"]), ("int_feature", &0)];
    /// let receipt = driver.submit_call::<(i64, String)>((), kwargs);
    /// let result = driver.wait(receipt.key, Duration::from_secs(10));
    /// assert_eq!((result.status, result.value), (ResultStatus::Done, (2 + 2, String::new())));
    ///
    /// let wrong = driver.submit_call::<f64>((), kwargs);
    /// let result = driver.wait(wrong.key, Duration::from_secs(10));
    /// assert_eq!(result.status, ResultStatus::Failed);
    /// assert!(result.message.contains("is a Python tuple, which does not convert to the Rust type f64"));
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn submit_call<T>(&self, args: impl IntoArgs, kwargs: impl IntoKwargs) -> TaskReceipt<Key<T>> {
        let answer = self.access.check_task_call().map_err(Error::Unavailable).and_then(|()| {
            let gil = Gil::acquire()?;
            // Converted before the mutex is taken: a large argument holds up no other caller.
            let token = gil.token();
            let args = args.into_objects(token)?;
            let args = Object::new_tuple(token, args.as_ref().iter().map(|arg| Ok(arg.clone())))?;
            let kwargs = kwargs.into_kwargs(token)?.unwrap_or_else(|| token.none());
            let _serial = self.lock_for_task()?; // lets the GIL go while it waits
            self.python.submit_call.bind(&gil).call((args, kwargs), ())?.extract()
        });
        let TaskReceipt { status, key, message } = self.receipt(answer, method::SUBMIT_CALL);
        TaskReceipt { status, key: Key::new(key), message }
    }

    /// The receipt for py4cc's `(flag, key, message)` answer to a submit (or the failure to
    /// get one), with the key in this Driver's range.
    fn receipt(&self, answer: Result<(i64, i64, String)>, call: &str) -> TaskReceipt {
        let refused = |message| TaskReceipt { status: SubmitStatus::Error, key: 0, message };
        let (code, key, message) = match answer {
            Ok(answer) => answer,
            Err(Error::Unavailable(message)) => return refused(message),
            Err(error) => return refused(format!("{call} failed: {error}")),
        };
        match SubmitStatus::from_code(code) {
            Some(SubmitStatus::Accepted) => {
                self.completions.accepted(key);
                TaskReceipt { status: SubmitStatus::Accepted, key, message }
            }
            Some(status) => TaskReceipt { status, key: 0, message },
            None => refused(unknown_flag(code, &message)),
        }
    }

    /// Asks for a task's result without waiting. Never fails: see [`ResultStatus`]. A task
    /// still running answers `NotReady` at once, and a finished demo task its answer, without
    /// the GIL or the driver's mutex (a general task's answer takes the GIL to convert). An
    /// `i64` key reads a demo task's answer, a [`Key<T>`] a general task's, as a `T`.
    pub fn retrieve<K: TaskKey>(&self, key: K) -> TaskResult<K::Answer> {
        self.collect(key, method::RETRIEVE)
    }

    /// Waits up to `timeout` for the task to finish, then answers as [`retrieve`](Self::retrieve)
    /// (`NotReady` if it still is not). Holds neither the driver's mutex nor the GIL while it
    /// waits: the task's completion wakes it.
    pub fn wait<K: TaskKey>(&self, key: K, timeout: Duration) -> TaskResult<K::Answer> {
        let Some(raw) = self.table_key(key.raw()) else {
            return self.collect(key, method::WAIT); // which says why not
        };
        let deadline = Instant::now().checked_add(timeout);
        let standing = if Gil::is_held() {
            // The pool needs the GIL to finish the task this thread waits for.
            Gil::acquire_started().release_during(|| self.completions.wait(raw, deadline))
        } else {
            self.completions.wait(raw, deadline)
        };
        match standing {
            Standing::Running => not_ready(key.raw()),
            Standing::Settled => self.collect(key, method::WAIT),
        }
    }

    /// Waits for the task's answer without blocking: a future that any executor can poll
    /// (it uses nothing but std's `Waker`), woken by the task's completion itself. While it is
    /// pending it holds neither the GIL nor the driver's mutex; once the task has finished,
    /// the poll that answers reads it from the driver's table without either (a general
    /// task's answer takes the GIL, to be unpickled and converted, and so may block its
    /// executor thread for as long as another thread holds the GIL).
    ///
    /// Dropping the future before it answers [`cancel`](Self::cancel)s the task (which takes
    /// the mutex and the GIL in `drop` if the task has not finished), so that a request that
    /// times out frees its place.
    /// One waiter per key: the first to collect the answer removes it.
    ///
    /// ```
    /// use rs4py::{Driver, DriverOptions, ResultStatus};
    /// # use std::future::Future;
    /// # fn block_on<F: Future>(future: F) -> F::Output {
    /// #     struct Unpark(std::thread::Thread);
    /// #     impl std::task::Wake for Unpark { fn wake(self: std::sync::Arc<Self>) { self.0.unpark() } }
    /// #     let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    /// #     let mut future = std::pin::pin!(future);
    /// #     loop {
    /// #         if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut std::task::Context::from_waker(&waker)) {
    /// #             return out;
    /// #         }
    /// #         std::thread::park();
    /// #     }
    /// # }
    /// let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() })?;
    /// driver.initialize("{}", &["a", "b"], &["name"])?;
    /// let receipt = driver.submit(&[1.5, -2.5], &["Zoë"], 7);
    /// let result = block_on(driver.wait_async(receipt.key)); // `.await` in async code
    /// assert_eq!((result.status, result.value), (ResultStatus::Done, 4 + 3 + 7));
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn wait_async<K: TaskKey>(&self, key: K) -> TaskFuture<'_, K> {
        TaskFuture::new(self, key)
    }

    /// Drops the task under `key`, whatever its state, and answers whether the driver held
    /// it: a queued task never runs; a running one is left to finish on its worker (not
    /// interrupted: that would cost a new worker process; `task_timeout` still bounds it) and
    /// its answer is discarded; a finished one is removed. Its place among `max_tasks` is free
    /// at once. Retrieving the key afterwards answers `Error`, saying it was cancelled. Never
    /// fails: a failure to call Python answers `false`.
    /// A key this Driver did not issue, a call in a forked child or during `initialize`
    /// answer `false` and change nothing.
    pub fn cancel(&self, key: impl TaskKey) -> bool {
        match self.table_key(key.raw()) {
            // A finished task's answer is in the table alone: no Python to ask.
            Some(raw) => self.completions.cancel_answered(raw) || self.cancel_python(raw),
            None => false,
        }
    }

    /// Cancels py4cc's task `raw`; whether it was held (by py4cc, or by the table if
    /// its answer came meanwhile).
    fn cancel_python(&self, raw: i64) -> bool {
        let found = self
            .lock_for_task()
            .and_then(|_serial| self.call_python(&self.python.cancel, (raw,), |answer| answer.extract::<bool>()));
        match found {
            // This also wakes anyone else waiting on the key, so that they learn it was
            // cancelled.
            Ok(found) => self.completions.cancelled(raw, found),
            Err(_) => false,
        }
    }

    /// `key` for the completion table, if this Driver may be used here and now (py4cc issues
    /// the keys, each Driver from its own range, and answers a key it did not issue).
    fn table_key(&self, key: i64) -> Option<i64> {
        self.access.check_task_call().ok()?;
        Some(key)
    }

    /// How many tasks the driver holds: queued, running, or finished and not retrieved yet.
    pub fn held_tasks(&self) -> Result<usize> {
        self.access.check_process().map_err(Error::Unavailable)?;
        let gil = Gil::acquire()?;
        self.python.driver.bind(&gil).call_method(method::HELD_TASKS, (), ())?.extract()
    }

    /// How many keys the completion table tracks (tasks held, as the Rust side sees them):
    /// for tests, which check that it agrees with [`held_tasks`](Self::held_tasks).
    #[cfg(test)]
    pub(crate) fn tracked_tasks(&self) -> usize {
        self.completions.len()
    }

    /// Collects the task's answer: from the completion table (without the GIL for a demo
    /// task's; a general task's is unpickled and converted with it), or, for a key the table
    /// does not know, py4cc's answer (unknown key, or cancelled there).
    fn collect<K: TaskKey>(&self, key: K, call: &str) -> TaskResult<K::Answer> {
        let key = key.raw();
        if let Err(refusal) = self.access.check_task_call() {
            return error_result(key, refusal);
        }
        let answer = match self.completions.take(key) {
            Lookup::Running => return not_ready(key),
            Lookup::Answered(answer) => self.read_delivered::<K>(answer),
            Lookup::Gone(why) => self
                .gone_message(key, why)
                .map(|message| (ResultStatus::Error.code(), Ok(K::Answer::default()), message)),
            Lookup::Unknown => {
                let asked = self
                    .lock_for_task()
                    .and_then(|_serial| self.call_python(&self.python.retrieve, (key,), read_result::<K>));
                // py4cc hands an answer over before it says a key is unknown: look again.
                match self.completions.take(key) {
                    Lookup::Answered(answer) => self.read_delivered::<K>(answer),
                    _ => asked,
                }
            }
        };
        if let Ok((code, Err(_), _)) = &answer {
            if ResultStatus::from_code(*code) == Some(ResultStatus::Done) {
                // py4cc counted it done; its caller gets Failed (see `stats`).
                self.unconvertible.fetch_add(1, Ordering::SeqCst);
            }
        }
        task_result(key, answer, call)
    }

    /// A delivered answer read as the key's type: at once if it is plain data of that type,
    /// else with the GIL (unpickled, then converted).
    fn read_delivered<K: TaskKey>(&self, answer: Answer) -> Result<ReadResult<K::Answer>> {
        let Answer { flag, value, message } = answer;
        if let Some(plain) = K::read_plain(flag, &value) {
            return Ok((flag, Ok(plain), message));
        }
        let gil = Gil::acquire()?;
        let token = gil.token();
        let object = match value {
            AnswerValue::Int(number) => crate::ToPython::to_python(&number, token)?,
            AnswerValue::Nothing => token.none(),
            AnswerValue::Pickled(bytes) => match self.python.loads.bind(&gil).call((crate::Bytes(bytes),), ()) {
                Ok(object) => object,
                Err(error) => {
                    // As py4cc words it when it unpickles an answer itself.
                    let reason = format!("the engine's answer could not be unpickled by the driver:\n{error}");
                    return Ok((flag, Err(reason), message));
                }
            },
        };
        Ok((flag, K::read_answer(flag, &object), message))
    }

    /// py4cc's message for a key the completion table dropped.
    fn gone_message(&self, key: i64, why: Gone) -> Result<String> {
        let gil = Gil::acquire()?;
        let message = match why {
            Gone::Cancelled => self.python.cancelled_message.bind(&gil).call((key,), ())?,
            Gone::Expired => {
                let ttl = self.result_ttl.map(|ttl| ttl.as_secs_f64());
                self.python.expired_message.bind(&gil).call((key, ttl), ())?
            }
        };
        message.extract()
    }

    /// Stops the workers (terminated and joined; no process is left behind). Tasks not
    /// finished answer `Failed`; later submits answer `Error` ("finalized"). Safe to call
    /// any number of times; `Drop` calls it too.
    pub fn finalize(&self) {
        if self.access.check_process().is_err() {
            return; // a forked child: the workers are the parent's
        }
        // The mutex first: a second caller waits for the first to finish stopping the
        // workers, instead of returning while they still run.
        let _serial = self.lock_calls();
        if self.finalized.swap(true, Ordering::SeqCst) {
            return;
        }
        self.completions.stop_expiring();
        if let Ok(gil) = Gil::acquire() {
            // py4cc's finalize never raises; were it to, there is nothing left to undo.
            let _ = self.python.driver.bind(&gil).call_method(method::FINALIZE, (), ());
        }
        self.turn.wake_deferred(); // its dispatcher has stopped
    }

    /// Stops accepting tasks, lets the held ones finish for up to `timeout`, then finalizes.
    ///
    /// From the call on, [`submit`](Self::submit) answers `Error` with a message that says the
    /// driver is draining (then, once it is finalized, that it is finalized). Queued and
    /// running tasks go on; [`retrieve`](Self::retrieve), [`wait`](Self::wait),
    /// [`wait_async`](Self::wait_async) and [`cancel`](Self::cancel) work as usual meanwhile
    /// (a cancelled task is not waited for), and answers finished in time can still be
    /// retrieved after (within `result_ttl`). When every
    /// held task has finished, or `timeout` has passed, the driver is finalized: the tasks
    /// still unfinished answer `Failed`, and their number is returned. Holds neither the
    /// driver's mutex nor the GIL while it waits. A driver not initialized, or finalized
    /// already, is (still) finalized, and 0 is returned.
    ///
    /// ```
    /// use rs4py::{Driver, DriverOptions, DriverState, ResultStatus, SubmitStatus};
    /// use std::time::Duration;
    ///
    /// let driver = Driver::new(DriverOptions { n_subprocesses: 1, ..Default::default() })?;
    /// driver.initialize("{}", &["a", "b"], &["name"])?;
    /// let receipt = driver.submit(&[1.5, -2.5], &["Zoë"], 7);
    /// assert_eq!(driver.drain(Duration::from_secs(30)), 0); // it finished in time
    /// assert_eq!(driver.retrieve(receipt.key).value, 4 + 3 + 7);
    /// assert_eq!(driver.submit(&[1.0, 2.0], &["x"], 0).status, SubmitStatus::Error);
    /// assert_eq!(driver.stats()?.state, DriverState::Finalized);
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn drain(&self, timeout: Duration) -> usize {
        if self.access.check_process().is_err() {
            return 0;
        }
        // py4cc's drain waits on a condition, which releases the GIL; the py4cc driver is
        // thread-safe, so other threads' calls go on meanwhile without the mutex.
        let failed = self.call_python(&self.python.drain, (timeout.as_secs_f64(),), |answer| answer.extract());
        self.finalize(); // marks it finalized here too (py4cc's own finalize has run)
        failed.unwrap_or(0)
    }

    /// A snapshot of the driver's tasks, workers and counters (see [`DriverStats`]).
    ///
    /// Cheap enough for every metrics scrape: one call into Python that reads everything
    /// under the pool's lock once, without the driver's mutex. Fails only if Python does
    /// (or answers a dict without one of the keys this version reads).
    ///
    /// ```
    /// use rs4py::{Driver, DriverOptions, DriverState};
    ///
    /// let driver = Driver::new(DriverOptions { n_subprocesses: 2, ..Default::default() })?;
    /// assert_eq!(driver.stats()?.state, DriverState::New);
    /// driver.initialize("{}", &["a", "b"], &["name"])?;
    /// let stats = driver.stats()?;
    /// assert_eq!((stats.state, stats.workers_wanted, stats.workers_ready), (DriverState::Running, 2, 2));
    /// assert_eq!((stats.tasks_held, stats.worker_starts, stats.run_time_p50), (0, 2, None));
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    pub fn stats(&self) -> Result<DriverStats> {
        self.access.check_process().map_err(Error::Unavailable)?;
        // Read first: every answer counted here was counted done by py4cc before (when it
        // finished), so the snapshot below includes it.
        let unconvertible = self.unconvertible.load(Ordering::SeqCst);
        let mut stats = self.call_python(&self.python.stats, (), |answer| DriverStats::from_dict(&answer))?;
        stats.tasks_done = stats.tasks_done.saturating_sub(unconvertible);
        stats.tasks_failed += unconvertible;
        // py4cc counted its own drops; those of answers it had handed over are the table's.
        let (cancelled, expired) = self.completions.dropped();
        stats.tasks_cancelled += cancelled;
        stats.tasks_expired += expired;
        Ok(stats)
    }

    /// The process ids of the current worker processes (empty before `initialize` and after
    /// `finalize`).
    pub fn worker_pids(&self) -> Result<Vec<u32>> {
        self.access.check_process().map_err(Error::Unavailable)?;
        let gil = Gil::acquire()?;
        self.python.driver.bind(&gil).call_method(method::WORKER_PIDS, (), ())?.extract()
    }

    /// How many worker processes the driver runs: [`DriverOptions::n_subprocesses`] as given
    /// until [`initialize`](Self::initialize), then resolved (0 becomes one per CPU).
    pub fn n_subprocesses(&self) -> Result<usize> {
        self.access.check_process().map_err(Error::Unavailable)?;
        let gil = Gil::acquire()?;
        self.python.driver.bind(&gil).getattr(N_SUBPROCESSES)?.extract()
    }

    /// Calls one of the Python driver's methods and reads its answer with `read`.
    fn call_python<T>(
        &self,
        method: &Handle,
        args: impl crate::IntoArgs,
        read: impl for<'py> FnOnce(Object<'py>) -> Result<T>,
    ) -> Result<T> {
        let gil = Gil::acquire()?;
        read(method.bind(&gil).call(args, ())?)
    }

    /// Takes the mutex that serialises calls into Python. A thread that holds the GIL lets
    /// it go while it waits, or the thread holding the mutex could never get the GIL.
    ///
    /// Then, unless it holds the GIL, it lets the dispatcher take the GIL first if it is about
    /// to (see `turn.rs`).
    fn lock_calls(&self) -> MutexGuard<'_, ()> {
        let taken: std::result::Result<_, std::convert::Infallible> = self.lock_calls_with(|| Ok(self.calls.lock()));
        match taken {
            Ok(guard) => guard,
        }
    }

    /// [`lock_calls`](Self::lock_calls) for a task call: gives up, with the message that the
    /// Driver is initializing, as soon as `initialize` runs (which holds the mutex throughout).
    fn lock_for_task(&self) -> Result<MutexGuard<'_, ()>> {
        self.lock_calls_with(|| {
            loop {
                if self.access.initializing() {
                    return Err(Error::Unavailable(INITIALIZING_MESSAGE.to_owned()));
                }
                if let Some(guard) = self.calls.try_lock_for(LOOK_AGAIN) {
                    return Ok(guard);
                }
            }
        })
    }

    /// Takes the mutex with `take` (see [`lock_calls`](Self::lock_calls)).
    fn lock_calls_with<'a, E>(
        &'a self,
        take: impl FnOnce() -> std::result::Result<MutexGuard<'a, ()>, E>,
    ) -> std::result::Result<MutexGuard<'a, ()>, E> {
        if Gil::is_held() {
            if let Some(guard) = self.calls.try_lock() {
                return Ok(guard);
            }
            return Gil::acquire_started().release_during(take);
        }
        let guard = take()?;
        self.turn.let_dispatcher_go_first();
        Ok(guard)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.access.check_process().is_err() {
            // A forked child's copy: releasing its Python objects would take the GIL, which a
            // thread of the parent may have held at the fork, and finalizing would stop the
            // parent's workers. Its memory goes with the child.
            return;
        }
        self.finalize();
        // SAFETY: the one place `python` is dropped; nothing uses it afterwards.
        unsafe { ManuallyDrop::drop(&mut self.python) };
    }
}

/// A demo task queued for the combiner (owned: another thread may hand it over).
struct DemoTask {
    float_features: Vec<f64>,
    str_features: Vec<String>,
    int_feature: i64,
}

/// A read `(flag, answer, message)`: the answer apart, as it may not read as the key's type.
type ReadResult<T> = (i64, std::result::Result<T, String>, String);

/// The `(flag, value, message)` answer of `retrieve` or `wait`, with the value read apart: an
/// Engine may answer a value that does not convert (an int too large for `i64`, a type other
/// than the one asked for), and by then py4cc has removed the task.
fn read_result<K: TaskKey>(answer: Object<'_>) -> Result<ReadResult<K::Answer>> {
    let (code, value, message): (i64, Object<'_>, String) = answer.extract()?;
    Ok((code, K::read_answer(code, &value), message))
}

fn task_result<T: Default>(key: i64, answer: Result<ReadResult<T>>, call: &str) -> TaskResult<T> {
    match answer {
        Ok((code, Ok(value), message)) => match ResultStatus::from_code(code) {
            Some(ResultStatus::Failed) => {
                TaskResult { status: ResultStatus::Failed, key, value, message: without_py4cc_frames(&message) }
            }
            Some(status) => TaskResult { status, key, value, message },
            None => TaskResult {
                status: ResultStatus::Error,
                key,
                value: T::default(),
                message: unknown_flag(code, &message),
            },
        },
        Ok((code, Err(reason), message)) => {
            // Done or Failed: the task is gone on the Python side, so it must not look
            // untouched (Error); it failed, for a reason the message gives.
            let status = match ResultStatus::from_code(code) {
                Some(ResultStatus::Done | ResultStatus::Failed) => ResultStatus::Failed,
                _ => ResultStatus::Error,
            };
            let message = format!("{reason}; {}", without_py4cc_frames(&message));
            TaskResult { status, key, value: T::default(), message: message.trim_end_matches("; ").to_owned() }
        }
        Err(Error::Unavailable(message)) => error_result(key, message),
        Err(error) => error_result(key, format!("{call} failed: {error}")),
    }
}

/// An `Error` answer: nothing changed.
fn error_result<T: Default>(key: i64, message: String) -> TaskResult<T> {
    TaskResult { status: ResultStatus::Error, key, value: T::default(), message }
}

/// The answer for a task still running, as Python would give it.
fn not_ready<T: Default>(key: i64) -> TaskResult<T> {
    TaskResult { status: ResultStatus::NotReady, key, value: T::default(), message: NOT_FINISHED_MESSAGE.to_owned() }
}

fn unknown_flag(code: i64, message: &str) -> String {
    format!("py4cc answered flag {code}, which the protocol does not have: {message}")
}
