//! The safe Driver: `py4cc.driver.Driver` (a pool of worker processes running an Engine)
//! behind a typed, `Send + Sync` Rust face whose task calls never fail with `Err`.

mod options;
mod package;
mod protocol;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::error::Result;
use crate::gil::Gil;
use crate::interpreter::{self, StartOptions};
use crate::object::{Handle, Object};

pub use options::{Backend, DriverOptions, StartMethod};
use protocol::{DRIVER_CLASS, DRIVER_MODULE, N_SUBPROCESSES, method, option};
pub use protocol::{ResultStatus, SubmitStatus};

/// The answer to [`Driver::submit`]: a status, the task's key (0 unless accepted) and a
/// message (empty when accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReceipt {
    /// What became of the task.
    pub status: SubmitStatus,
    /// The key to retrieve the result with; 0 unless accepted.
    pub key: i64,
    /// Why, when not accepted.
    pub message: String,
}

/// The answer to [`Driver::retrieve`] and [`Driver::wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    /// Where the task stands.
    pub status: ResultStatus,
    /// The key asked about.
    pub key: i64,
    /// The model's answer when `Done`.
    pub value: i64,
    /// The traceback or cause when `Failed`, the reason when `Error`.
    pub message: String,
}

/// The Python driver object and its bound methods, looked up once.
struct PythonDriver {
    driver: Handle,
    submit: Handle,
    retrieve: Handle,
    wait: Handle,
}

/// Runs an Engine in a pool of Python worker processes; shared by many threads.
///
/// `submit`, `retrieve` and `wait` never panic and never return `Err`: every failure, in
/// Python or in Rust, comes back as a status and a message. A mutex serialises the calls into
/// Python; `wait` does not hold it (nor the GIL) while it waits, so other threads keep
/// submitting and retrieving. A thread that holds a [`Gil`] may call in too: the driver lets
/// the GIL go while it waits for its mutex.
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
    python: PythonDriver,
    finalized: AtomicBool,
}

impl Driver {
    /// Starts the interpreter if needed (with rs4py's own `py4cc` and `options.python_path`
    /// on `sys.path`) and builds the Python driver. Nothing runs until [`initialize`](Self::initialize).
    pub fn new(options: DriverOptions) -> Result<Driver> {
        let mut python_path = vec![package::package_parent_dir()?.to_path_buf()];
        python_path.extend(options.python_path);
        interpreter::start(&StartOptions { python_path })?;
        let gil = Gil::acquire()?;
        let class = gil.import(DRIVER_MODULE)?.getattr(DRIVER_CLASS)?;
        let driver = class.call(
            (),
            [
                (option::MAX_TASKS, &options.max_tasks as &dyn crate::ToPython),
                (option::N_SUBPROCESSES, &options.n_subprocesses),
                (option::START_METHOD, &options.start_method.as_str()),
                (option::ENGINE, &options.engine),
                (option::TASK_TIMEOUT, &options.task_timeout.map(|timeout| timeout.as_secs_f64())),
                (option::INIT_TIMEOUT, &options.init_timeout.map(|timeout| timeout.as_secs_f64())),
                (option::BACKEND, &options.backend.name()),
                (option::RAY_ADDRESS, &options.backend.ray_address()),
            ],
        )?;
        let bound = |name| driver.getattr(name).map(Object::unbind);
        let python = PythonDriver {
            submit: bound(method::SUBMIT)?,
            retrieve: bound(method::RETRIEVE)?,
            wait: bound(method::WAIT)?,
            driver: driver.clone().unbind(),
        };
        Ok(Driver { calls: Mutex::new(()), python, finalized: AtomicBool::new(false) })
    }

    /// Parses the JSON config and starts the workers, each building the Engine from it and
    /// the feature names; returns when all are ready. Fails with the Python exception (bad
    /// JSON, unknown Engine, a worker whose Engine failed to initialise, called twice, ...).
    pub fn initialize(
        &self,
        config_json: &str,
        float_feature_names: &[impl AsRef<str>],
        str_feature_names: &[impl AsRef<str>],
    ) -> Result<()> {
        let float_names: Vec<&str> = float_feature_names.iter().map(AsRef::as_ref).collect();
        let str_names: Vec<&str> = str_feature_names.iter().map(AsRef::as_ref).collect();
        let _serial = self.lock_calls();
        let gil = Gil::acquire()?;
        self.python.driver.bind(&gil).call_method(method::INITIALIZE, (config_json, float_names, str_names), ())?;
        Ok(())
    }

    /// Submits one task. Never fails: a refusal is a status and a message.
    pub fn submit(&self, float_features: &[f64], str_features: &[impl AsRef<str>], int_feature: i64) -> TaskReceipt {
        let str_features: Vec<&str> = str_features.iter().map(AsRef::as_ref).collect();
        let answer = {
            let _serial = self.lock_calls();
            self.call_python(&self.python.submit, (float_features, str_features, int_feature), |answer| {
                answer.extract()
            })
        };
        match answer {
            Ok((code, key, message)) => match SubmitStatus::from_code(code) {
                Some(status) => TaskReceipt { status, key, message },
                None => TaskReceipt { status: SubmitStatus::Error, key: 0, message: unknown_flag(code, &message) },
            },
            Err(error) => {
                TaskReceipt { status: SubmitStatus::Error, key: 0, message: format!("submit failed: {error}") }
            }
        }
    }

    /// Asks for a task's result without waiting. Never fails: see [`ResultStatus`].
    pub fn retrieve(&self, key: i64) -> TaskResult {
        let answer = {
            let _serial = self.lock_calls();
            self.call_python(&self.python.retrieve, (key,), read_result)
        };
        task_result(key, answer, method::RETRIEVE)
    }

    /// Waits up to `timeout` for the task to finish, then answers as [`retrieve`](Self::retrieve)
    /// (`NotReady` if it still is not). Holds neither the driver's mutex nor the GIL while it
    /// waits.
    pub fn wait(&self, key: i64, timeout: Duration) -> TaskResult {
        // Python's wait blocks on an Event, which releases the GIL; the py4cc driver is
        // thread-safe, so this call does not take the mutex at all.
        let answer = self.call_python(&self.python.wait, (key, timeout.as_secs_f64()), read_result);
        task_result(key, answer, method::WAIT)
    }

    /// Stops the workers (terminated and joined; no process is left behind). Tasks not
    /// finished answer `Failed`; later submits answer `Error` ("finalized"). Safe to call
    /// any number of times; `Drop` calls it too.
    pub fn finalize(&self) {
        // The mutex first: a second caller waits for the first to finish stopping the
        // workers, instead of returning while they still run.
        let _serial = self.lock_calls();
        if self.finalized.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Ok(gil) = Gil::acquire() {
            // py4cc's finalize never raises; were it to, there is nothing left to undo.
            let _ = self.python.driver.bind(&gil).call_method(method::FINALIZE, (), ());
        }
    }

    /// The process ids of the current worker processes (empty before `initialize` and after
    /// `finalize`).
    pub fn worker_pids(&self) -> Result<Vec<u32>> {
        let gil = Gil::acquire()?;
        self.python.driver.bind(&gil).call_method(method::WORKER_PIDS, (), ())?.extract()
    }

    /// How many worker processes the driver runs: [`DriverOptions::n_subprocesses`] as given
    /// until [`initialize`](Self::initialize), then resolved (0 becomes one per CPU).
    pub fn n_subprocesses(&self) -> Result<usize> {
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
    fn lock_calls(&self) -> MutexGuard<'_, ()> {
        if let Some(guard) = self.calls.try_lock() {
            return guard;
        }
        if !Gil::is_held() {
            return self.calls.lock();
        }
        Gil::acquire_started().release_during(|| self.calls.lock())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.finalize();
    }
}

/// The `(flag, value, message)` answer of `retrieve` or `wait`, with the value read apart: an
/// Engine may answer an int too large for `i64`, and by then py4cc has removed the task.
fn read_result(answer: Object<'_>) -> Result<(i64, Result<i64>, String)> {
    let (code, value, message): (i64, Object<'_>, String) = answer.extract()?;
    Ok((code, value.extract(), message))
}

fn task_result(key: i64, answer: Result<(i64, Result<i64>, String)>, call: &str) -> TaskResult {
    match answer {
        Ok((code, Ok(value), message)) => match ResultStatus::from_code(code) {
            Some(status) => TaskResult { status, key, value, message },
            None => TaskResult { status: ResultStatus::Error, key, value: 0, message: unknown_flag(code, &message) },
        },
        Ok((code, Err(error), message)) => {
            // Done or Failed: the task is gone on the Python side, so it must not look
            // untouched (Error); it failed, for a reason the message gives.
            let status = match ResultStatus::from_code(code) {
                Some(ResultStatus::Done | ResultStatus::Failed) => ResultStatus::Failed,
                _ => ResultStatus::Error,
            };
            let message = format!("the model's answer cannot be an i64 value ({error}); {message}");
            TaskResult { status, key, value: 0, message: message.trim_end_matches("; ").to_owned() }
        }
        Err(error) => {
            TaskResult { status: ResultStatus::Error, key, value: 0, message: format!("{call} failed: {error}") }
        }
    }
}

fn unknown_flag(code: i64, message: &str) -> String {
    format!("py4cc answered flag {code}, which the protocol does not have: {message}")
}
