//! The contract between the Rust [`Driver`](super::Driver) and `py4cc`, in one place on this
//! side: the flags that `submit`, `retrieve` and `wait` answer with, and the names the Driver
//! uses in Python. `py4cc/protocol.py` is the other side (its flags and `DRIVER_CONTRACT`);
//! tests check that both agree.

/// `py4cc.protocol.OK`: submit accepted, or retrieve done.
const OK: i64 = 0;
/// `py4cc.protocol.AT_CAPACITY`: submit refused for now, the driver is full.
const AT_CAPACITY: i64 = 1;
/// `py4cc.protocol.NOT_FINISHED`: retrieve found the task still running.
const NOT_FINISHED: i64 = 1;
/// `py4cc.protocol.FAILED`: the task failed; the message says why.
const FAILED: i64 = 2;
/// `py4cc.protocol.ERROR`: the call itself was wrong (bad arguments, unknown key, ...).
const ERROR: i64 = 9;

/// `py4cc.protocol.NOT_FINISHED_MESSAGE`: the message of a `NotReady` answer, which the Rust
/// Driver also gives on its own when its completion table knows the task still runs.
pub(super) const NOT_FINISHED_MESSAGE: &str = "The requested task is not finished";

/// The module and class of the Python driver.
pub(super) const DRIVER_MODULE: &str = "py4cc.driver";
/// See [`DRIVER_MODULE`].
pub(super) const DRIVER_CLASS: &str = "Driver";
/// py4cc's module that words the messages about dropped keys (`cancelled_message`,
/// `expired_message`).
pub(super) const COMPLETION_MODULE: &str = "py4cc.core.completion";

/// The Python driver's constructor keywords, one per [`DriverOptions`](super::DriverOptions)
/// field passed on.
pub(super) mod option {
    /// `max_tasks: int`.
    pub(in crate::driver) const MAX_TASKS: &str = "max_tasks";
    /// `n_subprocesses: int`, 0 for one per CPU.
    pub(in crate::driver) const N_SUBPROCESSES: &str = "n_subprocesses";
    /// `start_method: str`.
    pub(in crate::driver) const START_METHOD: &str = "start_method";
    /// `engine: str`, `"module:Class"`.
    pub(in crate::driver) const ENGINE: &str = "engine";
    /// `task_timeout: float | None`, in seconds.
    pub(in crate::driver) const TASK_TIMEOUT: &str = "task_timeout";
    /// `init_timeout: float | None`, in seconds.
    pub(in crate::driver) const INIT_TIMEOUT: &str = "init_timeout";
    /// `call_method: str`, the Engine's method general tasks call.
    pub(in crate::driver) const CALL_METHOD: &str = "call_method";
    /// `preload: None | "module" | "engine"`.
    pub(in crate::driver) const PRELOAD: &str = "preload";
    /// `notify: Callable[[int, bool], object] | None`: the completion table's notifier.
    pub(in crate::driver) const NOTIFY: &str = "notify";
    /// `result_ttl: float | None`, in seconds.
    pub(in crate::driver) const RESULT_TTL: &str = "result_ttl";
    /// `worker_env: list[tuple[str, str]]`.
    pub(in crate::driver) const WORKER_ENV: &str = "worker_env";
    /// `worker_output: Callable[[int, str, str], None] | None`.
    pub(in crate::driver) const WORKER_OUTPUT: &str = "worker_output";
    /// `wait_readable: Callable[..., list[tuple[int, int]]] | None`, called as
    /// `(fds, timeout_ms)`, `(fds, timeout_ms, write_fds)` or, with `pipe_reader`, `(fds,
    /// timeout_ms, write_fds, pipes, eager)`: what the dispatcher polls the workers' pipes
    /// with (see `turn.rs`), reading them itself with `pipe_reader` (see `pipes.rs`).
    pub(in crate::driver) const WAIT_READABLE: &str = "wait_readable";
    /// `backend: str`, `"local"` or `"ray"`.
    pub(in crate::driver) const BACKEND: &str = "backend";
    /// `ray_address: str | None`, the Ray cluster's address.
    pub(in crate::driver) const RAY_ADDRESS: &str = "ray_address";
    /// `batching: tuple[int, float] | None`, `(max_size, max_wait in seconds)`.
    pub(in crate::driver) const BATCHING: &str = "batching";
    /// `deliver: Callable[[list[tuple[int, int, object, str]]], object] | None`: hands the
    /// finished tasks' answers to the completion table, in batches.
    pub(in crate::driver) const DELIVER: &str = "deliver";
    /// `host_held: Callable[[], int] | None`: how many answers the completion table holds.
    pub(in crate::driver) const HOST_HELD: &str = "host_held";
    /// `pipe_reader`: an object with `take(fd)`, `drain(fd)` and `answered()`, when
    /// `wait_readable` reads the workers' pipes itself (see `pipes.rs`).
    pub(in crate::driver) const PIPE_READER: &str = "pipe_reader";
    /// All of the above, as `py4cc.protocol` lists them.
    #[cfg(test)]
    pub(in crate::driver) const ALL: [&str; 19] = [
        MAX_TASKS,
        N_SUBPROCESSES,
        START_METHOD,
        ENGINE,
        TASK_TIMEOUT,
        INIT_TIMEOUT,
        NOTIFY,
        RESULT_TTL,
        WORKER_ENV,
        WORKER_OUTPUT,
        CALL_METHOD,
        PRELOAD,
        WAIT_READABLE,
        BACKEND,
        RAY_ADDRESS,
        BATCHING,
        DELIVER,
        HOST_HELD,
        PIPE_READER,
    ];
}

/// The Python driver's methods that the Rust Driver calls, by name.
pub(super) mod method {
    /// `initialize(config_json, float_feature_names, str_feature_names)`.
    pub(in crate::driver) const INITIALIZE: &str = "initialize";
    /// `submit(float_features, str_features, int_feature) -> (flag, key, message)`.
    pub(in crate::driver) const SUBMIT: &str = "submit";
    /// `retrieve(key) -> (flag, value, message)`.
    pub(in crate::driver) const RETRIEVE: &str = "retrieve";
    /// `wait(key, timeout) -> (flag, value, message)`.
    pub(in crate::driver) const WAIT: &str = "wait";
    /// `finalize()`, which never raises.
    pub(in crate::driver) const FINALIZE: &str = "finalize";
    /// `worker_pids() -> list[int]`.
    pub(in crate::driver) const WORKER_PIDS: &str = "worker_pids";
    /// `cancel(key) -> bool`, which never raises.
    pub(in crate::driver) const CANCEL: &str = "cancel";
    /// `held_tasks() -> int`.
    pub(in crate::driver) const HELD_TASKS: &str = "held_tasks";
    /// `stats() -> dict`.
    pub(in crate::driver) const STATS: &str = "stats";
    /// `drain(timeout) -> int`.
    pub(in crate::driver) const DRAIN: &str = "drain";
    /// `submit_call(args, kwargs) -> (flag, key, message)`, a general task.
    pub(in crate::driver) const SUBMIT_CALL: &str = "submit_call";
    /// `submit_many([(float_features, str_features, int_feature), ...]) -> [(flag, key,
    /// message), ...]`: several demo tasks, answered in order as `submit` would.
    pub(in crate::driver) const SUBMIT_MANY: &str = "submit_many";
    /// All of the above, as `py4cc.protocol` lists them.
    #[cfg(test)]
    pub(in crate::driver) const ALL: [&str; 12] = [
        INITIALIZE,
        SUBMIT,
        RETRIEVE,
        WAIT,
        FINALIZE,
        WORKER_PIDS,
        CANCEL,
        HELD_TASKS,
        STATS,
        DRAIN,
        SUBMIT_CALL,
        SUBMIT_MANY,
    ];
}

/// The Python driver's attribute holding how many worker processes run (the only one read).
pub(super) const N_SUBPROCESSES: &str = "n_subprocesses";

/// The answer to [`Driver::submit`](super::Driver::submit). Later versions may add statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitStatus {
    /// Accepted: come back with the key.
    Accepted,
    /// The driver holds `max_tasks` tasks: try again later.
    AtCapacity,
    /// Refused (wrong number of features, not initialised, finalized, ...): see the message.
    Error,
}

/// The answer to [`Driver::retrieve`](super::Driver::retrieve) and
/// [`Driver::wait`](super::Driver::wait). Later versions may add statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResultStatus {
    /// Done: `value` is the model's answer (positive for a demo task; anything for a
    /// general one). The task is removed.
    Done,
    /// Not finished yet: ask again. The task is kept.
    NotReady,
    /// The model failed (raised; a demo task: answered a value `<= 0`; a general task: its
    /// answer does not convert to the key's type), its worker died, or it timed out; the
    /// message says which (with the traceback). The task is removed.
    Failed,
    /// Unknown key or another error; nothing changed.
    Error,
}

impl SubmitStatus {
    /// The flag of the protocol: 0, 1 or 9.
    pub(crate) fn code(self) -> i64 {
        match self {
            SubmitStatus::Accepted => OK,
            SubmitStatus::AtCapacity => AT_CAPACITY,
            SubmitStatus::Error => ERROR,
        }
    }

    /// The status for a flag, if it is one of the protocol's.
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        [SubmitStatus::Accepted, SubmitStatus::AtCapacity, SubmitStatus::Error].into_iter().find(|s| s.code() == code)
    }
}

impl ResultStatus {
    /// The flag of the protocol: 0, 1, 2 or 9.
    pub(crate) fn code(self) -> i64 {
        match self {
            ResultStatus::Done => OK,
            ResultStatus::NotReady => NOT_FINISHED,
            ResultStatus::Failed => FAILED,
            ResultStatus::Error => ERROR,
        }
    }

    /// The status for a flag, if it is one of the protocol's.
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        [ResultStatus::Done, ResultStatus::NotReady, ResultStatus::Failed, ResultStatus::Error]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::gil::Gil;
    use crate::interpreter::{self, StartOptions};

    /// `py4cc.protocol.DRIVER_CONTRACT[key]`, from the copy of the package this binary carries
    /// (what the Driver and every worker run).
    fn contract<T: for<'py> crate::FromPython<'py>>(key: &str) -> T {
        let package = super::super::package::package_parent_dir().unwrap().to_path_buf();
        interpreter::start(&StartOptions { python_path: vec![package.clone()] }).unwrap();
        let gil = Gil::acquire().unwrap();
        let protocol = gil.import("py4cc.protocol").unwrap();
        let file: String = protocol.getattr("__file__").unwrap().extract().unwrap();
        assert!(std::path::Path::new(&file).starts_with(&package), "{file} is not the embedded copy");
        let value = protocol.getattr("DRIVER_CONTRACT").unwrap().call_method("__getitem__", (key,), ()).unwrap();
        value.extract().unwrap_or_else(|e| panic!("DRIVER_CONTRACT[{key:?}]: {e}"))
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_flags_are_py4cc_protocols() {
        let theirs: HashMap<String, i64> = contract("flags");
        let ours = [("OK", OK), ("AT_CAPACITY", AT_CAPACITY), ("NOT_FINISHED", NOT_FINISHED), ("FAILED", FAILED)];
        let ours: HashMap<String, i64> =
            ours.into_iter().chain([("ERROR", ERROR)]).map(|(name, flag)| (name.to_owned(), flag)).collect();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn the_statuses_carry_the_flags_and_only_those() {
        let submit =
            [(SubmitStatus::Accepted, OK), (SubmitStatus::AtCapacity, AT_CAPACITY), (SubmitStatus::Error, ERROR)];
        for (status, flag) in submit {
            assert_eq!((status.code(), SubmitStatus::from_code(flag)), (flag, Some(status)));
        }
        let result = [
            (ResultStatus::Done, OK),
            (ResultStatus::NotReady, NOT_FINISHED),
            (ResultStatus::Failed, FAILED),
            (ResultStatus::Error, ERROR),
        ];
        for (status, flag) in result {
            assert_eq!((status.code(), ResultStatus::from_code(flag)), (flag, Some(status)));
        }
        assert_eq!((SubmitStatus::from_code(FAILED), ResultStatus::from_code(3)), (None, None));
    }

    #[test]
    fn the_not_finished_message_is_py4cc_protocols() {
        let messages: HashMap<String, String> = contract("messages");
        assert_eq!(messages["NOT_FINISHED_MESSAGE"], NOT_FINISHED_MESSAGE);
    }

    #[test]
    fn the_names_are_the_ones_py4cc_protocol_lists() {
        assert_eq!(contract::<String>("module"), DRIVER_MODULE);
        assert_eq!(contract::<String>("class"), DRIVER_CLASS);
        let names = |key| -> Vec<String> {
            let mut names: Vec<String> = contract(key);
            names.sort();
            names
        };
        assert_eq!(names("options"), sorted(&option::ALL));
        assert_eq!(names("methods"), sorted(&method::ALL));
        assert_eq!(names("attributes"), sorted(&[N_SUBPROCESSES]));
        assert_eq!(names("stats"), sorted(&super::super::stats::KEYS));
        let streams: Vec<String> = contract("output_streams");
        let ours =
            [super::super::WorkerStream::Stdout, super::super::WorkerStream::Stderr, super::super::WorkerStream::Event];
        assert_eq!(streams, ours.map(|stream| stream.as_str().to_owned()));
    }

    #[test]
    fn the_python_driver_has_those_methods_and_attribute() {
        // Python's own list is checked against its Driver by py4cc's tests; this checks ours.
        let package = super::super::package::package_parent_dir().unwrap().to_path_buf();
        interpreter::start(&StartOptions { python_path: vec![package] }).unwrap();
        let gil = Gil::acquire().unwrap();
        let callable = gil.eval("callable").unwrap();
        let driver = gil.import(DRIVER_MODULE).unwrap().getattr(DRIVER_CLASS).unwrap().call((), ()).unwrap();
        for name in method::ALL {
            let is_method: bool = callable.call((driver.getattr(name).unwrap(),), ()).unwrap().extract().unwrap();
            assert!(is_method, "py4cc.driver.Driver.{name} is not a method");
        }
        let count: usize = driver.getattr(N_SUBPROCESSES).unwrap().extract().unwrap();
        assert_eq!(count, 0, "a driver not yet initialized runs no worker");
    }
}
