//! rs4py runs a model written in Python from a multi-threaded Rust service.
//!
//! The [`Driver`] is the front door: `Send + Sync`, shared by the service's threads (or async
//! tasks), it runs the model in a pool of Python worker processes (one Engine per worker, or
//! Ray actors), so the model runs in parallel and the service never waits on one GIL.
//! [`Driver::submit_call`] sends any arguments to the Engine's `run` and reads its answer as
//! the Rust type you ask for (a float, a class, a list, bytes, ...); [`Driver::wait`] blocks a
//! thread until the answer, [`Driver::wait_async`] awaits it; nothing panics or loses a task.
//!
//! ```no_run
//! use std::time::Duration;
//! use rs4py::{Driver, DriverOptions, ResultStatus};
//!
//! let driver = Driver::new(DriverOptions {
//!     engine: "my_model:MyEngine".into(), // models/my_model.py, class MyEngine
//!     python_path: vec!["models".into()], // relative to the working directory
//!     ..Default::default()
//! })?;
//! driver.initialize(r#"{"weights": [0.5, -2.0]}"#, &[] as &[&str], &[] as &[&str])?;
//! let receipt = driver.submit_call::<f64>((vec![1.0, 0.75],), ());
//! let result = driver.wait(receipt.key, Duration::from_secs(5));
//! match result.status {
//!     ResultStatus::Done => println!("score {}", result.value),
//!     _ => eprintln!("{}", result.message), // refused, or the model's traceback
//! }
//! # Ok::<(), rs4py::Error>(())
//! ```
//!
//! The README's quick start builds this from `Cargo.toml` up; the guide, operations,
//! reliability, Ray and benchmark pages are in the repository's `docs/`.
//!
//! # The embedding layer
//!
//! Underneath, and usable on its own, rs4py embeds CPython through the raw C API:
//!
//! - [`start`] starts the interpreter once per process (any thread, races included) with the
//!   very Python the crate was built against, then releases the GIL.
//! - [`Gil`] takes the GIL for the current thread; guards nest.
//! - [`Object`] owns one reference, tied to a `Gil` by the zero-sized [`GilToken`] it carries;
//!   [`Handle`] is its storable, `Send + Sync` twin. Reference counts stay right by
//!   construction.
//! - Every failing C-API call becomes an [`Error`]; a Python exception carries its type,
//!   message and traceback.
//! - [`ToPython`] and [`FromPython`] convert values both ways.
//!
//! ```
//! let gil = rs4py::Gil::acquire()?;
//! let json = gil.import("json")?;
//! let text: String = json.call_method("dumps", (vec![1, 2],), [("indent", 0)])?.extract()?;
//! assert_eq!(text, "[\n1,\n2\n]");
//! let err = json.call_method("loads", ("{",), ()).unwrap_err();
//! assert_eq!(err.python_type(), Some("json.decoder.JSONDecodeError"));
//! # Ok::<(), rs4py::Error>(())
//! ```
//!
//! # Which Python
//!
//! The build script finds the interpreter as PyO3 does: `PYO3_PYTHON`, else an active
//! virtualenv, else `python3` on `PATH`. It links its libpython and sets the rpath of this
//! package's own binaries, tests and examples to that library's directory. A crate that depends
//! on rs4py adds the same rpath to its own binaries with one line in its `build.rs`:
//!
//! ```text
//! println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_RS4PY_LIBDIR").unwrap());
//! ```
//!
//! At run time rs4py refuses (with [`Error::Start`]) a libpython other than the one it was
//! built against, rather than mixing two installations.

#![warn(missing_docs)]

mod callback;
mod convert;
mod driver;
mod error;
mod exception;
mod gil;
mod interpreter;
mod object;

pub use convert::{Bytes, FromPython, IntoArgs, IntoKwargs, ToPython};
pub use driver::{
    Backend, Batching, Driver, DriverOptions, DriverState, DriverStats, Key, Preload, ResultStatus, StartMethod,
    SubmitStatus, TaskFuture, TaskKey, TaskReceipt, TaskResult, WorkerLine, WorkerOutput, WorkerStream,
};
pub use error::{Error, PythonException, Result};
pub use gil::{Gil, GilToken, gil_acquisitions};
pub use interpreter::{BuildPython, StartOptions, build_python, is_started, start};
pub use object::{Handle, Object};

/// The README's Rust examples, compiled (and run where they can be) as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// docs/guide.md's Rust examples, as doctests.
#[doc = include_str!("../docs/guide.md")]
#[cfg(doctest)]
pub struct GuideDoctests;

/// docs/operations.md's Rust examples, as doctests.
#[doc = include_str!("../docs/operations.md")]
#[cfg(doctest)]
pub struct OperationsDoctests;

/// docs/reliability.md's Rust examples, as doctests.
#[doc = include_str!("../docs/reliability.md")]
#[cfg(doctest)]
pub struct ReliabilityDoctests;

/// docs/ray.md's Rust examples, as doctests.
#[doc = include_str!("../docs/ray.md")]
#[cfg(doctest)]
pub struct RayDoctests;

/// docs/benchmarks.md's Rust examples, as doctests.
#[doc = include_str!("../docs/benchmarks.md")]
#[cfg(doctest)]
pub struct BenchmarksDoctests;
