//! How a [`Driver`](super::Driver) is built: its options and the workers' start method.

use std::path::PathBuf;
use std::time::Duration;

use super::output::WorkerOutput;
use crate::error::{Error, Result};

/// How `multiprocessing` starts the worker processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMethod {
    /// Fork the embedding process (fast; the child inherits its memory).
    Fork,
    /// Fork from a clean server process started once (the default).
    #[default]
    Forkserver,
    /// Start a fresh interpreter per worker (slowest, most isolated).
    Spawn,
}

impl StartMethod {
    /// The name `multiprocessing` uses.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Forkserver => "forkserver",
            StartMethod::Spawn => "spawn",
        }
    }
}

impl std::fmt::Display for StartMethod {
    /// The name [`FromStr`](std::str::FromStr) reads: `fork`, `forkserver` or `spawn`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StartMethod {
    type Err = Error;

    /// ```
    /// use rs4py::StartMethod;
    /// assert_eq!("spawn".parse::<StartMethod>()?, StartMethod::Spawn);
    /// assert_eq!(StartMethod::Spawn.to_string(), "spawn");
    /// assert!("thread".parse::<StartMethod>().is_err());
    /// # Ok::<(), rs4py::Error>(())
    /// ```
    fn from_str(name: &str) -> Result<Self> {
        [StartMethod::Fork, StartMethod::Forkserver, StartMethod::Spawn]
            .into_iter()
            .find(|method| method.as_str() == name)
            .ok_or_else(|| Error::InvalidArgument(format!("unknown start method {name:?} (fork, forkserver or spawn)")))
    }
}

/// What runs the Engines: worker processes on this machine, or actors on a Ray cluster.
///
/// ```
/// use rs4py::{Backend, DriverOptions};
/// let options = DriverOptions {
///     backend: Backend::Ray { address: Some("10.0.0.5:6379".into()) },
///     n_subprocesses: 8, // eight Engine actors, a CPU each
///     ..Default::default()
/// };
/// assert_eq!(DriverOptions::default().backend, Backend::Local);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// A pool of worker processes on this machine (the default).
    #[default]
    Local,
    /// One actor per Engine on a Ray cluster. The build interpreter must have the `ray`
    /// package, the version the cluster runs; `initialize` says so if it has not.
    Ray {
        /// The cluster's address (`"host:port"`, or `"auto"`); this machine must be one of
        /// its nodes. `None` starts a local Ray instance for this process, stopped with the
        /// last Driver that uses it.
        address: Option<String>,
    },
}

impl Backend {
    /// The name py4cc gives it (`"local"` or `"ray"`).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Ray { .. } => "ray",
        }
    }

    /// The Ray cluster's address, if any.
    pub(crate) fn ray_address(&self) -> Option<&str> {
        match self {
            Backend::Ray { address } => address.as_deref(),
            Backend::Local => None,
        }
    }
}

/// Dynamic batching (see [`DriverOptions::batching`]): when a worker is free it takes up to
/// `max_size` queued tasks, in queue order, as one batch; with fewer queued it waits for more
/// until the oldest has waited `max_wait`, and never waits once the batch is full.
///
/// ```
/// use rs4py::{Batching, DriverOptions};
/// use std::time::Duration;
/// let options = DriverOptions {
///     batching: Some(Batching { max_size: 32, max_wait: Duration::from_micros(500) }),
///     ..Default::default()
/// };
/// assert_eq!(DriverOptions::default().batching, None);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// The most tasks in one batch; at least 1, or
    /// [`Driver::initialize`](super::Driver::initialize) fails.
    pub max_size: usize,
    /// How long the oldest queued task may wait for its batch to fill (zero: a free worker
    /// takes what is queued at once).
    pub max_wait: Duration,
}

/// What the embedding process loads before the workers start, for them to inherit (see
/// [`DriverOptions::preload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preload {
    /// Nothing: each worker imports the Engine's module and builds its Engine (the default).
    #[default]
    Nothing,
    /// The Engine's module: imported once here (`fork`) or by the fork server
    /// (`forkserver`), so that workers start with it imported.
    Module,
    /// With `fork`, one Engine built and initialised here, whose copy every worker uses
    /// instead of building its own; with `forkserver`, the same as `Module`.
    Engine,
}

impl Preload {
    /// The `preload` value py4cc takes: `None`, `"module"` or `"engine"`.
    pub(crate) fn as_python(self) -> Option<&'static str> {
        match self {
            Preload::Nothing => None,
            Preload::Module => Some("module"),
            Preload::Engine => Some("engine"),
        }
    }
}

/// How to build a [`Driver`](super::Driver).
///
/// Build it as a struct literal that names the fields you set and ends with
/// `..Default::default()`: that is the supported way, and a later version that adds a field
/// (with its default) does not break code written so. Code that names every field, or
/// destructures the struct, may have to change when a field is added.
///
/// ```
/// use rs4py::{DriverOptions, StartMethod};
/// use std::time::Duration;
///
/// let options = DriverOptions {
///     n_subprocesses: 4,
///     start_method: StartMethod::Spawn,
///     task_timeout: Some(Duration::from_secs(5)),
///     ..Default::default()
/// };
/// assert_eq!(options.max_tasks, 64);
/// ```
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// How many tasks the driver holds at once (queued, running, finished but not retrieved).
    pub max_tasks: usize,
    /// Worker processes; 0 means one per CPU.
    pub n_subprocesses: usize,
    /// How workers are started.
    pub start_method: StartMethod,
    /// The Engine class, `"module:Class"`; the demo Engine by default.
    pub engine: String,
    /// A task running longer is stopped (its worker killed and replaced) and answers `Failed`.
    pub task_timeout: Option<Duration>,
    /// A worker whose Engine is not built and initialised within this is stopped: at
    /// [`Driver::initialize`](super::Driver::initialize), which then fails; later, for a
    /// replacement worker, which counts as a failed start: its slot tries again, waiting 0.1 s
    /// after a failure, doubling up to 30 s, for as long as the Driver runs (see
    /// [`DriverStats::workers_degraded`](super::DriverStats::workers_degraded)). `None` waits
    /// as long as it takes.
    pub init_timeout: Option<Duration>,
    /// Directories for the user's own Engine module and what it imports; every worker
    /// process sees them too, whatever the start method (workers get this process's
    /// `sys.path`, in its order). They go on `sys.path` right after the standard library's
    /// entries and before site-packages, while rs4py's own `py4cc` goes first: a `json.py`
    /// or `threading.py` there cannot replace the standard library, for py4cc (which
    /// imports only the standard library, and `ray` for [`Backend::Ray`]) nor for the
    /// Engine, whereas a module there does take precedence over an installed one of the
    /// same name (a patched copy of a library, say). Directories already on `sys.path`
    /// (through `PYTHONPATH`, say) stay where they are.
    pub python_path: Vec<PathBuf>,
    /// The Engine's method that general tasks ([`Driver::submit_call`](super::Driver::submit_call))
    /// call, `"run"` by default; checked when each worker builds its Engine.
    pub call_method: String,
    /// What this process loads before forking the workers, so that they share its pages
    /// and start faster: nothing (the default), the Engine's module, or one initialised
    /// Engine. With `fork` the module is imported here (and the Engine built here, its
    /// `initialize` run once, in this process); with `forkserver` the module is added to
    /// the fork server's preload list, which the fork server reads when it starts (the
    /// first forkserver Driver of the process) and can only use for a module it finds
    /// without `python_path` (one installed in the environment); `spawn` refuses it at
    /// [`Driver::initialize`](super::Driver::initialize). The module (and Engine) then also
    /// live in this process, and any thread they start here runs in it before the fork.
    pub preload: Preload,
    /// How long a finished result waits to be retrieved: past it, it is dropped (counted as
    /// expired) and frees its place among `max_tasks`, so that tasks nobody comes back for
    /// (a request that timed out, a panicking handler) cannot use up the capacity. Retrieving
    /// it then answers `Error`, saying it expired. `None` keeps every result until retrieved.
    /// Default: 60 s.
    pub result_ttl: Option<Duration>,
    /// Environment variables set in every worker process before its Engine's module is
    /// imported, whatever the start method: `("OMP_NUM_THREADS", "1")` and its kin keep N
    /// workers of a numpy/BLAS model from each starting a thread per core. The rest of a
    /// worker's environment is inherited (with `Forkserver`, from when its server process
    /// started). A name must be non-empty without `=` or NUL, a value without NUL, or
    /// [`Driver::initialize`](super::Driver::initialize) fails.
    pub worker_env: Vec<(String, String)>,
    /// Where each line the workers write to stdout or stderr goes, and each event about them
    /// (a death, a task timeout, a replacement): see [`WorkerOutput`]. `None` writes them to
    /// this process's stderr as `[py4cc worker <pid> <stream>] <line>`.
    pub worker_output: Option<WorkerOutput>,
    /// What runs the Engines: [`Backend::Local`] (the default) or [`Backend::Ray`], where
    /// `n_subprocesses` is the number of Engine actors (0: one per CPU of the cluster).
    pub backend: Backend,
    /// Dynamic batching: `None` (the default) sends tasks one at a time; `Some(`[`Batching`]`)`
    /// hands a free worker up to `max_size` queued tasks as one batch, which the Engine
    /// answers with one `run_batch(calls)` call (`calls` a list of `(args, kwargs)` pairs in
    /// queue order; an Engine without `run_batch` gets one `run` call per task, in the
    /// worker). Every task keeps its own key, answer, `cancel` (a queued one never runs; one
    /// inside a running batch has its answer discarded), capacity and `result_ttl`. A batch
    /// is one model call, so [`task_timeout`](Self::task_timeout) bounds the whole batch's
    /// run (not scaled by its size): past it, the worker is killed and every task of the
    /// batch answers `Failed`, as do the tasks of a batch whose worker dies; the message
    /// names the batch's size. `prefetch` does not apply while batching: a batch goes only
    /// to a free worker.
    pub batching: Option<Batching>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        DriverOptions {
            max_tasks: 64,
            n_subprocesses: 0,
            start_method: StartMethod::default(),
            engine: "py4cc.engine:Engine".into(),
            task_timeout: None,
            init_timeout: None,
            python_path: Vec::new(),
            call_method: "run".into(),
            preload: Preload::Nothing,
            result_ttl: Some(Duration::from_secs(60)),
            worker_env: Vec::new(),
            worker_output: None,
            backend: Backend::Local,
            batching: None,
        }
    }
}
